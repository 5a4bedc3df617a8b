"""The baseline of the cached-import rate: a bare Celery app whose one task pulls and inspects.

`celery -A tests.benchmarks.bare_celery worker --concurrency 2`: the workers' Celery options that
shape the rate (acks late, prefetch 1, prefork), one Docker client per pool process, and a Redis
counter of the tasks done.
"""

from __future__ import annotations

import os

import docker
import redis
from celery import Celery

BROKER = os.environ.get("BENCH_BARE_REDIS_URL", "redis://127.0.0.1:6379/11")
DONE_KEY = "bare:done"

celery = Celery("bare", broker=BROKER, set_as_current=False)
celery.conf.update(task_acks_late=True, worker_prefetch_multiplier=1, task_ignore_result=True,
                   worker_hijack_root_logger=False)

_clients: dict[int, tuple[docker.DockerClient, redis.Redis]] = {}


def _clients_here() -> tuple[docker.DockerClient, redis.Redis]:
    """This process's clients, made on its first task (a forked child must not share sockets)."""
    if os.getpid() not in _clients:
        _clients[os.getpid()] = (docker.DockerClient(version="auto"), redis.Redis.from_url(BROKER))
    return _clients[os.getpid()]


@celery.task(name="bare.pull")
def pull(repository: str, tag: str) -> None:
    engine, counter = _clients_here()
    for _ in engine.api.pull(repository, tag=tag, stream=True, decode=True):
        pass
    engine.api.inspect_image(f"{repository}:{tag}")
    counter.incr(DONE_KEY)
