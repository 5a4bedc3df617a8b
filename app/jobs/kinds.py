"""What each kind of job holds, what becomes of it when the job does not succeed, and how its
work is asked for again.

Job execution (app/jobs/execution.py) knows jobs only. Each domain registers its job kinds here
(app/images/lifecycle.py, app/sources/lifecycle.py), and the engine calls them back: to put
what a job worked on back at rest when the job ends in error, expires, or is queued again, and
to finish a job whose child jobs have all ended. A worker imports them with its task modules.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy.orm import Session

from app.jobs.actions import Action
from app.jobs.models import Job

# (session, job, message): undo what the job's work put its subject in, the message shown.
Release = Callable[[Session, Job, str], None]
# (session, parent job, outcome by subject id): every child ended; end the parent.
ChildrenEnded = Callable[[Session, Job, dict[str, str]], None]
# (session, ended job, creator): queue the same work again through the domain's own checks, as
# the call that made the job would, so a subject gone or changed meanwhile is refused as there.
Again = Callable[[Session, Job, dict[str, str]], Job]


def _nothing(session: Session, job: Job, message: str) -> None:
    """A job that puts nothing in an in-between state has nothing to undo."""


@dataclass(frozen=True)
class JobKind:
    action: Action
    release: Release = _nothing
    children_ended: ChildrenEnded | None = None
    # The capability of the call that makes such jobs, which retrying or cancelling one needs.
    capability: str | None = None
    again: Again | None = None
    # Whether a running job of this kind may be cancelled (its worker stops, the job ends in
    # error, its subject put back at rest), and if not, why, as the refusal says it.
    cancellable_while_running: bool = False
    running_cancel_refused: str = ("it is short, and stopping it half-way would leave its work "
                                   "worse off than letting it end")


_KINDS: dict[str, JobKind] = {}


def register(kind: JobKind) -> JobKind:
    _KINDS[kind.action] = kind
    return kind


def of(action: str) -> JobKind:
    try:
        return _KINDS[action]
    except KeyError:
        raise LookupError(f"no job kind is registered for {action!r}: the process must import "
                          "the domain's lifecycle module (see app/jobs/kinds.py)") from None
