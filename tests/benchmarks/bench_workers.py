"""Worker rows: the rate of imports of a cached image against a bare Celery task doing the same
pull and inspect, and the memory of the worker's processes, idle and during a build."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import redis
from sqlalchemy import text

from app.db import transaction
from tests.benchmarks import bare_celery
from tests.benchmarks.harness import Api, dev_server, started, wait_until
from tests.processes import children

JOBS = 60
REGISTRY = "127.0.0.1:5000"
# A copy of the base image under a name of the benchmark's own: no test removes or moves it.
REPOSITORY = "imagejobs-bench/busybox"
ORIGIN = {"type": "docker-registry", "details": {"url": f"http://{REGISTRY}",
                                                 "target": f"{REPOSITORY}:latest"}}


def push_copy() -> None:
    """The base image on the local registry as REPOSITORY, the engine holding its layers."""
    name = f"{REGISTRY}/{REPOSITORY}:latest"
    for command in (["tag", "imagejobs/busybox:latest", name], ["push", "-q", name],
                    ["rmi", name]):
        subprocess.run(["docker", *command], check=True, capture_output=True)


def all_completed(job_ids: list[str]) -> bool:
    with transaction() as session:
        counts = dict(session.execute(text(
            "SELECT state, count(*) FROM jobs WHERE id = ANY(:ids) GROUP BY state"),
            {"ids": job_ids}).all())
    if counts.get("error") or counts.get("expired"):
        raise RuntimeError(f"imports failed: {counts} (see .test-logs/bench-dev.log)")
    return counts.get("completed") == len(job_ids)


def import_rate(api: Api) -> float:
    """Imports of a cached image per second, JOBS queued at once, from the first POST to the
    last one done."""
    push_copy()
    images = api.images(ORIGIN, JOBS + 1)
    first = [api.import_image(images[0])]  # the one pull that puts the image in the engine
    wait_until(lambda: all_completed(first), "the first import", timeout=120)
    begun = time.perf_counter()
    with ThreadPoolExecutor(8) as pool:
        job_ids = list(pool.map(api.import_image, images[1:]))
    wait_until(lambda: all_completed(job_ids), f"{JOBS} imports", timeout=600)
    return JOBS / (time.perf_counter() - begun)


def jobs_row() -> None:
    # Each measured with the other's processes stopped: they share two cores.
    with dev_server() as (api, _):
        ours = import_rate(api)
    theirs = bare_celery_rate()
    print(f"imports of a cached image, {JOBS} at once, concurrency 2: {ours:.1f} jobs/s; "
          f"bare Celery task doing the same pull + inspect: {theirs:.1f} jobs/s; "
          f"ratio {ours / theirs:.2f}")


@contextmanager
def bare_worker() -> Iterator[tuple[redis.Redis, subprocess.Popen]]:
    """tests/benchmarks/bare_celery.py's worker, answering; its Redis and its process."""
    counter = redis.Redis.from_url(bare_celery.BROKER)
    counter.flushdb()  # the bare app's own database: no message of an earlier run is left
    command = [sys.executable, "-m", "celery", "-A", "tests.benchmarks.bare_celery", "worker",
               "--pool", "prefork", "--concurrency", "2", "--loglevel", "WARNING",
               "--without-mingle", "--without-gossip"]
    try:
        with started("bare-celery", command) as process:
            # Its pool of 2 forked too: the main process may answer before they are.
            wait_until(lambda: bare_celery.celery.control.ping(timeout=0.5)
                       and len(children(process.pid)) == 2, "the bare worker", timeout=60)
            yield counter, process
    finally:
        counter.close()


def bare_celery_rate() -> float:
    """Tasks per second of the bare worker, JOBS sent at once (after one, as for ours)."""
    with bare_worker() as (counter, _):
        bare_celery.pull.delay(f"{REGISTRY}/{REPOSITORY}", "latest")
        wait_until(lambda: counter.get(bare_celery.DONE_KEY), "the first bare task", timeout=120)
        counter.delete(bare_celery.DONE_KEY)
        begun = time.perf_counter()
        for _ in range(JOBS):
            bare_celery.pull.delay(f"{REGISTRY}/{REPOSITORY}", "latest")
        wait_until(lambda: int(counter.get(bare_celery.DONE_KEY) or 0) == JOBS,
                   f"{JOBS} bare tasks", timeout=300)
        return JOBS / (time.perf_counter() - begun)


def vm_rss(pid: int) -> float:
    """The resident memory of `pid`, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def peak_rss(pids: list[int], during: Callable[[], object]) -> list[float]:
    """The highest RSS of each of `pids` while `during()` runs, sampled every 0.2 s."""
    peaks = [0.0] * len(pids)
    done = threading.Event()

    def sample() -> None:
        while True:
            for index, pid in enumerate(pids):
                peaks[index] = max(peaks[index], vm_rss(pid))
            if done.wait(0.2):
                return

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        during()
    finally:
        done.set()
        sampler.join()
    return peaks


def pool_of(worker: int) -> list[int]:
    """A Celery worker's main process and its pool's."""
    return [worker, *children(worker)]


def shown(figures: list[float]) -> str:
    return f"main {figures[0]:.1f} MB, pool " + ", ".join(f"{mb:.1f}" for mb in figures[1:]) + " MB"


def worker_rss(dev: subprocess.Popen, loud_build: Callable[[], object]) -> None:
    """RSS of the worker's main process and each pool process: idle, and at their peak during
    a build printing 100,000 lines; beside the bare Celery worker's, idle."""
    worker = next(pid for pid in children(dev.pid)
                  if b"celery" in Path(f"/proc/{pid}/cmdline").read_bytes())
    wait_until(lambda: len(children(worker)) == 2, "the worker's pool", timeout=60)
    idle = peak_rss(pool_of(worker), lambda: time.sleep(2))
    busy = peak_rss(pool_of(worker), loud_build)
    with bare_worker() as (_, bare):
        bare_idle = peak_rss(pool_of(bare.pid), lambda: time.sleep(2))
    print(f"worker RSS idle: {shown(idle)}; peak during a build printing 100,000 lines: "
          f"{shown(busy)}; bare Celery worker idle: {shown(bare_idle)}")
