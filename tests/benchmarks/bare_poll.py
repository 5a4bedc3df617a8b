"""The baseline of the poll rate: a bare Flask app answering `GET /v1/jobs/{id}` with the API's
lookups only (the key's row by id and its SHA-256 compared, then the job's row by id and hub).

Served as `tests.benchmarks.bare_poll:create_app()` with the API's gunicorn settings.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os

from flask import Flask, Response, request
from sqlalchemy import create_engine, text


def create_app() -> Flask:
    app = Flask(__name__)
    engine = create_engine(os.environ["DATABASE_URL"], pool_size=5, max_overflow=10)

    @app.get("/v1/jobs/<job_id>")
    def get_job(job_id: str):
        # The secret is `ij_<key id>_<random>`: the id finds the row, the hash proves it.
        secret = request.headers.get("Authorization", "").removeprefix("Bearer ")
        hub_id = request.headers.get("X-Hub-Id", "")
        with engine.connect() as connection:
            key = connection.execute(text("SELECT * FROM api_keys WHERE id = :id AND revoked IS NULL"),
                                     {"id": secret.split("_")[1]}).first()
            digest = hashlib.sha256(secret.encode()).hexdigest()
            if key is None or not hmac.compare_digest(key.secret_hash, digest) or key.hub_id != hub_id:
                return {"error": "unauthorized"}, 401
            job = connection.execute(text("SELECT * FROM jobs WHERE id = :id AND hub_id = :hub"),
                                     {"id": job_id, "hub": hub_id}).first()
        if job is None:
            return {"error": "not found"}, 404
        return Response(json.dumps({"data": job._asdict()}, default=str),
                        mimetype="application/json")

    return app
