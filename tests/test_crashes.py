"""Workers whose pool child is killed with SIGKILL mid-build: what the build printed is kept, the
job is retried, and a job that kills its worker every time ends in error while the pool works on.

Its own API and worker on a Redis database of their own, so that the test knows which process
runs the build.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest

from tests.image_builds import dockerfile_context
from tests.processes import ApiClient, api_server, children, imagejobs, own_database
from tests.servers import FileServer
from tests.services import ROOT, TEST_DATABASE

REDIS = "redis://127.0.0.1:6379/3"
ENV = {"REDIS_URL": REDIS, "IMAGEJOBS_LEASE_SECONDS": "3", "IMAGEJOBS_MAX_ATTEMPTS": "3"}
TICKS = 40  # one line every 0.2 s, each with the second it was printed at


class Stack(ApiClient):
    def __init__(self, base: str, headers: dict[str, str], env: dict[str, str], worker_pid: int,
                 files: FileServer):
        super().__init__(base, headers)
        self.env, self.worker_pid, self.files = env, worker_pid, files

    def build(self, ticks: int = TICKS) -> tuple[str, str]:
        """Start the import of a build printing `ticks` lines; (image id, job id)."""
        context = dockerfile_context(
            f"FROM imagejobs/busybox:latest\nRUN echo {uuid.uuid4().hex} && for i in "
            f"$(seq 1 {ticks}); do echo tick $i at $(date +%s); sleep 0.2; done\n")
        url = self.files.add(f"/{uuid.uuid4().hex}.tar.gz", context)
        source = self.call("POST", "/v1/images/sources", json={"type": "direct", "origin": {
            "type": "docker-file", "details": {"targz_url": url}}})
        image = self.call("POST", "/v1/images", json={"source_id": source["id"]})
        job = self.call("POST", f"/v1/images/{image['id']}/tasks", json={"action": "import"})
        return image["id"], job["job"]["id"]

    def log(self, image_id: str) -> str:
        response = self.http.get(f"{self.base}/v1/images/{image_id}/build-log", timeout=10)
        return response.json()["data"]["log"] if response.ok else ""

    def kill_the_builder(self) -> float:
        """SIGKILL the pool child (concurrency 1: the one running the build); when it was."""
        (child,) = children(self.worker_pid)
        killed_at = time.time()
        os.kill(child, signal.SIGKILL)
        return killed_at


@pytest.fixture(scope="module")
def stack(docker_client) -> Iterator[Stack]:
    import redis

    redis.Redis.from_url(REDIS).flushdb()
    # A database of its own: the suite's worker would otherwise take the job over when a lease
    # lapses, and the test would kill a pool child that runs nothing.
    env, headers = own_database(f"{TEST_DATABASE}_crashes", {**os.environ, **ENV})
    files = FileServer()
    with api_server("crashes-api", env=env) as base, \
            imagejobs("crashes-worker", "worker", "--queues", "imagejobs-build", "--concurrency",
                      "1", env=env) as (worker, log):
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        yield Stack(base, headers, env, worker.pid, files)
        assert worker.poll() is None, "the worker's main process died"
    files.close()


def ticks(log: str) -> list[tuple[int, int]]:
    """(tick number, second printed) of every tick line of a build log, in order."""
    return [(int(words[1]), int(words[3])) for words in map(str.split, log.splitlines())
            if len(words) == 4 and words[0] == "tick"]


def test_what_a_build_printed_before_its_worker_was_killed_is_kept(stack):
    image_id, job_id = stack.build()
    stack.wait_for(lambda: len(ticks(stack.log(image_id))) >= 10, "the build to print")
    killed_at = stack.kill_the_builder()
    kept = ticks(stack.log(image_id).split("[imagejobs: build attempt 2")[0])

    assert [n for n, _ in kept] == list(range(1, len(kept) + 1)), kept  # nothing skipped
    # Lines are written every half second: what was printed two seconds before the kill is kept.
    assert kept[-1][1] >= int(killed_at) - 2, (kept[-1], killed_at)

    job = stack.wait_for(lambda: (j := stack.job(job_id))["state"]["current"] not in (
        "queued", "running") and j, "the retried build")
    assert job["state"]["current"] == "completed", job
    log = stack.log(image_id)
    assert "build attempt 1" in log and "build attempt 2" in log
    assert log.index("build attempt 2") > log.index(f"tick {kept[-1][0]} at")
    assert [n for n, _ in ticks(log.split("build attempt 2")[1])] == list(range(1, TICKS + 1))


def test_a_job_that_kills_its_worker_every_time_ends_in_error_and_the_pool_works_on(stack):
    image_id, job_id = stack.build()
    for attempt in (1, 2, 3):
        stack.wait_for(lambda a=attempt: f"build attempt {a}" in (log := stack.log(image_id))
                       and "tick 3 " in log.split(f"build attempt {a}")[1],
                       f"attempt {attempt} to print")
        stack.kill_the_builder()

    job = stack.wait_for(lambda: (j := stack.job(job_id))["state"]["current"] in (
        "error", "completed") and j, "the job to be given up")
    assert job["state"]["current"] == "error", job
    assert "given up after 3 attempts" in job["state"]["error"]["message"]
    image = stack.call("GET", f"/v1/images/{image_id}")
    assert image["state"]["current"] == "new" and "given up" in image["state"]["error"]["message"]

    healthy_image, healthy_job = stack.build(ticks=2)
    job = stack.wait_for(lambda: (j := stack.job(healthy_job))["state"]["current"] not in (
        "queued", "running") and j, "a build after the crashes")
    assert job["state"]["current"] == "completed", job


def health(stack: Stack, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", "health", "--queue", "imagejobs-build",
                           "--timeout", str(timeout)], capture_output=True, text=True, cwd=ROOT,
                          env=stack.env, timeout=60)


def test_a_worker_whose_only_slot_runs_a_long_build_is_healthy_and_frozen_it_is_not(stack):
    """A liveness probe must not restart a worker for running a long build, nor spare a hung one."""
    image_id, job_id = stack.build(ticks=100)
    stack.wait_for(lambda: "tick 3 " in stack.log(image_id), "the build to print")

    busy = health(stack, timeout=2)
    assert busy.returncode == 0, busy.stdout + busy.stderr
    assert "every slot running a job" in busy.stdout

    os.kill(stack.worker_pid, signal.SIGSTOP)  # its build goes on in the pool child
    try:
        frozen = health(stack, timeout=2)
    finally:
        os.kill(stack.worker_pid, signal.SIGCONT)
    assert frozen.returncode == 1 and "unhealthy" in frozen.stderr, frozen.stdout

    job = stack.wait_for(lambda: (j := stack.job(job_id))["state"]["current"] not in (
        "queued", "running") and j, "the build to end", timeout=120)
    assert job["state"]["current"] == "completed", job
    free = health(stack, timeout=15)
    assert free.returncode == 0 and "consumed the canary" in free.stdout, free.stderr
