"""A worker stopped with SIGTERM lets go of its job within a bounded time; no job stays running.

Its own API and workers on a Redis database of their own, so that which worker runs the build is
the test's choice.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from datetime import UTC, datetime

import pytest
import requests

from tests.api_calls import make_tenant, parse_time
from tests.image_builds import dockerfile_context
from tests.processes import api_server, imagejobs
from tests.servers import FileServer

REDIS = "redis://127.0.0.1:6379/5"
# Short enough to keep the test quick: a stopping worker gives its job 2 s, a lease lasts 3 s.
ENV = {"REDIS_URL": REDIS, "IMAGEJOBS_SHUTDOWN_SECONDS": "2", "IMAGEJOBS_LEASE_SECONDS": "3"}


def slow_context() -> bytes:
    return dockerfile_context(f"FROM imagejobs/busybox:latest\nRUN echo {uuid.uuid4().hex} && "
                              "for i in $(seq 1 8); do echo tick $i; sleep 1; done\n")


def started_worker(name: str, env: dict[str, str]):
    context = imagejobs(name, "worker", "--queues", "imagejobs-build", "--concurrency", "1",
                        env=env)
    child, log = context.__enter__()
    deadline = time.monotonic() + 60
    while "ready." not in log.read_text():
        assert child.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.2)
    return context, child


def job_state(session, base: str, job_id: str) -> dict:
    return session.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()["data"]


@pytest.fixture
def files():
    server = FileServer()
    yield server
    server.close()


def test_a_stopped_worker_hands_its_build_over_and_no_job_stays_running(docker_client, files):
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    env = {**os.environ, **ENV}
    with api_server("shutdown-api", env=env) as base:
        session = requests.Session()
        session.headers.update(make_tenant().headers)
        url = files.add(f"/{uuid.uuid4().hex}.tar.gz", slow_context())
        source = session.post(f"{base}/v1/images/sources", json={"type": "direct", "origin": {
            "type": "docker-file", "details": {"targz_url": url}}}).json()["data"]
        image = session.post(f"{base}/v1/images", json={"source_id": source["id"]}).json()["data"]

        first, first_process = started_worker("shutdown-first", env)
        job_id = session.post(f"{base}/v1/images/{image['id']}/tasks",
                              json={"action": "import"}).json()["data"]["job"]["id"]
        deadline = time.monotonic() + 60
        while "tick 2" not in session.get(f"{base}/v1/images/{image['id']}/build-log").text:
            assert time.monotonic() < deadline, "the build never started"
            time.sleep(0.2)

        stopping, stopped_at = time.monotonic(), datetime.now(UTC)
        first_process.send_signal(signal.SIGTERM)
        first_process.wait(timeout=30)  # bounded: 2 s of grace, then the job is let go
        stopped_after = time.monotonic() - stopping
        first.__exit__(None, None, None)
        assert job_state(session, base, job_id)["state"]["current"] != "completed"

        second, _ = started_worker("shutdown-second", env)
        try:
            deadline = time.monotonic() + 90
            while (job := job_state(session, base, job_id))["state"]["current"] in (
                    "queued", "running"):
                assert time.monotonic() < deadline, job
                time.sleep(0.3)
        finally:
            second.__exit__(None, None, None)

    assert job["state"]["current"] == "completed", job
    # The second worker's attempt started the plan over: its steps, each once, after the stop.
    steps = job["tasks"][0]["steps"]
    assert [step["caption"] for step in steps] == ["Fetch context", "Build", "Verify", "Save"]
    assert parse_time(steps[0]["started"]) > stopped_at, steps
    print(f"the stopped worker exited {stopped_after:.1f} s after SIGTERM")
