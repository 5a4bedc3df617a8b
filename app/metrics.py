"""GET /metrics: what operators scale and alert on, in the Prometheus text format.

The job figures are read from Postgres at each scrape, in three aggregate queries, so every API
process answers the same and a flushed broker changes none of them. Durations come from the
finished jobs' own timestamps (a finished job never changes, so the cumulative counts only grow
while jobs are kept; imagejobs deletes none); events the rows do not keep are the durable counts
of `job_event_counts`. Workers consuming each queue are their announcements in Redis.

Request latency is the one figure each process keeps itself. Under gunicorn its worker processes
write it to prometheus_client's multiprocess files (PROMETHEUS_MULTIPROC_DIR, a fresh folder per
start, see app/gunicorn_hooks.py), and whichever process answers a scrape merges them all.

Nothing here names a hub, an image or anything a user chose: queues, actions and routes only.
"""

from __future__ import annotations

import logging
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from functools import cache

import redis
from flask import Blueprint, Flask, Response, g, request
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString
from sqlalchemy import text

from app.config import get_settings
from app.db import new_session
from app.jobs import consumers, counters
from app.jobs.models import ACTIVE, JOB_STATES
from app.jobs.queueing import SHARED_QUEUES

log = logging.getLogger("imagejobs.metrics")
blueprint = Blueprint("metrics", __name__)

REQUEST_SECONDS = Histogram(
    "imagejobs_http_request_duration_seconds",
    "Time the API took to answer a request, by method, route (the URL rule) and status.",
    ["method", "route", "status"], registry=None,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
# Anything else a client sends as a method is counted as `other`: labels must stay few.
_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}

DURATION_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
QUEUED_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600)
_FINAL = "(" + ", ".join(f"'{state}'" for state in sorted(JOB_STATES.final)) + ")"


def _histogram_columns(seconds: str, buckets: tuple[float, ...]) -> str:
    """A histogram's cumulative bucket counts, count and sum, as aggregate columns."""
    return ", ".join([*(f"count(*) FILTER (WHERE {seconds} <= {le})" for le in buckets),
                      f"count({seconds})", f"coalesce(sum({seconds}), 0)"])


# One pass over the jobs: every figure by queue, action and state. A job's run is from its first
# claim to its end; its wait, from being queued to its first claim (or to its end, if it expired
# unclaimed). Clocks of different hosts may disagree a little: a negative time counts as 0.
# `OFFSET 0` keeps Postgres from inlining the inner query, which would compute a job's times
# again in each bucket's filter (twice as slow).
_JOBS = text(f"""
    SELECT queue, action, state, count(*), coalesce(sum(attempt), 0),
           {_histogram_columns("run", DURATION_BUCKETS)},
           {_histogram_columns("wait", QUEUED_BUCKETS)}
    FROM (SELECT queue, action, state, attempt,
                 CASE WHEN state IN {_FINAL} AND started_at IS NOT NULL
                      THEN greatest(0, extract(epoch FROM completed_at - started_at)::float8) END AS run,
                 CASE WHEN state IN {_FINAL} AND queued_at IS NOT NULL
                      THEN greatest(0, extract(epoch FROM coalesce(started_at, completed_at)
                                                          - queued_at)::float8) END AS wait
          FROM jobs OFFSET 0) AS job
    GROUP BY queue, action, state
""")

# Jobs a worker may claim now, read through the index of unfinished jobs. A job waits since it
# became due or was queued (again), whichever came last.
_READY = text("""
    SELECT queue, count(*), extract(epoch FROM now() - min(greatest(schedule, state_changed)))
    FROM jobs WHERE state = 'queued' AND schedule <= now()
    GROUP BY queue
""")

_EVENTS = text("SELECT event, action, count FROM job_event_counts")


class JobsCollector:
    """The figures of Postgres and the broker, read when Prometheus scrapes."""

    def collect(self) -> Iterator[Metric]:
        with new_session() as session, session.begin():
            jobs = session.execute(_JOBS).all()
            ready = session.execute(_READY).all()
            events = session.execute(_EVENTS).all()
        consuming = _consumers()
        yield from _job_families(jobs)
        queues = {*SHARED_QUEUES, *(row[0] for row in jobs if row[2] in _UNFINISHED),
                  *(consuming or {})}
        yield from _queue_families(queues, ready, consuming)
        yield from _event_families(events)


_UNFINISHED = set(ACTIVE)


def _job_families(rows: list) -> Iterator[Metric]:
    states = GaugeMetricFamily("imagejobs_jobs", "Jobs by queue, action and state.",
                               labels=["queue", "action", "state"])
    attempts: dict[str, int] = defaultdict(int)
    width_run, width_wait = len(DURATION_BUCKETS) + 2, len(QUEUED_BUCKETS) + 2
    run: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * width_run)
    wait: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0] * width_wait)
    for queue, action, state, number, tried, *figures in rows:
        states.add_metric([queue, action, state], number)
        attempts[action] += tried
        if state not in _UNFINISHED:  # the queue is left out: a node's deletes add up as one
            _add(run[action, state], figures[:width_run])
            _add(wait[action, state], figures[width_run:])
    yield states
    yield _by_action("imagejobs_job_attempts", "Claims of jobs by workers (first attempts "
                     "included), by action.", attempts)
    yield _histogram("imagejobs_job_duration_seconds", "Time from a finished job's first claim to "
                     "its end, by action and outcome.", DURATION_BUCKETS, run)
    yield _histogram("imagejobs_job_queued_seconds", "Time a finished job waited from being "
                     "queued to its first claim (to its end if never claimed), by action and "
                     "outcome.", QUEUED_BUCKETS, wait)


