"""/v1/hubs/current/notifications: Cycle's hub notification pipeline.

Without `token` it answers a short-lived token. With `?token=` and a WebSocket upgrade it becomes
a one-way WebSocket of the hub's events, as Cycle's; with `Accept: text/event-stream` (the token,
or the usual headers) the same events come as Server-Sent Events, each with its number as `id`,
so a client reconnecting with `Last-Event-ID` misses none. Only the key's hub's events are sent.
"""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, g, request
from simple_websocket import ConnectionClosed, Server

from app import errors
from app.db import autocommit_session
from app.documents import Document
from app.events import follow, listener, stream, tokens
from app.hubs.auth import Principal, authenticate, current
from app.hubs.models import Capability
from app.openapi import documented, query_parameter
from app.web import db_session

blueprint = Blueprint("notifications", __name__, url_prefix="/v1/hubs/current")

_MAX_EVENT_ID = 10**18


class NotificationToken(Document):
    token: str


class NotificationTokenDocument(Document):
    data: NotificationToken


def _listening(view: Callable) -> Callable:
    """Authenticate by `?token=` (a WebSocket sends no headers of its own) or by the usual
    headers, for the capability to listen."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        token = request.args.get("token")
        g.principal = (tokens.holder(db_session(), token) if token is not None
                       else authenticate(Capability.NOTIFICATIONS_LISTEN))
        return view(*args, **kwargs)

    wrapper.capability = Capability.NOTIFICATIONS_LISTEN  # type: ignore[attr-defined]
    return wrapper


@blueprint.get("/notifications")
@documented(
    "A token to open the hub's notification stream; with `?token=`, the stream itself",
    NotificationTokenDocument,
    parameters=(
        query_parameter("token", {"type": "string", "maxLength": 200},
                        "A token this call answered: with a WebSocket upgrade, the stream as a "
                        "WebSocket; with `Accept: text/event-stream`, as Server-Sent Events "
                        "(which the usual headers open too)."),
        {"name": "Last-Event-ID", "in": "header", "required": False,
         "schema": {"type": "string", "pattern": "^[0-9]{1,18}$"},
         "description": "Server-Sent Events: the `id` of the last event received, to resume "
                        "after it.", "x-imagejobs-extension": True}),
    errors=(errors.Expired, errors.InvalidArgument),
    stream="With `Accept: text/event-stream`: the hub's events, each `id` its number.")
@_listening
def notifications():
    """Messages are `{"topic", "object": {"id", "state", "state_previous", "error"},
    "context": {"hub_id"}}`, with topics `job.new`, `job.state.changed`, `job.error`,
    `image.new`, `image.state.changed`, `image.updated`, `image.error`, `image.source.new`,
    `image.source.state.changed`, `image.source.updated` and `image.source.error`."""
    principal = current()
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return _websocket(principal, _resume_from(principal))
    if follow.wants_event_stream():
        return _server_sent_events(principal, _resume_from(principal))
    if "token" in request.args:
        raise errors.InvalidArgument("With a token, open a WebSocket or ask for "
                                     "`Accept: text/event-stream`.", source="token")
    return NotificationTokenDocument(data=NotificationToken(
        token=tokens.issue(db_session(), principal)))


# The same view answers the WebSocket upgrade: Werkzeug routes an upgrade only to a rule that
# says it takes one.
blueprint.add_url_rule("/notifications", endpoint="notifications", view_func=notifications,
                       websocket=True)


def _resume_from(principal: Principal) -> int:
    """After which of the hub's events the stream starts: Last-Event-ID's, or the latest."""
    raw = request.headers.get("Last-Event-ID", request.args.get("last_event_id", "")).strip()
    session = db_session()
    if raw:
        if not (raw.isascii() and raw.isdigit()) or int(raw) >= _MAX_EVENT_ID:
            raise errors.InvalidArgument("`Last-Event-ID` must be the `id` of an event this "
                                         "stream sent.", source="Last-Event-ID")
        number = int(raw)
    else:
        # The sequencer takes a connection of its own: holding the request's (from
        # authenticating) while it waits for one lets streams opening at once take every
        # pooled connection and wait for each other until the pool's timeout.
        session.close()
        stream.sequence()
        number = stream.last_number(session, principal.hub_id)
    # A follower holds no pooled connection: each read takes one for its own length.
    session.close()
    return number


def _messages(hub_id: str, after: int) -> Iterator[tuple[int, dict[str, Any]] | None]:
    """The hub's events after number `after`, as they happen, until the process stops:
    (number, message), or None when there was none for `follow.KEEPALIVE_SECONDS`."""
    for read in follow.wakes(listener.hub(hub_id)):
        if not read:
            yield None
            continue
        while True:  # until a read finds nothing: a batch may have more behind it
            with autocommit_session() as session:
                events = stream.after(session, hub_id, after)
            if not events:
                break
            for event in events:
                after = event.seq
                yield after, stream.message(event)


def _server_sent_events(principal: Principal, after: int) -> Response:
    def frames() -> Iterator[str]:
        yield "retry: 1000\n\n"
        for item in _messages(principal.hub_id, after):
            yield follow.KEEPALIVE if item is None else follow.frame(item[1], item[0])

    return follow.server_sent_events(frames())


def _websocket(principal: Principal, after: int) -> Response:
    try:
        socket = Server.accept(request.environ)
    except Exception:  # a server that lends no socket, or a handshake that is not one
        raise errors.InvalidSyntax("The WebSocket handshake could not be completed.") from None
    try:
        for item in _messages(principal.hub_id, after):
            if not socket.connected:
                break
            if item is not None:
                socket.send(json.dumps(item[1]))
    except ConnectionClosed:
        pass
    finally:
        with contextlib.suppress(ConnectionClosed):
            socket.close()
    return _Upgraded()


class _Upgraded(Response):
    """The answer after a WebSocket ended: the connection was the WebSocket's, so nothing more
    is written to it, and gunicorn closes it (its way is a StopIteration from the app)."""

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        raise StopIteration()
