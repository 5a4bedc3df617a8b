"""The job record and the job state machine.

A job is claimed by one worker at a time under a lease; `attempt` counts the claims and is the
fencing token every worker write carries, so a worker whose lease was taken over changes nothing.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import BigInteger, Index, String, text
from sqlalchemy.orm import Mapped, mapped_column

from app.db import Base, new_id, utcnow
from app.statemachine import StateMachine


class JobState(StrEnum):
    # Cycle's job states. imagejobs queues a job when it is made, and a retry's backoff is its
    # `schedule`, so no job is ever `new` or `scheduled`; clients may still filter on them.
    NEW = "new"
    QUEUED = "queued"
    SCHEDULED = "scheduled"
    RUNNING = "running"
    COMPLETED = "completed"
    ERROR = "error"
    EXPIRED = "expired"


J = JobState
JOB_STATES = StateMachine("job", {
    J.NEW: {J.QUEUED, J.SCHEDULED},
    J.SCHEDULED: {J.QUEUED, J.EXPIRED},
    J.QUEUED: {J.RUNNING, J.EXPIRED, J.ERROR},
    # Back to queued when the worker's lease lapsed and another may try.
    J.RUNNING: {J.COMPLETED, J.ERROR, J.QUEUED},
}, final={J.COMPLETED, J.ERROR, J.EXPIRED})
ACTIVE = (J.NEW.value, J.QUEUED.value, J.SCHEDULED.value, J.RUNNING.value)
_IS_ACTIVE = "state IN (" + ", ".join(f"'{state}'" for state in ACTIVE) + ")"
# The rows among which a job's hash is unique: an equal job still unfinished is the same job.
UNFINISHED_DUPLICATES = f"limit_duplicates AND {_IS_ACTIVE}"


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        # At most one unfinished job per hash: the database, not a race, decides duplicates.
        Index("uq_jobs_active_hash", "hash", unique=True,
              postgresql_where=text(UNFINISHED_DUPLICATES)),
        Index("ix_jobs_hub_created", "hub_id", "id"),
        Index("ix_jobs_unfinished", "state", postgresql_where=text(_IS_ACTIVE)),
    )

    id: Mapped[str] = mapped_column(String(24), primary_key=True, default=new_id)
    hub_id: Mapped[str] = mapped_column(String(24))
    action: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(128))
    caption: Mapped[str] = mapped_column(String(512))
    # The resource the job works on (an image or a source), for routing and for the UI.
    subject_id: Mapped[str | None] = mapped_column(String(24), index=True)
    # The job that waits for this one to end (a prune waits for its deletes), if any.
    parent_id: Mapped[str | None] = mapped_column(String(24), index=True)
    # The ended job whose work this one does again (`{"action": "retry"}`), if any.
    retry_of: Mapped[str | None] = mapped_column(String(24))
    input: Mapped[dict[str, Any]]
    # The spec's tasks[] with their steps, kept whole: they are read and written with the job.
    tasks: Mapped[list[dict[str, Any]]]
    hash: Mapped[str] = mapped_column(String(64))
    limit_duplicates: Mapped[bool] = mapped_column(default=True)
    creator_type: Mapped[str] = mapped_column(String(32))
    creator_id: Mapped[str] = mapped_column(String(24))
    state: Mapped[str] = mapped_column(String(16), default=JobState.NEW)
    state_changed: Mapped[datetime] = mapped_column(default=utcnow)
    error_message: Mapped[str | None]
    queued_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    schedule: Mapped[datetime] = mapped_column(default=utcnow)
    expires: Mapped[datetime]
    attempt: Mapped[int] = mapped_column(default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(256))
    lease_expires: Mapped[datetime | None]
    published_at: Mapped[datetime | None]
    # Who asked to cancel the job while it ran, and when: its worker stops at the next look, and
    # no later write of that attempt can complete it.
    cancel_requested_by: Mapped[str | None] = mapped_column(String(24))
    cancel_requested_at: Mapped[datetime | None]

    def move_to(self, state: JobState, error: str | None = None) -> None:
        self.state = JOB_STATES.check(self.state, state)
        self.state_changed = utcnow()
        if error is not None:
            self.error_message = error
        if state in JOB_STATES.final:
            self.completed_at = self.state_changed
            self.lease_owner = self.lease_expires = None


class EventCount(Base):
    """How often something happened to jobs that their rows do not keep (a retry, a lapsed lease,
    a message the sweeper sent, build-log bytes written), by action, for /metrics.

    Added to in the transaction that records the event, so a count is as durable as the event and
    outlives restarts and broker flushes; counts only grow.
    """

    __tablename__ = "job_event_counts"

    event: Mapped[str] = mapped_column(String(64), primary_key=True)
    action: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
