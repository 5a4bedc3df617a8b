"""HTTP rows, against the API served as in production (gunicorn, our gevent worker, 2 processes):
the poll rate under wrk and the 202 latency at a steady rate, each beside a bare Flask app doing
the same SQL under the same gunicorn settings."""

from __future__ import annotations

import os
import re
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import redis
import requests

from tests.benchmarks.bench_workers import ORIGIN
from tests.benchmarks.harness import Api, free_port, gunicorn_command, new_key, started, wait_answering

# The API's own Redis database: its jobs' messages, which no worker consumes, are dropped after.
REDIS_URL = "redis://127.0.0.1:6379/10"
CONNECTIONS, POLL_SECONDS = 32, 10
RATE, ACCEPT_SECONDS, WARM_SECONDS = 100, 20, 1


@contextmanager
def serving(name: str, bare_app: str | None = None, workers: int = 2) -> Iterator[str]:
    """The API (or `bare_app`) under gunicorn as production runs it, with `workers` processes;
    its base URL."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": REDIS_URL}
    with started(name, gunicorn_command(port, bare_app, workers), env) as process:
        base = f"http://127.0.0.1:{port}"
        wait_answering(process, f"{base}/v1/health")
        yield base


def wrk(url: str, headers: dict[str, str], seconds: int) -> float:
    """Requests per second wrk gets from `url` with CONNECTIONS connections."""
    command = ["wrk", "-t", "2", "-c", str(CONNECTIONS), "-d", f"{seconds}s",
               *(arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")),
               url]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in output:
        raise RuntimeError(f"{url} answered errors to wrk:\n{output}")
    if "Socket errors" in output:
        print(f"  (wrk against {url}: {output.split('Socket errors:')[1].splitlines()[0].strip()})")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))


def poll_rate(url: str, headers: dict[str, str]) -> float:
    wrk(url, headers, 2)  # every process's pool connected, its code warm
    return wrk(url, headers, POLL_SECONDS)


def accept_latencies(base: str, headers: dict[str, str], image_ids: list[str]
                     ) -> tuple[list[float], float]:
    """Seconds each import call took, sent at RATE per second whatever the answers before
    (open loop), measured from when it was due, so a backlog counts; and the seconds from the
    first call due to the last answer."""
    local = threading.local()

    def send(image_id: str, due: float) -> float:
        if not hasattr(local, "http"):
            local.http = requests.Session()
            local.http.headers.update(headers)
        response = local.http.post(f"{base}/v1/images/{image_id}/tasks",
                                   json={"action": "import"}, timeout=30)
        if response.status_code != 202:
            raise RuntimeError(f"import answered {response.status_code}: {response.text[:300]}")
        return time.perf_counter() - due

    with ThreadPoolExecutor(64) as pool:
        begin = time.perf_counter() + 0.1
        sent = []
        for index, image_id in enumerate(image_ids):
            due = begin + index / RATE
            time.sleep(max(0.0, due - time.perf_counter()))
            sent.append(pool.submit(send, image_id, due))
        latencies = [future.result() for future in sent]
    return latencies, time.perf_counter() - begin


def accept_figures(base: str, headers: dict[str, str], image_ids: list[str]
                   ) -> tuple[float, float, float]:
    """p50 and p99 of the import call, and the rate answered, after a second of warming up."""
    warm = RATE * WARM_SECONDS
    accept_latencies(base, headers, image_ids[:warm])
    latencies, seconds = accept_latencies(base, headers, image_ids[warm:])
    cuts = statistics.quantiles(latencies, n=100)
    return cuts[49] * 1000, cuts[98] * 1000, len(latencies) / seconds


def accepted(figures: tuple[float, float, float]) -> str:
    p50, p99, rate = figures
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms (answered {rate:.0f}/s)"


def poll_row(key: tuple[str, str]) -> None:
    with serving("api") as base:
        api = Api(base, *key)
        path = f"/v1/jobs/{api.import_image(api.image(ORIGIN))}"
        ours = poll_rate(f"{base}{path}", api.headers)
    with serving("bare-poll", "tests.benchmarks.bare_poll:create_app()") as base:
        theirs = poll_rate(f"{base}{path}", api.headers)
    print(f"GET /v1/jobs/{{id}}, wrk {CONNECTIONS} connections {POLL_SECONDS} s, gunicorn gevent "
          f"2 processes: {ours:,.0f} req/s; bare Flask doing the same SQL: {theirs:,.0f} req/s; "
          f"ratio {ours / theirs:.2f}")


def accept_row(key: tuple[str, str]) -> None:
    with serving("api") as base:
        api = Api(base, *key)
        # Distinct images: the API answers an import already queued with that same job.
        image_ids = api.images(ORIGIN, RATE * (WARM_SECONDS + ACCEPT_SECONDS))
        ours = accept_figures(base, api.headers, image_ids)
    with serving("bare-insert", "tests.benchmarks.bare_insert:create_app()") as base:
        theirs = accept_figures(base, api.headers, image_ids)
    print(f"POST /v1/images/{{id}}/tasks import at {RATE}/s for {ACCEPT_SECONDS} s: "
          f"{accepted(ours)}; bare Flask doing one INSERT: {accepted(theirs)}; "
          f"ratios p50 {ours[0] / theirs[0]:.1f}, p99 {ours[1] / theirs[1]:.1f}")


def need_wrk() -> None:
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is missing: `bash deploy/local-services.sh --bench` installs it "
                         "(make bench does)")


def main(rows: set[str]) -> None:
    if "poll" in rows:
        need_wrk()
    broker = redis.Redis.from_url(REDIS_URL)
    broker.flushdb()
    key = new_key("http")
    try:
        if "poll" in rows:
            poll_row(key)
        if "accept" in rows:
            accept_row(key)
    finally:
        broker.flushdb()
        broker.close()
