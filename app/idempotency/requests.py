"""`@idempotent`: the Idempotency-Key header on the calls that create something.

The same key with the same request (same hub, method, path and body) within 24 hours answers
the first answer again (its status and body, with `Idempotent-Replayed: true`) and creates
nothing; with another request it is refused (`422.already-exists`). Requests sent together with
one key wait for the first: they get its answer once it is given, or `409.duplicate-found` if it
is not given within a few seconds (send it again later to get it).
"""

from __future__ import annotations

import dataclasses
import functools
import re
import time
from collections.abc import Callable
from typing import Any

from flask import g, request

from app import errors
from app.hubs.auth import authenticate
from app.idempotency import services
from app.openapi import EXTENSION
from app.web import db_session

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
# How long a request waits for the first request with its key to answer.
WAIT_SECONDS = 5.0
_POLL_SECONDS = 0.05
_KEY = re.compile(rf"[\x21-\x7e][\x20-\x7e]{{0,{services.MAX_KEY_LENGTH - 1}}}")

_PARAMETER = {"name": HEADER, "in": "header", "required": False,
              "schema": {"type": "string", "minLength": 1, "maxLength": services.MAX_KEY_LENGTH},
              "description": "Sent again with the same request within 24 hours, the first "
                             "answer is given again and nothing more is created.", **EXTENSION}


def idempotent(view: Callable) -> Callable:
    """Honour Idempotency-Key on a documented view that requires a capability."""
    capability = view.capability  # type: ignore[attr-defined]

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = _key()
        if key is None:
            return view(*args, **kwargs)
        g.principal = principal = authenticate(capability)
        digest = services.request_hash(request.method, request.full_path, request.get_data())
        session = db_session()
        first = _claim_or_first_answer(session, principal.hub_id, key, digest)
        if first is not None:
            return first
        try:
            body, status = view(*args, **kwargs)
        except BaseException:
            session.rollback()  # a claim not committed goes with the work
            services.release(session, principal.hub_id, key, digest)
            session.commit()
            raise
        services.keep_answer(session, principal.hub_id, key, status, body)
        session.commit()
        return body, status

    return _documented(wrapper, view)


def idempotent_upload(view: Callable) -> Callable:
    """Honour Idempotency-Key on the upload, which its single-use token authenticates.

    The tar streams in and is not part of what makes two requests the same: the path holds the
    token, and only one upload can spend it, so nothing is created twice whatever is sent. The
    key is kept with the answer once given: sent again after that, the upload gets that answer
    (sent together, the others are refused as without a key, the token being spent).

    The hub here is only what the client says, not yet proven: a stored answer is given only to
    the very same request (its path holds the secret token), and a key of the hub that was used
    otherwise is passed over in silence, as if none had been sent, so that no one learns what
    keys another hub used.
    """

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        key = _key()
        hub_id = request.headers.get("X-Hub-Id") or request.args.get("hub-id")
        if key is None or not hub_id:
            return view(*args, **kwargs)
        digest = services.request_hash(request.method, request.full_path, b"")
        session = db_session()
        first = services.first_request(session, hub_id, key)
        session.rollback()
        if first is not None and first.request_hash == digest and first.status is not None:
            return first.body or {}, first.status, {REPLAYED: "true"}
        body, status = view(*args, **kwargs)  # the token check proves the hub
        services.keep_first_answer(session, hub_id, key, digest, status, body)
        session.commit()
        return body, status

    return _documented(wrapper, view)


def _key() -> str | None:
    key = request.headers.get(HEADER)
    if key is not None and not _KEY.fullmatch(key):
        raise errors.InvalidArgument(
            f"`{HEADER}` must be 1 to {services.MAX_KEY_LENGTH} printable ASCII characters.",
            source=HEADER)
    return key


def _documented(wrapper: Callable, view: Callable) -> Callable:
    operation = view.operation  # type: ignore[attr-defined]
    wrapper.operation = dataclasses.replace(  # type: ignore[attr-defined]
        operation, parameters=(*operation.parameters, _PARAMETER),
        errors=(*operation.errors, errors.IdempotencyKeyReused, errors.IdempotencyKeyInUse,
                errors.InvalidArgument))
    return wrapper


def _first_answer(first: services.FirstRequest, digest: str
                  ) -> tuple[dict[str, Any], int, dict[str, str]] | None:
    """The first request's answer to give again, None while it has none, or the refusal of a
    different request."""
    if first.request_hash != digest:
        raise errors.IdempotencyKeyReused(
            f"This `{HEADER}` was sent within the last 24 hours with a different request "
            "(method, path or body); use a new key for a new request.", source=HEADER)
    if first.status is None:
        return None
    return first.body or {}, first.status, {REPLAYED: "true"}


def _claim_or_first_answer(session, hub_id: str, key: str, digest: str
                           ) -> tuple[dict[str, Any], int, dict[str, str]] | None:
    """None once this request holds the key; else the first request's answer."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not services.claim(session, hub_id, key, digest):
        first = services.first_request(session, hub_id, key)
        session.rollback()  # no transaction (nor connection) is held while waiting
        if first is not None:
            answer = _first_answer(first, digest)
            if answer is not None:
                return answer
        if time.monotonic() > deadline:
            raise errors.IdempotencyKeyInUse(
                f"The first request with this `{HEADER}` is still being served; send it again "
                "shortly to get its answer.", source=HEADER)
        time.sleep(_POLL_SECONDS)
    return None
