"""The one fault type of the workers: why an attempt at a job failed, for the person who asked.

Every worker module raises a `JobFailed` (or a subclass naming where it arose); the runner
(workers/runner.py) ends the attempt with its message, and tries the job again later when the
fault is `transient`.
"""

from __future__ import annotations


class JobFailed(Exception):
    """This attempt failed; `message` says why, in words for the person who asked.

    A `transient` fault (a registry or engine away, a timeout) is tried again later, a bounded
    number of times; any other is final.
    """

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.message = message
        self.transient = transient
