"""The API's gunicorn worker: a slow or stalled client holds a greenlet, not a thread (nor, with a
JSON body, a database connection), and every answer gunicorn gives by itself is in the envelope.

gunicorn's gevent worker serves each connection in a greenlet, so a client dripping its headers
costs a few kilobytes, not one of a handful of threads. gevent patches the standard library in
the worker before the app is imported; psycopg sees the patch and waits in Python (`wait_poll`)
instead of in C, so a query blocks only its own request. redis-py and kombu use plain sockets.
Disk reads and long computing still block the whole worker: see `off_the_hub`.
"""

from __future__ import annotations

import io
import json
import socket
from collections.abc import Callable, Iterable
from http import HTTPStatus
from typing import Any, TypeVar

import gevent
from gevent import monkey
from gunicorn import util
from gunicorn.workers.ggevent import GeventWorker

from app import errors, logs

T = TypeVar("T")
WsgiApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]

# How long a stopping worker keeps a connection that is between requests, for a request its
# client may be sending already (answered with `Connection: close`), before it closes it.
STOP_LINGER_SECONDS = 2.0
# The most of gunicorn's own wording of a malformed request that is repeated to the client.
MAX_DETAIL = 200


class UriTooLong(errors.ApiError):
    status, code, title = 414, "414.uri-too-long", "The request line is too long."


class HeaderTooLarge(errors.ApiError):
    status, code, title = 431, "431.header-too-large", "The request headers are too large."


class RequestTimeout(errors.ApiError):
    status, code, title = 408, "408.request-timeout", "The request did not arrive in time."


class Forbidden(errors.ApiError):
    status, code, title = 403, "403.forbidden", "The connection is not allowed."


class ExpectationFailed(errors.ApiError):
    status, code, title = 417, "417.expectation-failed", "The `Expect` header cannot be met."


class NotImplementedHere(errors.ApiError):
    status, code, title = 501, "501.not-implemented", "The request uses an HTTP feature the API " \
                                                      "does not support."


# gunicorn's own answers (to requests it could not parse), by status.
_SERVER_ERRORS: dict[int, type[errors.ApiError]] = {
    400: errors.InvalidSyntax, 403: Forbidden, 414: UriTooLong, 417: ExpectationFailed,
    431: HeaderTooLarge, 501: NotImplementedHere,
}


def server_error(status: int, exc: BaseException, cfg: Any) -> errors.ApiError:
    """The envelope's error for a status gunicorn chose for `exc`."""
    if status == 414:
        return UriTooLong(f"A request line (method, path and query) may be at most "
                          f"{cfg.limit_request_line} bytes.")
    if status == 431:
        return HeaderTooLarge(f"Send at most {cfg.limit_request_fields} header fields of at most "
                              f"{cfg.limit_request_field_size} bytes each.")
    kind = _SERVER_ERRORS.get(status)
    if kind is None:  # a fault of ours: its words stay in the log
        return errors.ApiError()
    return kind(str(exc)[:MAX_DETAIL] or None)


def _envelope(error: errors.ApiError) -> bytes:
    return json.dumps(error.envelope()).encode()


def error_response(error: errors.ApiError, request_id: str) -> bytes:
    """A whole HTTP/1.1 answer holding `error` in the envelope; the connection closes after it."""
    body = _envelope(error)
    head = (f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}\r\n"
            f"Connection: close\r\nContent-Type: application/json\r\n"
            f"{logs.REQUEST_ID_HEADER}: {request_id}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


class _Page:
    """Stands in for the client's socket to catch the HTML page gunicorn would send."""

    def __init__(self) -> None:
        self.written = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.written += data

    @property
    def status(self) -> int:
        return int(self.written.split(b" ", 2)[1])


def _left_unread(body: Any) -> bool:
    """Whether a request body (gunicorn's) still has bytes the app never read."""
    reader = getattr(body, "reader", None)
    return bool(getattr(reader, "length", 0)) or getattr(reader, "parser", None) is not None


