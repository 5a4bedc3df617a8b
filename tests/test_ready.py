"""`GET /v1/ready`: 503 in the envelope naming what the API cannot reach, 200 once it is back;
`/v1/health` answers all along (a liveness probe must not restart an API for a broker outage).

The Redis stopped here is one of this test's own, on a port of its own; the Postgres that cannot
be reached is a closed port.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import redis
import requests

from tests.processes import api_server, free_port


@contextmanager
def redis_server(port: int) -> Iterator[None]:
    """A redis-server of our own on `port`, keeping nothing on disk; stopped at the end."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing (deploy/local-services.sh installs it)"
    child = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        client = redis.Redis(port=port)
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert child.poll() is None and time.monotonic() < deadline, "redis did not start"
                time.sleep(0.1)
        client.close()
        yield
    finally:
        child.terminate()
        child.wait(timeout=30)


def ready(base: str) -> requests.Response:
    return requests.get(f"{base}/v1/ready", timeout=30)


def assert_not_ready(response: requests.Response, down: str, name: str) -> None:
    assert response.status_code == 503, response.text
    document = response.json()
    assert document["data"] is None
    error = document["error"]
    assert error["code"] == "503.not-ready" and error["status"] == 503
    assert name in error["detail"], error
    assert error["extra"][down] == "unreachable"
    assert response.headers["X-Request-Id"]


def test_not_ready_naming_redis_while_it_is_stopped_and_ready_once_it_is_back():
    port = free_port()
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0"}
    with api_server("ready-api", env=env) as base:
        with redis_server(port):
            response = ready(base)
            assert response.status_code == 200, response.text
            assert response.json() == {"data": {"postgres": "ok", "redis": "ok"}}
        stopped = ready(base)
        assert_not_ready(stopped, "redis", "Redis")
        assert stopped.json()["error"]["extra"]["postgres"] == "ok"
        assert "Postgres" not in stopped.json()["error"]["detail"]
        assert requests.get(f"{base}/v1/health", timeout=10).status_code == 200
        with redis_server(port):
            response = ready(base)
            assert response.status_code == 200, response.text
            assert response.json() == {"data": {"postgres": "ok", "redis": "ok"}}


@pytest.mark.parametrize("redis_too", [False, True])
def test_not_ready_naming_postgres_when_it_cannot_be_reached(redis_too):
    closed = free_port()
    env = {**os.environ,
           "DATABASE_URL": f"postgresql+psycopg://postgres:db-pass-never-shown@127.0.0.1:{closed}/x"}
    if redis_too:
        env["REDIS_URL"] = f"redis://127.0.0.1:{free_port()}/0"
    with api_server("ready-api-postgres", env=env) as base:
        response = ready(base)
        assert_not_ready(response, "postgres", "Postgres")
        assert ("Redis" in response.json()["error"]["detail"]) == redis_too
        assert "db-pass-never-shown" not in response.text
        assert requests.get(f"{base}/v1/health", timeout=10).status_code == 200
