"""Settings: an object each process is given (create_app, the worker), read from the environment and
the env file when none is; defaults work on a development machine, and a value that cannot be used
is a ConfigError naming the variable."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from dotenv import dotenv_values

DEFAULT_ENV_FILE = "/etc/imagejobs/imagejobs.env"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# Turns a variable's text into its value: (variable, text, default) -> value.
Parser = Callable[[str, str, Any], Any]


class ConfigError(Exception):
    """A setting the process cannot run with; the message names the variable and what it wants."""


class Environment:
    """Where settings are read: the environment (or a mapping standing in for it), then the env file."""

    def __init__(self, environ: Mapping[str, str] | None = None):
        self.environ = os.environ if environ is None else environ
        self._file: dict[str, str] | None = None

    def file(self) -> dict[str, str]:
        """IMAGEJOBS_ENV_FILE (default /etc/imagejobs/imagejobs.env): settings kept outside the
        repository, such as the database password `deploy/local-services.sh` makes. The environment
        wins over it."""
        if self._file is None:
            path = Path(self.environ.get("IMAGEJOBS_ENV_FILE") or DEFAULT_ENV_FILE)
            try:
                self._file = {k: v for k, v in dotenv_values(path).items() if v is not None}
            except FileNotFoundError:
                self._file = {}
            except OSError as exc:
                raise ConfigError(f"IMAGEJOBS_ENV_FILE={path} cannot be read: {exc.strerror}") from None
        return self._file

    def get(self, name: str) -> str:
        """A setting as text: the environment, else the env file; blank is unset."""
        return (self.environ.get(name) or self.file().get(name) or "").strip()


def _number(name: str, raw: str, default: float, kind: type[int] | type[float]) -> Any:
    try:
        value = kind(raw)
    except ValueError:
        value = None
    if value is None or value <= 0:
        noun = "whole number" if kind is int else "number"
        raise ConfigError(f"{name}={raw!r}: expected a {noun} above 0, such as {default:g}")
    return value


def _int(name: str, raw: str, default: int) -> int:
    return _number(name, raw, default, int)


def _float(name: str, raw: str, default: float) -> float:
    return _number(name, raw, default, float)


def _choice(*choices: str) -> Callable[[str, str, str], str]:
    def parse(name: str, raw: str, default: str) -> str:
        if raw.lower() not in choices:
            raise ConfigError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
        return raw.lower()
    return parse


def _text(name: str, raw: str, default: str) -> str:
    return raw


def _database_url(name: str, raw: str, default: str) -> str:
    # Accept the plain libpq form as well as SQLAlchemy's, and always drive psycopg 3.
    for prefix in ("postgres://", "postgresql://"):
        if raw.startswith(prefix):
            return "postgresql+psycopg://" + raw[len(prefix):]
    if not raw.startswith("postgresql+psycopg://"):
        raise ConfigError(f"DATABASE_URL={redact_url(raw)!r}: expected a Postgres URL, "
                          "postgresql://user:password@host:5432/database")
    return raw


def _redis_url(name: str, raw: str, default: str) -> str:
    if urlsplit(raw).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"REDIS_URL={redact_url(raw)!r}: expected a Redis URL, "
                          "redis://host:6379/0")
    return raw


def _remote_add(name: str, raw: str, default: bool) -> bool:
    return _choice("refuse", "allow")(name, raw, "refuse") == "allow"


def redact_url(url: str) -> str:
    """The URL without its password, to name it in a message."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":***@", 1)


def _networks(name: str, raw: str, default: tuple[Network, ...]) -> tuple[Network, ...]:
    networks = []
    for item in raw.split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"IMAGEJOBS_ALLOWED_NETWORKS: {item.strip()!r} is not a network; "
                                  "expected CIDRs separated by commas, such as "
                                  "127.0.0.1/32,10.0.0.0/8") from None
    return tuple(networks)


def _keys(text: str) -> list[str]:
    return [k.strip() for k in text.replace("\n", ",").split(",") if k.strip()]


def _secret_keys(environment: Environment) -> list[str]:
    """IMAGEJOBS_SECRET_KEY (comma separated: the first encrypts, all decrypt), or the keys in
    IMAGEJOBS_SECRET_KEY_FILE. None configured is an empty list: the API and the workers refuse to
    start so (`check_service`), the admin commands need none."""
    raw = environment.get("IMAGEJOBS_SECRET_KEY")
    if raw:
        return _keys(raw)
    path = environment.get("IMAGEJOBS_SECRET_KEY_FILE")
    if not path:
        return []
    try:
        keys = _keys(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"IMAGEJOBS_SECRET_KEY_FILE={path} cannot be read: {exc.strerror}") from None
    if not keys:
        raise ConfigError(f"IMAGEJOBS_SECRET_KEY_FILE={path} is empty; expected a key, such as one "
                          "`imagejobs secret-key` prints")
    return keys


