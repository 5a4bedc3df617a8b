"""Small pieces shared by the tests, the benchmark and the fault harness.

Nothing here reads settings, so any of them may import it before putting its environment in place.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

from sqlalchemy import create_engine, text

ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


def recreate_database(name: str) -> None:
    """Drop `name` (whoever is connected) and create it empty."""
    admin = create_engine(ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()


def dockerfile_context(dockerfile: str, compress: bool = True) -> bytes:
    """A build context holding only `dockerfile`: a .tar.gz, or a plain tar for the engine."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def children(pid: int) -> list[int]:
    """Direct children of `pid` (a worker's pool), read from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # it ended while we looked
            continue
        # The command name is in parentheses and may hold spaces: split after its closing one.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry.name))
    return sorted(found)


def build_image() -> None:
    """imagejobs:latest, built by the script `make image` runs (all cache when nothing changed)."""
    root = Path(__file__).resolve().parent.parent
    build = subprocess.run(["bash", "deploy/build-image.sh"], cwd=root, capture_output=True,
                           text=True, timeout=1800)
    assert build.returncode == 0, f"deploy/build-image.sh failed:\n{build.stdout[-4000:]}" \
                                  f"{build.stderr[-4000:]}"
