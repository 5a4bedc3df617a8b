"""Every model, imported together so that foreign keys between domains resolve."""

from app.events.models import HubEvent, HubEventCounter
from app.hubs.models import ApiKey, Capability, Hub
from app.idempotency.models import IdempotencyKey
from app.images.models import BuildLog, Image, ImageState
from app.jobs.models import Job, JobState
from app.sources.models import ImageSource, SourceState

__all__ = ["ApiKey", "BuildLog", "Capability", "Hub", "HubEvent", "HubEventCounter",
           "IdempotencyKey", "Image", "ImageSource", "ImageState", "Job", "JobState",
           "SourceState"]
