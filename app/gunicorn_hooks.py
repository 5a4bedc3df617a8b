"""gunicorn's server hooks for the API: `imagejobs api` loads them (--config python:app.gunicorn_hooks).

gunicorn reads every global here whose name is one of its settings, so nothing else lives here.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any


def on_starting(server: Any) -> None:
    # Request metrics of every worker process go to files in this folder, which a scrape merges
    # (app/metrics.py). Each start gets an empty one, or a past start's counts would add to this
    # one's; it is set in the arbiter before any worker is forked or imports prometheus_client.
    # A dead worker's file stays until the API stops: its counts are part of the totals.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="imagejobs-metrics-")


def on_exit(server: Any) -> None:
    shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