def new_secret_key() -> str:
    return secrets.token_urlsafe(32)


def write_key_file(path: Path) -> bool:
    """Write a new key to `path` unless it already holds one; whether it wrote."""
    if path.exists() and path.read_text().strip():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(new_secret_key() + "\n")
    return True


def _in_container() -> bool:
    return (Path("/.dockerenv").exists() or Path("/run/.containerenv").exists()
            or "KUBERNETES_SERVICE_HOST" in os.environ)


def check_service(settings: Settings, *, worker: bool) -> None:
    """What the API and the workers refuse to start without, where a default would fail later."""
    if not settings.secret_keys:
        raise ConfigError(
            "IMAGEJOBS_SECRET_KEY is not set (nor IMAGEJOBS_SECRET_KEY_FILE): the API and every "
            "worker must share one key to read the credentials they store. Make one with "
            "`imagejobs secret-key` and give it to each of them.")
    if worker and not settings.node_id_chosen and _in_container():
        raise ConfigError(
            "IMAGEJOBS_NODE_ID is not set, and a container's host name changes each time it is "
            "recreated: deletes of the images this worker's engine holds would go to a queue "
            "nobody consumes. Set it to a name that stays with the engine.")


def setting(variable: str, default: Any = MISSING, parse: Parser = _int, *,
            default_factory: Any = MISSING) -> Any:
    """A field of Settings read from `variable`; `parse` turns its text into the value or names
    what it expected (ConfigError)."""
    return field(default=default, default_factory=default_factory,
                 metadata={"variable": variable, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """Everything the API, the workers and the commands are configured with.

    `Settings(...)` holds what it is given and the defaults; `Settings.from_env()` reads the
    environment and the env file. A process installs one with `use_settings`."""

    database_url: str = setting("DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/imagejobs",
                                _database_url)
    redis_url: str = setting("REDIS_URL", "redis://127.0.0.1:6379/0", _redis_url)
    docker_host: str = setting("DOCKER_HOST", "unix:///var/run/docker.sock", _text)
    # Blank is the host name (see node_id_chosen).
    node_id: str = setting("IMAGEJOBS_NODE_ID", "", _text)
    # IMAGEJOBS_SECRET_KEY or IMAGEJOBS_SECRET_KEY_FILE; read by from_env itself.
    secret_keys: list[str] = field(default_factory=list)
    # How long a worker's claim on a job lasts without renewal; renewed every third of it.
    lease_seconds: int = setting("IMAGEJOBS_LEASE_SECONDS", 30)
    # Claims of one job before it ends in error: a job that keeps killing its worker stops here.
    max_attempts: int = setting("IMAGEJOBS_MAX_ATTEMPTS", 3)
    # A queued job nobody has claimed after this long is published to the broker again.
    republish_seconds: int = setting("IMAGEJOBS_REPUBLISH_SECONDS", 60)
    # A job the API committed but never published (it died in between) is published by the
    # sweeper after this long; sooner would race the API's own publish and send it twice.
    publish_grace_seconds: int = setting("IMAGEJOBS_PUBLISH_GRACE_SECONDS", 5)
    # A job not started within this long after it was created ends `expired`.
    job_ttl_seconds: int = setting("IMAGEJOBS_JOB_TTL", 6 * 3600)
    # A temporary fault (a registry or engine away) is retried after this, tripled each time.
    retry_seconds: int = setting("IMAGEJOBS_RETRY_SECONDS", 5)
    # On SIGTERM a worker lets its running jobs finish for this long, then stops them; their
    # leases lapse and other workers take them over.
    shutdown_seconds: float = setting("IMAGEJOBS_SHUTDOWN_SECONDS", 20.0, _float)
    sweep_seconds: int = setting("IMAGEJOBS_SWEEP_SECONDS", 5)
    # The broker hands an unacknowledged message out again after this long (Kombu's Redis
    # transport never extends it while a task runs); the claim keeps a second delivery idle.
    visibility_timeout_seconds: int = setting("IMAGEJOBS_VISIBILITY_TIMEOUT", 3600)
    page_size_max: int = setting("IMAGEJOBS_PAGE_SIZE_MAX", 100)
    max_body_bytes: int = setting("IMAGEJOBS_MAX_BODY_BYTES", 1024 * 1024)
    # Build logs: the most characters kept per image, and how often lines are written out.
    build_log_max_chars: int = setting("IMAGEJOBS_BUILD_LOG_MAX_CHARS", 4 * 1024 * 1024)
    build_log_flush_seconds: float = setting("IMAGEJOBS_BUILD_LOG_FLUSH_SECONDS", 0.5, _float)
    # Build contexts: the largest download, the largest expanded size and member count of an
    # archive, and how long a download may wait for an answer.
    context_max_download_bytes: int = setting("IMAGEJOBS_CONTEXT_MAX_DOWNLOAD", 512 * 1024 * 1024)
    context_max_expanded_bytes: int = setting("IMAGEJOBS_CONTEXT_MAX_EXPANDED", 2 * 1024 * 1024 * 1024)
    context_max_members: int = setting("IMAGEJOBS_CONTEXT_MAX_MEMBERS", 100_000)
    fetch_timeout_seconds: int = setting("IMAGEJOBS_FETCH_TIMEOUT", 30)
    # A context download's whole time, every redirect hop together: a server sending a byte now
    # and then never trips the timeout above, and would hold a worker slot for ever.
    fetch_max_seconds: int = setting("IMAGEJOBS_FETCH_MAX_SECONDS", 300)
    git_timeout_seconds: int = setting("IMAGEJOBS_GIT_TIMEOUT", 600)
    # Uploaded image tars wait here for a worker; shared storage when API and workers are apart.
    upload_dir: str = setting("IMAGEJOBS_UPLOAD_DIR", parse=_text, default_factory=lambda: str(
        Path.home() / ".local/share/imagejobs/uploads"))
    upload_max_bytes: int = setting("IMAGEJOBS_UPLOAD_MAX_BYTES", 8 * 1024 * 1024 * 1024)
    upload_token_seconds: int = setting("IMAGEJOBS_UPLOAD_TOKEN_TTL", 3600)
    # Networks a user's URL may reach although they are loopback, private or link-local.
    allowed_networks: tuple[Network, ...] = setting("IMAGEJOBS_ALLOWED_NETWORKS", (), _networks)
    # The engine fetches an ADD URL or git repository itself, from the host's network and past the
    # checks above, so a Dockerfile naming one is refused unless this is `allow`.
    build_remote_add_allowed: bool = setting("IMAGEJOBS_BUILD_REMOTE_ADD", False, _remote_add)
    # `json`: every log line of the API and the workers is one JSON object (app/logs.py).
    log_format: str = setting("IMAGEJOBS_LOG_FORMAT", "text", _choice("text", "json"))
    # Engine calls (a pull of a large image) may take this long before the job errors.
    engine_timeout_seconds: int = setting("IMAGEJOBS_ENGINE_TIMEOUT", 1800)
    # A build is stopped after this long, however steadily it prints: one hub's build cannot
    # hold a worker slot for ever.
    build_timeout_seconds: int = setting("IMAGEJOBS_BUILD_TIMEOUT", 3600)

    # Whether node_id was given rather than taken from the host name, which a container loses.
    node_id_chosen: bool = field(init=False, default=True)

    def __post_init__(self) -> None:
        if not self.node_id:
            object.__setattr__(self, "node_id", socket.gethostname())
            object.__setattr__(self, "node_id_chosen", False)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """The settings `environ` (default os.environ) and its env file give, defaults for the rest."""
        environment = Environment(environ)
        values: dict[str, Any] = {"secret_keys": _secret_keys(environment)}
        for item in fields(cls):
            variable = item.metadata.get("variable")
            raw = environment.get(variable) if variable else ""
            if raw:
                default = item.default if item.default is not MISSING else item.default_factory()
                values[item.name] = item.metadata["parse"](variable, raw, default)
        return cls(**values)


_current: Settings | None = None


def use_settings(settings: Settings | None = None) -> Settings:
    """Make `settings` this process's own, what get_settings returns from now on; None keeps
    those it has (read from the environment the first time)."""
    global _current
    if settings is not None:
        _current = settings
    elif _current is None:
        _current = Settings.from_env()
    return _current


def get_settings() -> Settings:
    """This process's settings: those use_settings installed, else read from the environment."""
    return use_settings()