def closing_when_unread(app: WsgiApp) -> WsgiApp:
    """Say `Connection: close` on a 413, and on any answer given before the body was read.

    The alternative, reading and discarding the rest of an upload before the next request,
    costs as long as the client cares to send; gunicorn would then close anyway, after saying
    keep-alive.
    """

    def serve(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        body = environ["wsgi.input"]

        def start(status: str, headers: list, exc_info: Any = None) -> Callable:
            response = getattr(start_response, "__self__", None)  # gunicorn's Response
            if response is not None and (status.startswith("413") or _left_unread(body)):
                response.force_close()
            return start_response(status, headers, exc_info)

        return app(environ, start)

    return serve


class _Prefixed:
    """A request body whose first bytes were received already, followed by the rest."""

    def __init__(self, head: bytes, rest: Any):
        self.head = io.BytesIO(head)
        self.rest = rest

    def read(self, size: int | None = -1) -> bytes:
        data = self.head.read(size)
        if size is None or size < 0:
            return data + self.rest.read()
        return data + self.rest.read(size - len(data)) if len(data) < size else data

    def readline(self, size: int | None = -1) -> bytes:
        line = self.head.readline(size)
        if line.endswith(b"\n") or (size is not None and 0 <= size <= len(line)):
            return line
        return line + self.rest.readline(-1 if size is None or size < 0 else size - len(line))


def _receive(environ: dict[str, Any], limit: int) -> None:
    """Read the body, or its first `limit` bytes, into memory ahead of the app."""
    body = environ["wsgi.input"]
    length = environ.get("CONTENT_LENGTH")
    if length:
        if int(length) <= limit:  # a larger one the app refuses (413) or streams (an upload)
            environ["wsgi.input"] = io.BytesIO(body.read(int(length)))
        return
    head = body.read(limit + 1)  # chunked, or (returning at once) no body at all
    environ["wsgi.input"] = io.BytesIO(head) if len(head) <= limit else _Prefixed(head, body)


def receiving_bodies_first(app: WsgiApp, limit: int, seconds: float) -> WsgiApp:
    """Receive a request's body (up to `limit` bytes) before the app sees the request.

    A view opens its database session to authenticate before it parses the body, so a client
    dripping a JSON body would otherwise hold a pooled connection all along, and a few dozen of
    them would stop every request. A body that takes longer than `seconds` is answered 408.
    """

    def serve(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        received = False
        with gevent.Timeout(seconds or None, False):
            _receive(environ, limit)
            received = True
        if not received:
            body = _envelope(RequestTimeout(f"The request body did not arrive within {seconds:g} s."))
            start_response(f"408 {HTTPStatus(408).phrase}", [
                ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                (logs.REQUEST_ID_HEADER, logs.request_id(environ))])
            return [body]
        return app(environ, start_response)

    return serve


def off_the_hub(function: Callable[..., T], *args: Any) -> T:
    """`function(*args)` on a real thread when gevent serves this process, so long disk reads or
    computing (checking an uploaded tar) do not stop the worker's other requests, nor its
    heartbeat to gunicorn's arbiter, which kills a worker silent for `--timeout` (30 s)."""
    if not monkey.is_module_patched("threading"):
        return function(*args)

    def caught() -> tuple[bool, Any]:
        # gevent prints the trace of an exception raised in its thread pool: an error meant
        # for the client (a refused upload) comes back as a value, and is raised here.
        try:
            return True, function(*args)
        except Exception as exc:
            return False, exc

    done, result = gevent.get_hub().threadpool.apply(caught)
    if not done:
        raise result
    return result


def psycopg_waits_cooperatively() -> bool:
    """Whether psycopg picked a wait function gevent can switch away from (not its C one)."""
    from psycopg import waiting

    return waiting.wait is not getattr(waiting, "wait_c", None)


def _header(req: Any, name: str) -> str | None:
    """A header of a request gunicorn parsed (before it failed), if it got that far."""
    for key, value in getattr(req, "headers", None) or ():
        if key.lower() == name.lower():
            return value
    return None


class ApiWorker(GeventWorker):
    """gunicorn's gevent worker, answering in the envelope and stopping promptly."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # The greenlets serving a connection while it waits for its next request.
        self.between_requests: dict[socket.socket, gevent.Greenlet] = {}

    def load_wsgi(self) -> None:
        super().load_wsgi()
        if not psycopg_waits_cooperatively():
            raise RuntimeError("psycopg was imported before gevent patched the standard library; "
                               "its C wait would stop every request of this worker during a query")
        from app.config import get_settings

        self.wsgi = closing_when_unread(receiving_bodies_first(
            self.wsgi, get_settings().max_body_bytes, self.cfg.keepalive))

    def handle(self, listener: Any, client: socket.socket, addr: Any) -> None:
        self.between_requests[client] = gevent.getcurrent()
        try:
            super().handle(listener, client, addr)
        finally:
            self.between_requests.pop(client, None)

    def handle_request(self, listener_name: Any, req: Any, sock: socket.socket, addr: Any) -> None:
        self.between_requests.pop(sock, None)
        try:
            super().handle_request(listener_name, req, sock, addr)
        except StopIteration:
            # The answer said `Connection: close`. Reading what the client still sends for a
            # moment lets it read the answer instead of a reset.
            util.close_graceful(sock)
            raise
        self.between_requests[sock] = gevent.getcurrent()

    def handle_error(self, req: Any, client: socket.socket, addr: Any, exc: BaseException) -> None:
        """gunicorn's answer to a request it could not parse (or serve), in the envelope."""
        page = _Page()
        request_id = logs.sane_request_id(_header(req, logs.REQUEST_ID_HEADER))
        with logs.context(request_id=request_id):
            super().handle_error(req, page, addr, exc)  # gunicorn logs it and picks the status
        try:
            util.write_nonblock(client, error_response(server_error(page.status, exc, self.cfg),
                                                       request_id))
        except OSError:
            self.log.debug("could not send the error answer")
        util.close_graceful(client)

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        # A kept-alive connection would otherwise hold the stop for the whole graceful timeout,
        # and so would a follower (a long poll, a stream).
        gevent.spawn_later(STOP_LINGER_SECONDS, self._close_between_requests)
        from app.events import listener  # here: psycopg must be imported after gevent's patch

        gevent.spawn(listener.stop_following)

    def _close_between_requests(self) -> None:
        # gunicorn reads StopIteration, raised where the greenlet waits for the next request, as
        # the end of the connection, and closes it quietly.
        gevent.killall(list(self.between_requests.values()), StopIteration, block=False)
