"""The database: declarative base, ids, times, and one engine per process."""

from __future__ import annotations

import os
import re
import select
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, MetaData, create_engine, event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import DeclarativeBase, Session, sessionmaker

from app.config import get_settings

ZERO_TIME = "0001-01-01T00:00:00Z"

_counter = int.from_bytes(os.urandom(3), "big")
_counter_lock = threading.Lock()
_process_random = os.urandom(5)
_process_pid = os.getpid()


def new_id() -> str:
    """A 24-hex-character id laid out like a MongoDB ObjectId: seconds first, so ids sort by age."""
    global _counter, _process_random, _process_pid
    with _counter_lock:
        if os.getpid() != _process_pid:  # a forked worker child must not repeat its parent's ids
            _process_random, _process_pid = os.urandom(5), os.getpid()
        _counter = (_counter + 1) % 0xFFFFFF
        counter = _counter
    return (int(time.time()).to_bytes(4, "big") + _process_random
            + counter.to_bytes(3, "big")).hex()


_ID = re.compile(r"[0-9a-f]{24}")


def is_id(value: str) -> bool:
    """Whether `value` could be an id at all (the rest cannot exist, and some, NUL, Postgres refuses)."""
    return _ID.fullmatch(value) is not None


def utcnow() -> datetime:
    return datetime.now(UTC)


def rfc3339(value: datetime | None) -> str:
    """RFC 3339 in UTC; an event that has not happened is Cycle's zero time, never a missing key."""
    if value is None:
        return ZERO_TIME
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def like_pattern(text: str) -> str:
    """A case-insensitive substring match for `text`, its wildcards taken literally."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention={
        "ix": "ix_%(column_0_label)s",
        "uq": "uq_%(table_name)s_%(column_0_name)s",
        "ck": "ck_%(table_name)s_%(constraint_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    })
    type_annotation_map = {
        dict[str, Any]: JSONB,
        list[dict[str, Any]]: JSONB,
        datetime: DateTime(timezone=True),
    }


_engine: Engine | None = None
_engine_pid: int | None = None
_sessionmaker: sessionmaker[Session] | None = None
_autocommit_sessionmaker: sessionmaker[Session] | None = None


def get_engine() -> Engine:
    """The process's engine; a forked child gets its own pool instead of sharing sockets."""
    global _engine, _engine_pid, _sessionmaker, _autocommit_sessionmaker
    if _engine is None or _engine_pid != os.getpid():
        if _engine is not None:
            _engine.dispose(close=False)
        settings = get_settings()
        # A transaction left idle for a lease (a frozen or stuck process) is ended by Postgres,
        # so that no lock it holds outlives the lease: see `app.jobs.execution.holding_locks`.
        idle_ms = settings.lease_seconds * 1000
        _engine = create_engine(
            settings.database_url, pool_size=5, max_overflow=10,
            connect_args={"options": f"-c idle_in_transaction_session_timeout={idle_ms}"})
        event.listen(_engine, "checkout", _refuse_if_closed_by_server)
        _engine_pid = os.getpid()
        _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
        _autocommit_sessionmaker = sessionmaker(
            _engine.execution_options(isolation_level="AUTOCOMMIT"), expire_on_commit=False)
    return _engine


def _refuse_if_closed_by_server(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """Check a pooled connection before use without a round trip (as `pool_pre_ping` makes):
    a server that closed it (a restart, a terminated backend) has left its last words or the end
    of the stream on the socket, where nothing else waits between uses. The pool then opens a
    new connection instead."""
    if dbapi_connection.closed:
        raise DisconnectionError("the connection is closed")
    poller = select.poll()
    poller.register(dbapi_connection.pgconn.socket, select.POLLIN)
    if poller.poll(0):
        raise DisconnectionError("the server closed the connection while it was idle")


def new_session() -> Session:
    get_engine()
    assert _sessionmaker is not None
    return _sessionmaker()


def autocommit_session() -> Session:
    """A session whose every statement stands alone, without the round trips of BEGIN and
    COMMIT or ROLLBACK: for reads, and for a single write that needs no transaction."""
    get_engine()
    assert _autocommit_sessionmaker is not None
    return _autocommit_sessionmaker()


@contextmanager
def transaction() -> Iterator[Session]:
    """A session whose work is committed on success and rolled back on any exception."""
    with new_session() as session, session.begin():
        yield session