def _add(total: list[float], figures: list) -> None:
    for index, figure in enumerate(figures):
        total[index] += float(figure)


def _histogram(name: str, documentation: str, buckets: tuple[float, ...],
               figures: dict[tuple[str, str], list[float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, documentation, labels=["action", "outcome"])
    for (action, outcome), values in sorted(figures.items()):
        *counts, number, seconds = values
        bounds = [*zip(map(floatToGoString, buckets), counts, strict=True), ("+Inf", number)]
        family.add_metric([action, outcome], bounds, seconds)
    return family


def _queue_families(queues: set[str], ready: list, consuming: dict[str, int] | None
                    ) -> Iterator[Metric]:
    waiting = {queue: (number, float(age)) for queue, number, age in ready}
    count = GaugeMetricFamily("imagejobs_queue_ready_jobs", "Queued jobs a worker may claim now "
                              "(due, not waiting for a retry's backoff), by queue.", labels=["queue"])
    oldest = GaugeMetricFamily("imagejobs_queue_oldest_age_seconds", "How long the longest-waiting "
                               "claimable job of the queue has waited (0 when none waits).",
                               labels=["queue"])
    for queue in sorted(queues | waiting.keys()):
        number, age = waiting.get(queue, (0, 0.0))
        count.add_metric([queue], number)
        oldest.add_metric([queue], max(age, 0.0))
    yield count
    yield oldest
    if consuming is None:  # the broker is away: no figure rather than a false zero
        return
    workers = GaugeMetricFamily("imagejobs_queue_consumers", "Worker processes consuming the "
                                "queue, as they announced it within the last few sweeps.",
                                labels=["queue"])
    for queue in sorted(queues | waiting.keys()):
        workers.add_metric([queue], consuming.get(queue, 0))
    yield workers


def _event_families(rows: list) -> Iterator[Metric]:
    counts: dict[str, dict[str, int]] = defaultdict(dict)  # by event, then action
    for event, action, number in rows:
        counts[event][action] = number
    yield _by_action("imagejobs_job_retries", "Attempts that met a temporary fault and queued "
                     "their job again after a backoff, by action.", counts[counters.RETRY])
    lapsed = CounterMetricFamily("imagejobs_leases_lapsed", "Running jobs whose worker stopped "
                                 "renewing its lease, by action and what the sweeper did: "
                                 "requeued, or abandoned (ended in error, out of attempts).",
                                 labels=["action", "outcome"])
    for event, outcome in ((counters.LEASE_REQUEUED, "requeued"),
                           (counters.LEASE_ABANDONED, "abandoned")):
        for action, number in sorted(counts[event].items()):
            lapsed.add_metric([action, outcome], number)
    yield lapsed
    yield _by_action("imagejobs_sweeper_published", "Job messages the sweeper sent: lost by the "
                     "broker, never sent, or after a requeue; by action.",
                     counts[counters.SWEEPER_PUBLISHED])
    log_bytes = CounterMetricFamily("imagejobs_build_log_bytes", "Bytes of build output written "
                                    "to build logs (UTF-8, as stored).")
    log_bytes.add_metric([], sum(counts[counters.BUILD_LOG_BYTES].values()))
    yield log_bytes


def _by_action(name: str, documentation: str, numbers: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, documentation, labels=["action"])
    for action, number in sorted(numbers.items()):
        family.add_metric([action], number)
    return family


@cache
def _broker() -> redis.Redis:
    return redis.Redis.from_url(get_settings().redis_url, socket_timeout=2,
                                socket_connect_timeout=2)


def _consumers() -> dict[str, int] | None:
    try:
        return dict(consumers.count(_broker()))
    except redis.RedisError as exc:
        log.warning("metrics: cannot read workers' announcements from the broker (%s)",
                    type(exc).__name__)
        return None


@blueprint.get("/metrics")
def metrics() -> Response:
    """Unauthenticated, like /v1/health: it holds nothing of any hub."""
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)
    else:  # one process (the Flask development server, tests): its own figures are all there are
        registry.register(REQUEST_SECONDS)
    registry.register(JobsCollector())
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)


def _started() -> None:
    g.metrics_started = time.perf_counter()


def not_timed() -> None:
    """Leave this request out of the latency figures: it waited for a change on purpose (a long
    poll), so its time says how long the job took to change, not how fast the API answers."""
    g.pop("metrics_started", None)


def _answered(response: Response) -> Response:
    started = g.pop("metrics_started", None)
    if started is not None:
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        method = request.method if request.method in _METHODS else "other"
        REQUEST_SECONDS.labels(method, route, str(response.status_code)).observe(
            time.perf_counter() - started)
    return response


def register(app: Flask) -> None:
    app.before_request(_started)
    app.after_request(_answered)
    app.register_blueprint(blueprint)
