"""The workers' Celery app: shared settings, the task modules, and the sweeper thread."""

from __future__ import annotations

import logging
import threading

from celery.signals import worker_ready, worker_shutdown

from app.config import check_service, get_settings
from app.jobs.engine import sweep
from app.jobs.queueing import make_celery
from workers.uploads import sweep_uploads

log = logging.getLogger("imagejobs.sweeper")

check_service(get_settings(), worker=True)
celery = make_celery(get_settings())
celery.conf.include = ["workers.tasks.imports", "workers.tasks.deletes", "workers.tasks.prunes",
                       "workers.tasks.health"]
celery.set_default()

_stop_sweeping = threading.Event()


def _sweep_forever() -> None:
    interval = get_settings().sweep_seconds
    while not _stop_sweeping.wait(interval):
        try:
            report = sweep()
            if report.expired or report.requeued or report.abandoned or report.published:
                log.info("sweep: %s", report)
            sweep_uploads()
        except Exception:  # the database or broker is away; the next sweep tries again
            log.warning("sweep failed", exc_info=True)


@worker_ready.connect
def _start_sweeper(**_: object) -> None:
    threading.Thread(target=_sweep_forever, name="sweeper", daemon=True).start()


@worker_shutdown.connect
def _stop_sweeper(**_: object) -> None:
    _stop_sweeping.set()
