"""The body of `POST /v1/jobs/{id}/tasks`."""

from __future__ import annotations

from typing import Literal

from app.validation import Strict


class JobTaskRequest(Strict):
    # retry: queue an ended job's work again; cancel: end a queued job before any worker runs it.
    action: Literal["retry", "cancel"]
