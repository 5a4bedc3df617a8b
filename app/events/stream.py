"""A hub's events in order: numbering committed events, reading them back, and forgetting old ones.

The triggers of migration 0008 record each event in the transaction of its change, with no
number yet. `sequence` numbers the events that committed since it last ran, hub by hub, one
sequencer at a time; a reader that has seen number N of its hub has seen every event numbered
before it, so `Last-Event-ID` resumes a stream without losing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from app.db import transaction, utcnow
from app.events.models import HubEvent, HubEventCounter

_SEQUENCER_LOCK = 712_004_118  # any constant, the same in every process
_BATCH = 5000
# How long events are kept for a follower to resume from.
RETENTION = timedelta(days=1)

# One statement numbers a batch: the oldest unnumbered events, each hub's following its last
# number, which grows by as many.
_NUMBER = text("""
    WITH pending AS (
        SELECT id, hub_id, row_number() OVER (PARTITION BY hub_id ORDER BY id) AS ord
        FROM hub_events WHERE seq IS NULL ORDER BY id LIMIT :batch),
    added AS (SELECT hub_id, max(ord) AS n FROM pending GROUP BY hub_id),
    counted AS (
        INSERT INTO hub_event_counters AS c (hub_id, last) SELECT hub_id, n FROM added
        ON CONFLICT (hub_id) DO UPDATE SET last = c.last + EXCLUDED.last
        RETURNING c.hub_id, c.last)
    UPDATE hub_events AS e SET seq = counted.last - added.n + pending.ord
    FROM pending JOIN added USING (hub_id) JOIN counted USING (hub_id)
    WHERE e.id = pending.id
""")


def sequence() -> int:
    """Number every committed event still unnumbered; how many.

    The lock makes sequencers take turns, and each statement after it sees what committed before
    it was taken: an event committed later is numbered by a later turn, after these.
    """
    numbered = 0
    while True:
        with transaction() as session:
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _SEQUENCER_LOCK})
            count = session.execute(_NUMBER, {"batch": _BATCH}).rowcount
        numbered += count
        if count < _BATCH:
            return numbered


def last_number(session: Session, hub_id: str) -> int:
    """The number of the hub's latest event (0 before its first)."""
    return session.scalar(select(HubEventCounter.last).where(HubEventCounter.hub_id == hub_id)
                          ) or 0


def after(session: Session, hub_id: str, number: int, limit: int = 500) -> Sequence[HubEvent]:
    """The hub's events numbered after `number`, oldest first."""
    return session.scalars(select(HubEvent).where(HubEvent.hub_id == hub_id, HubEvent.seq > number)
                           .order_by(HubEvent.seq).limit(limit)).all()


def message(event: HubEvent) -> dict[str, Any]:
    """An event as Cycle's notification pipeline sends it."""
    return {"topic": event.topic, "object": event.object, "context": {"hub_id": event.hub_id}}


def forget_old() -> int:
    """Delete the events older than the retention; how many."""
    with transaction() as session:
        return session.execute(delete(HubEvent).where(HubEvent.created < utcnow() - RETENTION)
                               ).rowcount
