"""Log lines of the API and the workers: plain text, or with IMAGEJOBS_LOG_FORMAT=json one JSON
object a line, carrying what the line belongs to (a job, a request) so one can find them all.

What a line belongs to is kept in a context variable: a worker sets it while it runs a job, the API
while it serves a request (each gevent greenlet and each thread has its own). A filter copies it
onto every record, whichever library logged it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import sys
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from gunicorn import glogging

from app.config import get_settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REQUEST_ID_HEADER = "X-Request-Id"
# An id a client sends is kept when it is printable ASCII of a sane length: anything else
# (control characters, a kilobyte of text) is replaced, so it can neither break a log line
# nor fill it.
_SANE_REQUEST_ID = re.compile(r"[\x21-\x7e]{1,128}")
_ENVIRON_KEY = "imagejobs.request_id"

_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "imagejobs_log", default=MappingProxyType({}))
# Attributes every LogRecord has; anything else on a record was passed as `extra`.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextmanager
def context(**fields: Any) -> Iterator[None]:
    """Every line logged inside carries `fields` (with those of an enclosing context)."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


def current() -> contextvars.Context:
    """The context to run another thread in, so that its lines carry this one's fields."""
    return contextvars.copy_context()


class ContextFilter(logging.Filter):
    """Puts the fields of the current context on each record; it lets every record through."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _context.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message, the context's fields, what was passed
    as `extra`, and an exception's trace as one field (its newlines escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update((k, v) for k, v in vars(record).items()
                    if k not in _STANDARD and not k.startswith("_"))
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str)


def formatter() -> logging.Formatter:
    return JsonFormatter() if get_settings().log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure(level: int | str = logging.INFO) -> None:
    """The root logger writes to stderr, in the configured format, with the context's fields;
    Python's warnings go through it.

    Run again (a second app in one process), it replaces its own handler and leaves others be.
    """
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter())
    handler.addFilter(ContextFilter())
    handler._imagejobs = True  # type: ignore[attr-defined]
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, "_imagejobs", False)]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)  # a library's warning is a line like the others


def sane_request_id(offered: str | None) -> str:
    """The client's request id when it is sane, else a new one."""
    if offered and _SANE_REQUEST_ID.fullmatch(offered):
        return offered
    return uuid.uuid4().hex


def request_id(environ: dict[str, Any]) -> str:
    """The id of this request, the same however often asked (the server's wrappers and the app)."""
    if _ENVIRON_KEY not in environ:
        environ[_ENVIRON_KEY] = sane_request_id(environ.get("HTTP_X_REQUEST_ID"))
    return environ[_ENVIRON_KEY]


WsgiApp = Callable[[dict[str, Any], Callable], Iterable[bytes]]


def with_request_ids(app: WsgiApp) -> WsgiApp:
    """Every answer carries X-Request-Id, and every line logged while serving it `request_id`."""

    def serve(environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        rid = request_id(environ)

        def start(status: str, headers: list, exc_info: Any = None) -> Callable:
            headers = [(k, v) for k, v in headers if k.lower() != REQUEST_ID_HEADER.lower()]
            return start_response(status, [*headers, (REQUEST_ID_HEADER, rid)], exc_info)

        with context(request_id=rid):
            return app(environ, start)

    return serve


class GunicornLogger(glogging.Logger):
    """gunicorn's own lines in JSON; an access line gives the path without its query (upload
    tokens travel there) and the request's id."""

    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        for log in (self.error_log, self.access_log):
            for handler in log.handlers:
                handler.setFormatter(JsonFormatter())
                handler.addFilter(ContextFilter())

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self.access_log_enabled:
            return
        status = int(str(resp.status).split()[0])
        line = {"remote_addr": environ.get("REMOTE_ADDR"), "method": req.method, "path": req.path,
                "status": status, "bytes": getattr(resp, "sent", None),
                "seconds": round(request_time.total_seconds(), 6)}
        # Without the app's id (gunicorn refused the request), the context's (ApiWorker's).
        if _ENVIRON_KEY in environ:
            line["request_id"] = environ[_ENVIRON_KEY]
        self.access_log.info("%s %s %s", req.method, req.path, status, extra=line)
