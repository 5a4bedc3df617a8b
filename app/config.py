"""Settings read once from the environment, with defaults that work on a development machine."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path


def _int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


def _database_url(raw: str) -> str:
    # Accept the plain libpq form as well as SQLAlchemy's, and always drive psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix):]
    return raw


def _secret_keys() -> list[str]:
    """IMAGEJOBS_SECRET_KEY, comma separated (first encrypts, all decrypt), or a local key file.

    Without the variable a key is made once in the user's data folder so that `make run` works
    out of the box; production deployments set the variable.
    """
    raw = os.environ.get("IMAGEJOBS_SECRET_KEY", "").strip()
    if raw:
        return [k.strip() for k in raw.split(",") if k.strip()]
    path = Path(os.environ.get("IMAGEJOBS_SECRET_KEY_FILE",
                               Path.home() / ".local/share/imagejobs/secret.key"))
    if not path.exists():
        import secrets

        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return [path.read_text().strip()]


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default_factory=lambda: _database_url(os.environ.get(
        "DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/imagejobs")))
    redis_url: str = field(
        default_factory=lambda: os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    docker_host: str = field(
        default_factory=lambda: os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock"))
    node_id: str = field(
        default_factory=lambda: os.environ.get("IMAGEJOBS_NODE_ID") or socket.gethostname())
    secret_keys: list[str] = field(default_factory=_secret_keys)
    # How long a worker's claim on a job lasts without renewal; renewed every third of it.
    lease_seconds: int = field(default_factory=lambda: _int("IMAGEJOBS_LEASE_SECONDS", 30))
    # Claims of one job before it ends in error: a job that keeps killing its worker stops here.
    max_attempts: int = field(default_factory=lambda: _int("IMAGEJOBS_MAX_ATTEMPTS", 3))
    # A queued job nobody has claimed after this long is published to the broker again.
    republish_seconds: int = field(
        default_factory=lambda: _int("IMAGEJOBS_REPUBLISH_SECONDS", 60))
    # A job the API committed but never published (it died in between) is published by the
    # sweeper after this long; sooner would race the API's own publish and send it twice.
    publish_grace_seconds: int = field(
        default_factory=lambda: _int("IMAGEJOBS_PUBLISH_GRACE_SECONDS", 5))
    # A job not started within this long after it was created ends `expired`.
    job_ttl_seconds: int = field(default_factory=lambda: _int("IMAGEJOBS_JOB_TTL", 6 * 3600))
    # A temporary fault (a registry or engine away) is retried after this, tripled each time.
    retry_seconds: int = field(default_factory=lambda: _int("IMAGEJOBS_RETRY_SECONDS", 5))
    # On SIGTERM a worker lets its running jobs finish for this long, then stops them; their
    # leases lapse and other workers take them over.
    shutdown_seconds: float = field(
        default_factory=lambda: float(os.environ.get("IMAGEJOBS_SHUTDOWN_SECONDS") or 20))
    sweep_seconds: int = field(default_factory=lambda: _int("IMAGEJOBS_SWEEP_SECONDS", 5))
    # The broker hands an unacknowledged message out again after this long (Kombu's Redis
    # transport never extends it while a task runs); the claim keeps a second delivery idle.
    visibility_timeout_seconds: int = field(
        default_factory=lambda: _int("IMAGEJOBS_VISIBILITY_TIMEOUT", 3600))
    page_size_max: int = field(default_factory=lambda: _int("IMAGEJOBS_PAGE_SIZE_MAX", 100))
    max_body_bytes: int = field(
        default_factory=lambda: _int("IMAGEJOBS_MAX_BODY_BYTES", 1024 * 1024))
    # Build logs: the most characters kept per image, and how often lines are written out.
    build_log_max_chars: int = field(
        default_factory=lambda: _int("IMAGEJOBS_BUILD_LOG_MAX_CHARS", 4 * 1024 * 1024))
    build_log_flush_seconds: float = field(
        default_factory=lambda: float(os.environ.get("IMAGEJOBS_BUILD_LOG_FLUSH_SECONDS") or 0.5))
    # Build contexts: the largest download, the largest expanded size and member count of an
    # archive, and how long a download may wait for an answer.
    context_max_download_bytes: int = field(
        default_factory=lambda: _int("IMAGEJOBS_CONTEXT_MAX_DOWNLOAD", 512 * 1024 * 1024))
    context_max_expanded_bytes: int = field(
        default_factory=lambda: _int("IMAGEJOBS_CONTEXT_MAX_EXPANDED", 2 * 1024 * 1024 * 1024))
    context_max_members: int = field(
        default_factory=lambda: _int("IMAGEJOBS_CONTEXT_MAX_MEMBERS", 100_000))
    fetch_timeout_seconds: int = field(default_factory=lambda: _int("IMAGEJOBS_FETCH_TIMEOUT", 30))
    # A context download's whole time, every redirect hop together: a server sending a byte now
    # and then never trips the timeout above, and would hold a worker slot for ever.
    fetch_max_seconds: int = field(default_factory=lambda: _int("IMAGEJOBS_FETCH_MAX_SECONDS", 300))
    git_timeout_seconds: int = field(default_factory=lambda: _int("IMAGEJOBS_GIT_TIMEOUT", 600))
    # Uploaded image tars wait here for a worker; shared storage when API and workers are apart.
    upload_dir: str = field(default_factory=lambda: os.environ.get(
        "IMAGEJOBS_UPLOAD_DIR", str(Path.home() / ".local/share/imagejobs/uploads")))
    upload_max_bytes: int = field(
        default_factory=lambda: _int("IMAGEJOBS_UPLOAD_MAX_BYTES", 8 * 1024 * 1024 * 1024))
    upload_token_seconds: int = field(
        default_factory=lambda: _int("IMAGEJOBS_UPLOAD_TOKEN_TTL", 3600))
    # Networks a user's URL may reach although they are loopback, private or link-local.
    allowed_networks: str = field(
        default_factory=lambda: os.environ.get("IMAGEJOBS_ALLOWED_NETWORKS", ""))
    # The engine fetches an ADD URL or git repository itself, from the host's network and past the
    # checks above, so a Dockerfile naming one is refused unless this is `allow`.
    build_remote_add_allowed: bool = field(default_factory=lambda: os.environ.get(
        "IMAGEJOBS_BUILD_REMOTE_ADD", "refuse").strip().lower() == "allow")
    # Engine calls (a pull of a large image) may take this long before the job errors.
    engine_timeout_seconds: int = field(
        default_factory=lambda: _int("IMAGEJOBS_ENGINE_TIMEOUT", 1800))
    # A build is stopped after this long, however steadily it prints: one hub's build cannot
    # hold a worker slot for ever.
    build_timeout_seconds: int = field(
        default_factory=lambda: _int("IMAGEJOBS_BUILD_TIMEOUT", 3600))


@cache
def get_settings() -> Settings:
    return Settings()
