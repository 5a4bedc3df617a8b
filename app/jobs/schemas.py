"""The body of `POST /v1/jobs/{id}/tasks`."""

from __future__ import annotations

from typing import Literal

from app.validation import Strict


class JobTaskRequest(Strict):
    """`retry` queues the work of a job that ended in `error` or `expired` again, as a new job.
    `cancel` ends a queued job at once, or stops a running import (a pull, a build, an upload's
    load) within a few seconds, the job then ending in `error`; a running delete or prune cannot
    be cancelled."""

    action: Literal["retry", "cancel"]
