"""Upload tars no import will load any more, removed by the sweeper.

An accepted upload waits in IMAGEJOBS_UPLOAD_DIR until a worker loads it; the import and the
image's delete remove it. What a crash, an expired job or an API that died mid-upload leaves is
found here: the tar of an image with no import queued or running, and a `.part` nothing was
written to for as long as an upload token lives (its upload can no longer be accepted).
Several databases may share the folder, so a file of an image this database does not know is
removed only once older than any job can live.
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path

from sqlalchemy import select

from app.config import get_settings
from app.db import transaction
from app.images.models import Image
from app.jobs.actions import Action
from app.jobs.models import Job, JobState

log = logging.getLogger("imagejobs.sweeper")

# `<image id>.tar`, and `<image id>.tar.<pid>.<thread>.part` while the API receives it.
_UPLOAD_NAME = re.compile(r"(?P<image_id>[0-9a-f]{24})\.tar(?P<part>\.\d+\.\d+\.part)?")
_UNFINISHED = (JobState.NEW, JobState.SCHEDULED, JobState.QUEUED, JobState.RUNNING)
# Clocks of the hosts sharing the folder may differ a little.
_MARGIN_SECONDS = 60


def sweep_uploads() -> int:
    """Remove the upload files no import needs; how many were removed."""
    settings = get_settings()
    found = _upload_files(Path(settings.upload_dir))
    if not found:
        return 0
    now = time.time()
    removed = 0
    with transaction() as session:
        wanted = {image_id for image_id, _, _ in found}
        known = set(session.scalars(select(Image.id).where(Image.id.in_(wanted))))
        # An image the API is accepting an upload for is locked until its import job is
        # committed: its tar is left for the next sweep.
        settled = set(session.scalars(select(Image.id).where(Image.id.in_(known))
                                      .with_for_update(read=True, skip_locked=True)))
        importing = set(session.scalars(select(Job.subject_id).where(
            Job.subject_id.in_(settled), Job.action == Action.IMAGE_IMPORT,
            Job.state.in_(_UNFINISHED))))
        for image_id, path, is_part in found:
            age = now - _mtime(path, now)
            if image_id not in known:
                stale = age > settings.job_ttl_seconds + _MARGIN_SECONDS
            elif is_part:
                stale = age > settings.upload_token_seconds + _MARGIN_SECONDS
            else:
                stale = image_id in settled and image_id not in importing
            if stale:
                path.unlink(missing_ok=True)
                log.info("removed upload file %s, which no import needs", path.name)
                removed += 1
    return removed


def _upload_files(folder: Path) -> list[tuple[str, Path, bool]]:
    """(image id, path, is a `.part`) of every upload file in the folder; nothing else in it."""
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return []
    found = []
    for entry in entries:
        match = _UPLOAD_NAME.fullmatch(entry.name)
        if match and entry.is_file(follow_symlinks=False):
            found.append((match["image_id"], Path(entry.path), bool(match["part"])))
    return found


def _mtime(path: Path, default: float) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed meanwhile: by its import, or by another sweeper
        return default
