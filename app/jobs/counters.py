"""Durable event counts (`job_event_counts`), added to inside the transaction of the event."""

from __future__ import annotations

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from app.jobs.models import EventCount

RETRY = "retry"  # a temporary fault queued the job again
LEASE_REQUEUED = "lease_requeued"  # the sweeper took back a lapsed lease and queued the job again
LEASE_ABANDONED = "lease_abandoned"  # ... and gave the job up: its last attempt lapsed too
SWEEPER_PUBLISHED = "sweeper_published"  # the sweeper sent a job's message (lost, or never sent)
BUILD_LOG_BYTES = "build_log_bytes"  # bytes appended to build logs


def add(session: Session, event: str, action: str, amount: int = 1) -> None:
    """Count `amount` more of `event`; it commits, or is undone, with the caller's transaction.

    The row's lock is held to the end of that transaction, so callers add last, when their
    other locks are taken: a count never waits while holding a job others wait for.
    """
    table = EventCount.__table__
    statement = insert(table).values(event=event, action=action, count=amount)
    session.execute(statement.on_conflict_do_update(
        index_elements=[table.c.event, table.c.action],
        set_={"count": table.c.count + statement.excluded.count}))
