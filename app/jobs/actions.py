"""Every kind of job, by the action name the API shows (`job.action`) and the broker carries."""

from __future__ import annotations

from enum import StrEnum


class Action(StrEnum):
    IMAGE_IMPORT = "image.import"
    IMAGE_DELETE = "image.delete"
    IMAGES_PRUNE = "images.prune"
    SOURCE_DELETE = "source.delete"

    @property
    def task_name(self) -> str:
        """The Celery task that runs jobs of this action."""
        return f"imagejobs.{self.value}"
