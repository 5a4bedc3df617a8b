"""Readiness: whether this API reaches Postgres and Redis now, for a probe that takes it out of a
load balancer while it cannot serve (`/v1/health` only says the process answers).

Each check opens its own connection with a short timeout, so a probe never waits for a pooled
connection, nor hangs on a server that does not answer.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Literal

import psycopg
import redis
from flask import Blueprint
from sqlalchemy.engine import make_url

from app import errors
from app.config import get_settings
from app.documents import Document
from app.openapi import documented

log = logging.getLogger("imagejobs.api")
blueprint = Blueprint("ready", __name__)

TIMEOUT_SECONDS = 2


def _postgres() -> None:
    url = make_url(get_settings().database_url).set(drivername="postgresql")
    with psycopg.connect(url.render_as_string(hide_password=False),
                         connect_timeout=TIMEOUT_SECONDS) as connection:
        connection.execute("SELECT 1")


def _redis() -> None:
    client = redis.Redis.from_url(get_settings().redis_url,
                                  socket_connect_timeout=TIMEOUT_SECONDS,
                                  socket_timeout=TIMEOUT_SECONDS)
    try:
        client.ping()
    finally:
        client.close()


CHECKS: dict[str, tuple[str, Callable[[], None]]] = {
    "postgres": ("Postgres", _postgres), "redis": ("Redis (the broker)", _redis)}


class Health(Document):
    status: Literal["ok"]


class HealthDocument(Document):
    data: Health


class Ready(Document):
    postgres: Literal["ok"]
    redis: Literal["ok"]


class ReadyDocument(Document):
    data: Ready


@blueprint.get("/v1/ready")
@documented("Whether the API reaches Postgres and Redis; 503 names those it cannot reach",
            ReadyDocument)
def ready():
    """200 with each service `ok`, or 503.not-ready naming those that cannot be reached."""
    states: dict[str, str] = {}
    for name, (_, check) in CHECKS.items():
        try:
            check()
            states[name] = "ok"
        except Exception as exc:  # any fault of the service or the way to it: not ready
            log.warning("not ready: %s cannot be reached (%s)", name, type(exc).__name__)
            states[name] = "unreachable"
    down = [CHECKS[name][0] for name, state in states.items() if state != "ok"]
    if down:
        raise errors.NotReady(f"{' and '.join(down)} cannot be reached.", extra=states)
    return ReadyDocument(data=Ready(**states))
