"""The project's own processes (API, workers) started by tests, stopped whatever happens."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.services import ROOT, recreate_database


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children(pid: int) -> list[int]:
    """Direct children of `pid` (a worker's pool), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        # The command name is in parentheses and may hold spaces: split after its closing one.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def cli(env: dict[str, str], *args: str) -> str:
    """`imagejobs ARGS...` run to its end; its output."""
    result = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                            text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def own_database(database: str, env: dict[str, str]) -> tuple[dict[str, str], dict[str, str]]:
    """A fresh, migrated database with one hub and key: the environment of processes using it,
    and the headers of that key.

    Processes on it are alone there: no other test's worker sweeps, claims or republishes its
    jobs.
    """
    recreate_database(database)
    env = {**env, "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{database}"}
    cli(env, "db", "upgrade")
    hub = cli(env, "hub", "create", database)
    return env, {"Authorization": f"Bearer {cli(env, 'key', 'create', '--hub', hub)}",
                 "X-Hub-Id": hub}


@contextmanager
def imagejobs(name: str, *args: str, env: dict[str, str] | None = None
              ) -> Iterator[tuple[subprocess.Popen, Path]]:
    """`imagejobs ARGS...` with its output in .test-logs/NAME.log; terminated at the end."""
    log_path = ROOT / ".test-logs" / f"{name}.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "w") as log:
        child = subprocess.Popen([sys.executable, "-m", "app.cli", *args], stdout=log,
                                 stderr=subprocess.STDOUT, cwd=ROOT, env=env or os.environ)
    try:
        yield child, log_path
    finally:
        child.terminate()
        try:
            child.wait(timeout=40)
        except subprocess.TimeoutExpired:
            child.kill()
            raise


@contextmanager
def api_server(name: str, *args: str, env: dict[str, str] | None = None) -> Iterator[str]:
    """An API (`imagejobs api`, or `dev` when args say so) on a free port; yields its base URL."""
    port = free_port()
    command = args or ("api", "--workers", "1")
    with imagejobs(name, *command, "--port", str(port), env=env) as (child, log_path):
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not _healthy(base):
            if child.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the API at {base} did not start:\n"
                                   f"{log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        yield base


def _healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/v1/health", timeout=5).ok
    except requests.RequestException:  # not listening yet, or still starting
        return False


class ApiClient:
    """An API the tests started, called with one hub's key."""

    def __init__(self, base: str, headers: dict[str, str]):
        self.base = base
        self.http = requests.Session()
        self.http.headers.update(headers)

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.http.request(method, f"{self.base}{path}", timeout=10, **kwargs)
        assert response.status_code < 300, response.text
        return response.json()["data"]

    def job(self, job_id: str) -> dict:
        return self.call("GET", f"/v1/jobs/{job_id}")

    def wait_for(self, condition, what: str, timeout: float = 90):
        """`condition()` once it is truthy; fails the test after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while not (result := condition()):
            assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
            time.sleep(0.2)
        return result
