"""The workers' Celery app: shared settings, the task modules, the sweeper and announcer threads."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Any, TextIO

import redis
from celery import Celery
from celery.apps import worker as celery_worker
from celery.signals import setup_logging, worker_ready, worker_shutdown

import app.models  # noqa: F401  (every model, so that foreign keys between domains resolve)
from app import logs
from app.config import Settings, check_service, get_settings, use_settings
from app.events import stream
from app.jobs import consumers
from app.jobs.execution import sweep
from app.jobs.queueing import make_celery
from workers.runner import worker_name
from workers.uploads import sweep_uploads

log = logging.getLogger("imagejobs.sweeper")

_stop_sweeping = threading.Event()


def _json_logs(loglevel: int, **_: object) -> None:
    logs.configure(loglevel)


def _say_as_json(message: str, stream: TextIO = sys.__stderr__) -> None:
    """Celery's shutdown notices as JSON lines. Celery writes them itself, from a signal handler,
    with a bare os.write (no lock the interrupted code may hold): so does this."""
    record = logging.LogRecord("celery.apps.worker", logging.WARNING, __file__, 0, message,
                               None, None)
    os.write(stream.fileno(), (logs.JsonFormatter().format(record) + "\n").encode())


def create_worker_app(settings: Settings | None = None) -> Celery:
    """The workers' Celery app; `settings` become the process's own (without them, the environment's)."""
    settings = use_settings(settings)
    check_service(settings, worker=True)
    worker_app = make_celery(settings)
    worker_app.conf.include = ["workers.tasks.imports", "workers.tasks.deletes",
                               "workers.tasks.prunes", "workers.tasks.health"]
    worker_app.set_default()
    if settings.log_format == "json":
        # Now already: Celery warns (running as root, say) before it sets logging up.
        logs.configure()
        # A receiver replaces Celery's own logging setup: its lines and the tasks' go through ours.
        setup_logging.connect(_json_logs)
        celery_worker.safe_say = _say_as_json
    return worker_app


def _sweep_forever() -> None:
    interval = get_settings().sweep_seconds
    while not _stop_sweeping.wait(interval):
        try:
            report = sweep()
            if (report.expired or report.requeued or report.abandoned or report.cancelled
                    or report.published):
                log.info("sweep: %s", report)
            sweep_uploads()
            stream.forget_old()
        except Exception:  # the database or broker is away; the next sweep tries again
            log.warning("sweep failed", exc_info=True)


def _announce_forever(consumer: Any) -> None:
    """Say which queues this worker consumes (app/jobs/consumers.py), every sweep interval.

    A thread apart from the sweeper's, so that a long sweep does not make the worker look gone.
    """
    settings = get_settings()
    client = redis.Redis.from_url(settings.redis_url, socket_timeout=3, socket_connect_timeout=3)
    name = worker_name()
    while True:
        try:
            # None while the consumer reconnects: then it consumes nothing, and says so.
            task_consumer = consumer.task_consumer
            queues = [queue.name for queue in task_consumer.queues] if task_consumer else []
            consumers.announce(client, name, queues, ttl_seconds=3 * settings.sweep_seconds)
        except redis.RedisError:  # the broker is away: the announcement lapses, as it should
            log.debug("could not announce the queues this worker consumes", exc_info=True)
        if _stop_sweeping.wait(settings.sweep_seconds):
            break
    with contextlib.suppress(redis.RedisError):
        consumers.withdraw(client, name)


_announcer: threading.Thread | None = None


@worker_ready.connect
def _start_sweeper(sender: Any, **_: object) -> None:
    global _announcer
    threading.Thread(target=_sweep_forever, name="sweeper", daemon=True).start()
    _announcer = threading.Thread(target=_announce_forever, args=(sender,), name="announcer",
                                  daemon=True)
    _announcer.start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    _stop_sweeping.set()
    if _announcer is not None:  # its last act withdraws this worker's announcement
        _announcer.join(timeout=5)


# What `celery -A workers.celery_app worker` runs: the worker process reads its environment.
celery = create_worker_app()
