"""After the run: wait until every job is terminal, then judge the outcome from Postgres and the
engine. Nothing here trusts the API's answers or the workers' logs; the logs only explain."""

from __future__ import annotations

import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import docker
import docker.errors
from sqlalchemy import func, select

from app.db import transaction
from app.images.models import TRANSITIONAL, BuildLogChunk, Image, ImageState, engine_tag
from app.jobs.models import ACTIVE, Job, JobState
from tests.faults.load import HarnessImage

TERMINAL = (JobState.COMPLETED, JobState.ERROR, JobState.EXPIRED)


@dataclass
class Report:
    seed: int
    created: int = 0
    completed: int = 0
    errored: int = 0
    expired: int = 0
    lost: list[str] = field(default_factory=list)  # job ids still unfinished at the deadline
    twice: list[str] = field(default_factory=list)  # one line per effect done twice / wrong
    stuck: list[str] = field(default_factory=list)  # image ids in between with no live job
    crashes: list[str] = field(default_factory=list)
    settle_seconds: float | None = None  # last fault → every job terminal (None: never)
    errors: Counter = field(default_factory=Counter)
    attempts: Counter = field(default_factory=Counter)  # claims per job: >1 means a fault landed
    notes: list[str] = field(default_factory=list)
    # Builds longer than the broker's visibility timeout: one line of evidence each.
    long_builds: list[str] = field(default_factory=list)
    redelivered: int = 0  # broker messages (task ids) pool processes ran more than once
    redelivered_refused: int = 0  # long builds: their claimed message run again, claiming nothing

    @property
    def failed(self) -> bool:
        return bool(self.lost or self.twice or self.stuck)

    def summary(self) -> str:
        settle = f"{self.settle_seconds:.1f} s" if self.settle_seconds is not None else "never"
        return (f"jobs created {self.created}, completed {self.completed}, errored "
                f"{self.errored}, expired {self.expired}, lost {len(self.lost)}, done twice "
                f"{len(self.twice)}, stuck images {len(self.stuck)}, last fault → all terminal "
                f"{settle}")


def unfinished() -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(Job).where(Job.state.in_(ACTIVE)))


def wait_terminal(since: float, timeout: float) -> float | None:
    """Seconds from `since` (a monotonic moment) until no job is unfinished; None at timeout."""
    deadline = time.monotonic() + timeout
    while unfinished():
        if time.monotonic() > deadline:
            return None
        time.sleep(0.5)
    return time.monotonic() - since


def count_jobs(report: Report) -> None:
    with transaction() as session:
        states = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        report.created = sum(states.values())
        report.completed = states.get(JobState.COMPLETED, 0)
        report.errored = states.get(JobState.ERROR, 0)
        report.expired = states.get(JobState.EXPIRED, 0)
        report.attempts = Counter(dict(session.execute(
            select(Job.attempt, func.count()).group_by(Job.attempt)).all()))
        for job in session.scalars(select(Job).where(Job.state.in_(ACTIVE)).order_by(Job.id)):
            report.lost.append(f"job {job.id} {job.action} on {job.subject_id}: still "
                               f"{job.state} (attempt {job.attempt}, lease {job.lease_owner}, "
                               f"published {job.published_at})")
        for message in session.scalars(select(Job.error_message).where(
                Job.state.in_((JobState.ERROR, JobState.EXPIRED)))):
            report.errors[(message or "(no message)")[:80].replace("\n", " ")] += 1


def check_stuck(report: Report) -> None:
    with transaction() as session:
        for image in session.scalars(select(Image).where(Image.state.in_(list(TRANSITIONAL)))
                                     .order_by(Image.id)):
            active = session.scalar(select(func.count()).select_from(Job).where(
                Job.subject_id == image.id, Job.state.in_(ACTIVE)))
            if not active:
                report.stuck.append(f"image {image.id} stuck in {image.state} since "
                                    f"{image.state_changed:%H:%M:%S}; error "
                                    f"{(image.state_error or '-')[:120]!r}")


def check_effects(report: Report, images: list[HarnessImage]) -> None:
    """Imports done more often than asked, deletes done twice, the engine disagreeing with rows."""
    requested = {i.id: i.import_requests + i.uncertain_imports for i in images}
    with transaction() as session:
        imports = Counter(session.scalars(select(Job.subject_id).where(
            Job.action == "image.import", Job.state == JobState.COMPLETED)))
        for image_id, done in sorted(imports.items()):
            if done > requested.get(image_id, 0):
                report.twice.append(f"image {image_id}: {done} completed imports for "
                                    f"{requested.get(image_id, 0)} request(s)")
        removed = Counter()
        for job in session.scalars(select(Job).where(Job.action == "image.delete",
                                                     Job.state == JobState.COMPLETED)):
            if ((job.tasks[0].get("output") or {}).get("result")) == "removed":
                removed[job.subject_id] += 1
        for image_id, done in sorted(removed.items()):
            if done > 1:
                report.twice.append(f"image {image_id}: removed by {done} delete jobs")
        rows = list(session.scalars(select(Image).order_by(Image.id)))
    _compare_engine(report, rows)


