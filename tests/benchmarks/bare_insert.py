"""The baseline of the 202 latency: a bare Flask app whose import call is one INSERT of a job row.

Served as `tests.benchmarks.bare_insert:create_app()` with the API's gunicorn settings.
"""

from __future__ import annotations

import json
import os
import uuid

from flask import Flask, request
from sqlalchemy import create_engine, text

# A queued job's row, as the API would write it for an import (every column without a default).
INSERT_JOB = (
    "INSERT INTO jobs (id, hub_id, action, queue, caption, subject_id, input, tasks, hash, "
    "limit_duplicates, creator_type, creator_id, state, state_changed, schedule, expires, "
    "attempt) VALUES (:id, :hub, :action, 'bench', 'bench', :subject, :input, '[]', :id, false, "
    "'api-key', 'bench', :state, now(), now(), now() + interval '1 day', :attempt)")


def create_app() -> Flask:
    app = Flask(__name__)
    engine = create_engine(os.environ["DATABASE_URL"], pool_size=5, max_overflow=10)

    @app.post("/v1/images/<image_id>/tasks")
    def import_image(image_id: str):
        request.get_json()
        job_id = uuid.uuid4().hex[:24]
        with engine.begin() as connection:
            connection.execute(text(INSERT_JOB), {
                "id": job_id, "hub": request.headers["X-Hub-Id"], "action": "image.import",
                "subject": image_id, "input": json.dumps({"image_id": image_id}),
                "state": "queued", "attempt": 0})
        return {"data": {"action": "import", "job": {"id": job_id, "accepted": True}}}, 202

    return app
