"""Which API, key and hub the client uses: the environment, else the file `imagejobs login` wrote.

The file holds the API key, so it is created readable by its owner alone and never exists with
wider permissions, even for an instant.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

DEFAULT_API = "http://127.0.0.1:8000"
ENVIRONMENT = {"api": "IMAGEJOBS_API", "key": "IMAGEJOBS_KEY", "hub": "IMAGEJOBS_HUB"}


class SettingsError(Exception):
    """Settings that cannot be used, in a person's words."""


@dataclass(frozen=True)
class ClientSettings:
    api: str
    key: str
    hub: str

    def missing(self) -> list[str]:
        """The environment variables of the settings not given anywhere."""
        return [ENVIRONMENT[name] for name in ("key", "hub") if not getattr(self, name)]


def config_path(environ: Mapping[str, str] = os.environ) -> Path:
    """$XDG_CONFIG_HOME/imagejobs/client.json, ~/.config/imagejobs/client.json by default."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home())
                                                 / ".config")
    return Path(base) / "imagejobs" / "client.json"


def read_file(path: Path) -> dict[str, str]:
    """What the file holds; nothing when there is no file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise SettingsError(f"cannot read {path}: {exc.strerror}") from None
    try:
        stored = json.loads(text)
    except ValueError:
        raise SettingsError(f"{path} is not JSON: run `imagejobs login` again") from None
    if not isinstance(stored, dict):
        raise SettingsError(f"{path} does not hold an object: run `imagejobs login` again")
    return {name: str(stored[name]) for name in ENVIRONMENT if stored.get(name)}


def load(environ: Mapping[str, str] = os.environ) -> ClientSettings:
    """Each setting from the environment when it is set there, else from the file."""
    stored = read_file(config_path(environ))
    chosen = {name: environ.get(variable) or stored.get(name, "")
              for name, variable in ENVIRONMENT.items()}
    return ClientSettings(api=(chosen["api"] or DEFAULT_API).rstrip("/"), key=chosen["key"],
                          hub=chosen["hub"])


def write(path: Path, settings: ClientSettings) -> None:
    """Replace the file with `settings`, atomically; the file is 0600 from its creation on."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.part")
    # O_EXCL: a file or link already there (left by someone else) is never written through.
    descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.fchmod(descriptor, 0o600)  # whatever the umask took away, nothing more is given
        with os.fdopen(descriptor, "w") as out:
            json.dump({"api": settings.api, "key": settings.key, "hub": settings.hub}, out,
                      indent=2)
            out.write("\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
