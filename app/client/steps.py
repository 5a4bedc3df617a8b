"""A job's planned steps as a person follows them: which is done, which runs and how far it is.

Pure functions of the API's job document (`tasks[0].steps`), so that every way of showing a job
reads it alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"
ENDED = frozenset({"completed", "error", "expired"})


@dataclass(frozen=True)
class StepView:
    caption: str
    description: str
    status: str  # "planned", "running", "done" or "failed"
    started: datetime | None
    completed: datetime | None
    done: int | None = None
    total: int | None = None
    unit: str | None = None

    def seconds(self, now: datetime) -> float | None:
        """How long it took, or has taken so far; None before it started."""
        if self.started is None:
            return None
        return max(0.0, ((self.completed or now) - self.started).total_seconds())

    def fraction(self) -> float | None:
        """How far it is, 0 to 1, when that is known."""
        if self.status == "done":
            return 1.0
        if self.total and self.done is not None:
            return min(1.0, self.done / self.total)
        return None

    def amount(self) -> str:
        """`12.3 MB of 45.6 MB`, `3 of 7 steps`, or nothing when the step tells no progress."""
        if self.total is None or self.done is None:
            return ""
        if self.unit == "bytes":
            return f"{human_bytes(self.done)} of {human_bytes(self.total)}"
        return f"{self.done} of {self.total} {self.unit or ''}".rstrip()


def job_state(job: dict[str, Any]) -> str:
    return str(job.get("state", {}).get("current", ""))


def job_error(job: dict[str, Any]) -> str:
    """The message of the job's error, or of its task's."""
    for holder in (job.get("state") or {}, *(job.get("tasks") or [])):
        error = holder.get("error") or {}
        if error.get("message"):
            return str(error["message"])
    return ""


def step_views(job: dict[str, Any]) -> list[StepView]:
    """The steps of the job's first task; a step started and not completed in a job that ended
    is the one that failed."""
    tasks = job.get("tasks") or []
    ended = job_state(job) in ENDED
    views = []
    for step in (tasks[0].get("steps") or []) if tasks else []:
        started, completed = _time(step.get("started")), _time(step.get("completed"))
        if completed is not None:
            status = "done"
        elif started is None:
            status = "planned"
        else:
            status = "failed" if ended else "running"
        progress = step.get("progress") or {}
        views.append(StepView(
            caption=str(step.get("caption", "")), description=str(step.get("description", "")),
            status=status, started=started, completed=completed, done=progress.get("done"),
            total=progress.get("total"), unit=progress.get("unit")))
    return views


def human_bytes(count: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def seconds_text(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(seconds), 60)
    return f"{minutes} min {rest:02d} s"


def now() -> datetime:
    return datetime.now(UTC)


def _time(value: Any) -> datetime | None:
    if not value or value == ZERO_TIME:
        return None
    try:
        return datetime.fromisoformat(str(value))
    except ValueError:
        return None
