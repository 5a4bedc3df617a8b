"""The services the tests run against: their own Postgres database and Redis database, the local
Docker engine and the two registries, and the environment that points imagejobs at them.

Nothing here reads settings, so the benchmark and the fault harness may import it before putting
their own environment in place.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import create_engine, text

ROOT = Path(__file__).resolve().parent.parent
ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
TEST_DATABASE = os.environ.get("IMAGEJOBS_TEST_DATABASE", "imagejobs_test")
REGISTRY = "127.0.0.1:5000"
AUTH_REGISTRY = "127.0.0.1:5001"
AUTH_USER, AUTH_PASSWORD = "imagejobs", "imagejobs-registry-pass"
BASE_IMAGE = "imagejobs/busybox:latest"

TEST_ENVIRONMENT = {
    "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{TEST_DATABASE}",
    "REDIS_URL": os.environ.get("IMAGEJOBS_TEST_REDIS", "redis://127.0.0.1:6379/15"),
    "IMAGEJOBS_SECRET_KEY": "test-secret-key-not-for-production",
    "IMAGEJOBS_NODE_ID": "test-node",
    "IMAGEJOBS_SWEEP_SECONDS": "1",
    "IMAGEJOBS_RETRY_SECONDS": "1",
    "IMAGEJOBS_PUBLISH_GRACE_SECONDS": "2",
    # The tests' registries, git and file servers listen on 127.0.0.1, which users may not reach
    # unless the operator allows it; 127.0.0.2 and the rest of loopback stay refused.
    "IMAGEJOBS_ALLOWED_NETWORKS": "127.0.0.1/32",
    # Small enough that the tests reach them quickly: a server that never answers, a long build log.
    "IMAGEJOBS_FETCH_TIMEOUT": "3",
    # A download's whole time: past the fetch timeout, so that a silent server still trips that first.
    "IMAGEJOBS_FETCH_MAX_SECONDS": "6",
    "IMAGEJOBS_BUILD_LOG_MAX_CHARS": "200000",
    # Each test database its own upload folder: tests look into it, and its sweeper judges files of
    # images it does not know by their age alone.
    "IMAGEJOBS_UPLOAD_DIR": str(ROOT / ".test-logs" / f"uploads-{TEST_DATABASE}"),
    "DOCKER_HOST": os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"),
    # The machine's env file (`deploy/local-services.sh` writes one for `make run`) is not the tests'.
    "IMAGEJOBS_ENV_FILE": str(ROOT / "tests" / "no-env-file"),
}


def recreate_database(name: str) -> None:
    """Drop `name` (whoever is connected) and create it empty."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
