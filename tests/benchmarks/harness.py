"""What the benchmark rows share: their environment, the processes they start, and waiting.

Importing it sets the environment (database imagejobs_bench, Redis db 9); settings are read on
first use, after every import, and the processes the rows start inherit it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

ROOT = Path(__file__).resolve().parents[2]
DATABASE = "imagejobs_bench"
os.environ.update({
    "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}",
    "REDIS_URL": "redis://127.0.0.1:6379/9",
    "IMAGEJOBS_SECRET_KEY": "benchmark-secret",
    "IMAGEJOBS_NODE_ID": "bench-node",
    "IMAGEJOBS_ALLOWED_NETWORKS": "127.0.0.1/32",
    # Room for the whole 100,000-line log, so the figures cover every line.
    "IMAGEJOBS_BUILD_LOG_MAX_CHARS": str(16 * 1024 * 1024),
})

import requests  # noqa: E402

from app import migrations  # noqa: E402
from app.cli import api_command  # noqa: E402
from app.db import transaction  # noqa: E402
from app.hubs.services import create_hub, create_key  # noqa: E402
from tests.services import recreate_database  # noqa: E402

T = TypeVar("T")
# Every row, in the order a run measures them; BENCH_ONLY=poll,jobs picks some.
ROWS = ("writer", "wal", "rss", "builds", "jobs", "poll", "accept", "follow")


def selected_rows() -> set[str]:
    wanted = {row.strip() for row in os.environ.get("BENCH_ONLY", "").split(",") if row.strip()}
    unknown = wanted - set(ROWS)
    if unknown:
        raise SystemExit(f"BENCH_ONLY: no row {', '.join(sorted(unknown))}; "
                         f"choose from {','.join(ROWS)}")
    return wanted or set(ROWS)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def fresh_database() -> None:
    recreate_database(DATABASE)
    migrations.upgrade()


def wait_until(condition: Callable[[], T], what: str, timeout: float,
               interval: float = 0.05) -> T:
    """`condition()` once it is truthy, looked at every `interval` seconds."""
    deadline = time.monotonic() + timeout
    while not (result := condition()):
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout:g} s for {what}")
        time.sleep(interval)
    return result


@contextmanager
def started(name: str, command: list[str], env: dict[str, str] | None = None
            ) -> Iterator[subprocess.Popen]:
    """`command` running, its output in .test-logs/bench-NAME.log; stopped at the end, with
    every process it started (its own session: a stuck one is killed with its children)."""
    (ROOT / ".test-logs").mkdir(exist_ok=True)
    with open(ROOT / ".test-logs" / f"bench-{name}.log", "w") as log:
        process = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                   env=env or os.environ, start_new_session=True)
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)


def wait_answering(process: subprocess.Popen, url: str) -> None:
    """Until `url` gets an answer other than a server error; fails at once if `process` ended."""

    def answers() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args} ended with {process.returncode} (see .test-logs)")
        try:
            return requests.get(url, timeout=5).status_code < 500
        except requests.RequestException:  # not listening yet
            return False

    wait_until(answers, url, timeout=60, interval=0.3)


def gunicorn_command(port: int, bare_app: str | None = None, workers: int = 2) -> list[str]:
    """`imagejobs api --workers 2` as production runs it (or with `workers` processes); with
    `bare_app` ("module:factory()"), the same gunicorn settings with gunicorn's own gevent worker
    serving that app instead."""
    command = api_command("127.0.0.1", port, workers=workers)
    if bare_app is None:
        return command
    # Our worker class and hooks are part of what the real API costs, not of the baseline.
    command = [{"app.serve.ApiWorker": "gevent", "app.wsgi:app": bare_app}.get(arg, arg)
               for arg in command]
    for option in ("--config", "--logger-class"):
        if option in command:
            index = command.index(option)
            del command[index:index + 2]
    return command


def new_key(name: str) -> tuple[str, str]:
    """A new hub and a key of it with every capability: (hub id, secret)."""
    with transaction() as session:
        hub = create_hub(session, name)
        _, secret = create_key(session, hub.id, name)
        return hub.id, secret


class Api:
    """An API this run started, called with one hub's key."""

    def __init__(self, base: str, hub_id: str, secret: str):
        self.base = base
        self.hub_id = hub_id
        self.headers = {"Authorization": f"Bearer {secret}", "X-Hub-Id": hub_id}
        self.http = requests.Session()
        self.http.headers.update(self.headers)

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = self.http.request(method, f"{self.base}{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()["data"]

    def image(self, origin: dict, **fields: object) -> str:
        """A new image of a new source with `origin`; its id."""
        source = self.call("POST", "/v1/images/sources", json={"type": "direct",
                                                               "origin": origin})
        return self.call("POST", "/v1/images", json={"source_id": source["id"], **fields})["id"]

    def images(self, origin: dict, count: int) -> list[str]:
        """`count` new images of one new source with `origin`, so each import is a job of its own."""
        source = self.call("POST", "/v1/images/sources", json={"type": "direct",
                                                               "origin": origin})
        with ThreadPoolExecutor(8) as pool:
            return list(pool.map(lambda _: self.call("POST", "/v1/images", json={
                "source_id": source["id"]})["id"], range(count)))

    def import_image(self, image_id: str) -> str:
        """Queue the import; the job's id."""
        return self.call("POST", f"/v1/images/{image_id}/tasks",
                         json={"action": "import"})["job"]["id"]


@contextmanager
def dev_server() -> Iterator[tuple[Api, subprocess.Popen]]:
    """`imagejobs dev` (the API and a worker of concurrency 2) on the bench database."""
    port = free_port()
    with started("dev", [sys.executable, "-m", "app.cli", "dev", "--port", str(port),
                             "--concurrency", "2"]) as process:
        base = f"http://127.0.0.1:{port}"
        wait_answering(process, f"{base}/v1/health")
        api = Api(base, *new_key("bench"))
        time.sleep(3)  # let the worker finish starting
        yield api, process