def _compare_engine(report: Report, rows: list[Image]) -> None:
    client = docker.from_env()
    try:
        for image in rows:
            tag = ":".join(engine_tag(image.id))
            held = _engine_id(client, tag)
            if image.state == ImageState.LIVE and held != image.backend_file_id:
                report.twice.append(f"image {image.id}: live with backend {image.backend_file_id}"
                                    f" but the engine holds {held or 'nothing'} for {tag}")
            elif image.state == ImageState.DELETED and held:
                report.twice.append(f"image {image.id}: deleted, but the engine still holds "
                                    f"{tag} ({held[:19]})")
            elif image.state == ImageState.NEW and held:
                report.notes.append(f"image {image.id}: new (never live), yet the engine holds "
                                    f"{tag}: a tag left by an attempt that did not finish")
    finally:
        client.close()


def _engine_id(client: docker.DockerClient, reference: str) -> str | None:
    try:
        return client.api.inspect_image(reference)["Id"]
    except docker.errors.ImageNotFound:
        return None


_LINE = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): \w+/([^]]+)\] (.*)$")
_TASK_END = re.compile(r"Task \S+\[([0-9a-f-]+)\] (?:succeeded|raised|failed|retry)")
_JOB_EVENT = re.compile(r"job ([0-9a-f]{24}): (claimed|not claimable)")


def _deliveries(logs: list[Path]) -> dict[str, list[tuple[str, str]]]:
    """Per job id, each delivery a pool process ran: (broker message id, claimed | not claimable).

    A pool process runs one task at a time, so the job it names belongs to the message whose end
    it logs next; a process killed before that leaves the message id unknown ('?').
    """
    found: dict[str, list[tuple[str, str]]] = {}
    for path in logs:
        running: dict[str, tuple[str, str]] = {}  # pool process -> (job id, event)
        for line in path.read_text(errors="replace").splitlines():
            match = _LINE.match(line)
            if not match:
                continue
            _, process, message = match.groups()
            if event := _JOB_EVENT.search(message):
                if process in running:
                    job_id, what = running[process]
                    found.setdefault(job_id, []).append(("?", what))
                running[process] = (event.group(1), event.group(2))
            elif (end := _TASK_END.search(message)) and process in running:
                job_id, what = running.pop(process)
                found.setdefault(job_id, []).append((end.group(1), what))
        for job_id, what in running.values():
            found.setdefault(job_id, []).append(("?", what))
    return found


def check_long_builds(report: Report, images: list[HarnessImage], logs: list[Path],
                      visibility_timeout: float) -> None:
    """A build longer than the visibility timeout has its message handed out again while it
    runs; that second delivery of the same message must claim nothing. Evidence from the
    worker logs: per job, its claims and the deliveries of an already claimed message that were
    refused; a claim the logs show beyond the job's attempts is an effect done twice."""
    deliveries = _deliveries(logs)
    for runs in deliveries.values():
        ids = Counter(message for message, _ in runs if message != "?")
        report.redelivered += sum(1 for count in ids.values() if count > 1)
    long_ids = {i.id: i.sleep for i in images if i.sleep > visibility_timeout}
    with transaction() as session:
        jobs = list(session.scalars(select(Job).where(
            Job.action == "image.import", Job.subject_id.in_(list(long_ids))).order_by(Job.id)))
        headers = Counter(image_id for image_id, text in session.execute(
            select(BuildLogChunk.image_id, BuildLogChunk.text)
            .where(BuildLogChunk.image_id.in_(list(long_ids))))
            for _ in range(text.count("[imagejobs: build attempt ")))
    for job in jobs:
        runs = deliveries.get(job.id, [])
        claims = sum(1 for _, what in runs if what == "claimed")
        claimed_messages = {message for message, what in runs if what == "claimed"} - {"?"}
        again = sum(1 for message, what in runs
                    if what == "not claimable" and message in claimed_messages)
        report.redelivered_refused += again
        report.long_builds.append(
            f"job {job.id} (build sleeping {long_ids[job.subject_id]} s, image "
            f"{job.subject_id}): {job.state}, attempt {job.attempt}, claims in logs {claims}, "
            f"its claimed message delivered again and refused {again}, other refused "
            f"deliveries {len(runs) - claims - again}, build log headers "
            f"{headers.get(job.subject_id, 0)}")
        if claims > job.attempt:
            report.twice.append(f"job {job.id}: {claims} claims in the worker logs for "
                                f"{job.attempt} attempt(s)")


def grep_logs(logs: list[Path], needle: str, limit: int = 12) -> list[str]:
    """Lines of the worker logs naming `needle` (a job or image id), first `limit` of them."""
    found = []
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if needle in line:
                found.append(f"{path.name}: {line.strip()[:220]}")
    return found[:limit] + ([f"... {len(found) - limit} more"] if len(found) > limit else [])


def scan_crashes(logs: list[Path]) -> list[str]:
    """Tracebacks and unexpected errors the workers logged (a fault may explain some)."""
    found = []
    for path in logs:
        for line in path.read_text(errors="replace").splitlines():
            if "unexpected error" in line or "Unrecoverable error" in line or "CRITICAL" in line:
                found.append(f"{path.name}: {line.strip()[:220]}")
    return found
