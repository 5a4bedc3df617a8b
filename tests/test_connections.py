"""Pooled database connections: one the server closed is replaced before a request uses it."""

from __future__ import annotations

import time

from sqlalchemy import create_engine, text

from app.db import get_engine
from tests.services import ADMIN_URL


def pooled_backend_pids() -> set[int]:
    """The server processes behind this process's pooled connections, checked out at once."""
    pool = get_engine()
    connections = [pool.connect() for _ in range(3)]
    try:
        return {c.scalar(text("SELECT pg_backend_pid()")) for c in connections}
    finally:
        for connection in connections:
            connection.close()


def terminate(pids: set[int]) -> None:
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            for pid in pids:
                connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            deadline = time.monotonic() + 10
            while connection.scalar(text("SELECT count(*) FROM pg_stat_activity "
                                         "WHERE pid = ANY(:pids)"), {"pids": list(pids)}):
                assert time.monotonic() < deadline, "the backends did not end"
                time.sleep(0.05)
    finally:
        admin.dispose()


def test_requests_after_the_server_closed_the_pooled_connections_are_answered(api):
    assert api.get("/v1/jobs").status_code == 200
    terminate(pooled_backend_pids())
    # Reads (no transaction) and writes (a transaction) each find a live connection.
    assert api.get("/v1/jobs").status_code == 200
    created = api.post("/v1/images/sources", json={
        "type": "direct", "origin": {"type": "docker-hub", "details": {"target": "busybox"}}})
    assert created.status_code == 201, created.get_json()
    terminate(pooled_backend_pids())
    assert api.get(f"/v1/images/sources/{created.get_json()['data']['id']}").status_code == 200
