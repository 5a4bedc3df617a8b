"""Publishing jobs to the broker, and the Celery settings both sides share.

The API only ever sends task names; it never imports the worker's task modules.
"""

from __future__ import annotations

import logging
from functools import cache

from celery import Celery

from app.config import Settings, get_settings
from app.jobs.actions import Action

log = logging.getLogger("imagejobs.queueing")

PULL_QUEUE = "imagejobs-pull"
BUILD_QUEUE = "imagejobs-build"
MAINTENANCE_QUEUE = "imagejobs-maintenance"
SHARED_QUEUES = (PULL_QUEUE, BUILD_QUEUE, MAINTENANCE_QUEUE)


def node_queue(node_id: str) -> str:
    """The queue only the worker(s) of one node consume: work on images that node holds."""
    return f"imagejobs-node-{node_id}"


def make_celery(settings: Settings) -> Celery:
    """A Celery app with every option explicit: Postgres, not the broker, holds the truth."""
    celery = Celery("imagejobs", broker=settings.redis_url, set_as_current=False)
    celery.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # Acknowledge after the work, and hand back a message whose pool child died; a task
        # delivered twice is harmless because claiming a job is a conditional update.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # A broker blip must not cost every running job an attempt: the work goes on, and the
        # message handed out again later finds its job claimed (or done) and does nothing.
        worker_cancel_long_running_tasks_on_connection_loss=False,
        # With SIGTERM read as Celery's cold shutdown (see `imagejobs worker`), a stopping worker
        # waits this long for running tasks, then stops them instead of waiting for ever.
        worker_soft_shutdown_timeout=settings.shutdown_seconds,
        task_default_queue=MAINTENANCE_QUEUE,
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=3,
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_seconds,
                                  **_restore_cadence(settings.visibility_timeout_seconds),
                                  "socket_timeout": 5, "socket_connect_timeout": 3},
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0,
                                   "interval_step": 0.2, "interval_max": 0.5},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
    )
    return celery


def _restore_cadence(visibility_timeout: int) -> dict[str, int]:
    """How often a worker looks for messages past their visibility timeout.

    Kombu looks every interval x throttle seconds (10 x 10 by default, fitting the default hour);
    a short timeout gets a sweep to match, about a quarter of it.
    """
    every = max(1, min(100, visibility_timeout // 4))
    return {"unacked_restore_interval": min(10, every),
            "unacked_restore_throttle": max(1, every // 10)}


@cache
def producer() -> Celery:
    return make_celery(get_settings())


def publish(action: str, job_id: str, queue: str) -> bool:
    """Send the job's message; False if the broker could not take it (the sweeper will retry)."""
    try:
        producer().send_task(Action(action).task_name, args=[job_id], queue=queue, retry=True)
    except Exception as exc:  # the broker is down: the job row is safe, publishing is retried
        log.warning("could not publish job %s to %s: %s", job_id, queue, type(exc).__name__)
        return False
    return True
