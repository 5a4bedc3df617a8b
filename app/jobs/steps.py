"""A job task's steps: planned whole when the job is made, then started and completed in order.

Cycle's clients read a job's progress from its steps, taking every step to be listed from the
start and a step's zero `completed` time to mean it is not done. So the API lists the plan, with
zero times, when it makes the job; a worker starts each planned step as it gets there, which
completes the one before; a failed attempt leaves the step it failed on with a zero `completed`
time; and a new attempt starts the plan over.

Steps are documents in the job's `tasks` JSON: these functions take a task's steps and return
them changed, never touching the list they were given, so they need no database.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.db import ZERO_TIME

StepDocument = dict[str, Any]


@dataclass(frozen=True)
class Step:
    """One step a kind of job takes: its caption (how a worker names it when it starts it) and
    the description shown until the worker says more."""

    caption: str
    description: str

    def planned(self) -> StepDocument:
        return {"caption": self.caption, "description": self.description,
                "started": ZERO_TIME, "completed": ZERO_TIME}


def plan(steps: Sequence[Step]) -> list[StepDocument]:
    """The steps of a new job: all of them, none started."""
    return [step.planned() for step in steps]


def current(steps: Sequence[StepDocument]) -> int | None:
    """The index of the step being worked on (started, not completed), if any."""
    for index in range(len(steps) - 1, -1, -1):
        if steps[index]["started"] != ZERO_TIME:
            return index if steps[index]["completed"] == ZERO_TIME else None
    return None


def started(steps: Sequence[StepDocument], caption: str, description: str, at: str
            ) -> list[StepDocument]:
    """Complete the step being worked on and start the first unstarted step named `caption`,
    both `at`; a caption the plan lacks (a job made before steps were planned) is added."""
    steps = completed(steps, at)
    for index, step in enumerate(steps):
        if step["caption"] == caption and step["started"] == ZERO_TIME:
            steps[index] = {**step, "description": description, "started": at}
            return steps
    return [*steps, {"caption": caption, "description": description, "started": at,
                     "completed": ZERO_TIME}]


def completed(steps: Sequence[StepDocument], at: str) -> list[StepDocument]:
    """Complete the step being worked on, `at`; its progress, where its total is known, is done."""
    steps = list(steps)
    index = current(steps)
    if index is not None:
        step = {**steps[index], "completed": at}
        progress = step.get("progress")
        if progress and progress["total"]:
            step["progress"] = {**progress, "done": progress["total"]}
        steps[index] = step
    return steps


def with_progress(steps: Sequence[StepDocument], done: int, total: int, unit: str
                  ) -> list[StepDocument]:
    """Note how far the step being worked on is; without one, nothing changes."""
    steps = list(steps)
    index = current(steps)
    if index is not None:
        steps[index] = {**steps[index], "progress": {"done": done, "total": total, "unit": unit}}
    return steps


def taken(steps: Sequence[StepDocument]) -> list[StepDocument]:
    """The steps a job that ends in success took: a planned step it never started (it found its
    work already done, or the work needed no such step) is left out, not shown as done."""
    return [step for step in steps if step["started"] != ZERO_TIME]


def restarted(steps: Sequence[StepDocument]) -> list[StepDocument]:
    """The plan again for a new attempt: every step not started, its progress gone. The
    description stays the last attempt's until the new one starts the step."""
    return [{key: value for key, value in step.items() if key != "progress"}
            | {"started": ZERO_TIME, "completed": ZERO_TIME} for step in steps]
