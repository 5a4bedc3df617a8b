"""Images the tests, the benchmark and the fault harness build: a context holding one Dockerfile,
and imagejobs:latest itself.

Nothing here reads settings, so any of them may import it before putting its environment in place.
"""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path


def dockerfile_context(dockerfile: str, compress: bool = True) -> bytes:
    """A build context holding only `dockerfile`: a .tar.gz, or a plain tar for the engine."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz" if compress else "w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_image() -> None:
    """imagejobs:latest, built by the script `make image` runs (all cache when nothing changed)."""
    root = Path(__file__).resolve().parent.parent
    build = subprocess.run(["bash", "deploy/build-image.sh"], cwd=root, capture_output=True,
                           text=True, timeout=1800)
    assert build.returncode == 0, f"deploy/build-image.sh failed:\n{build.stdout[-4000:]}" \
                                  f"{build.stderr[-4000:]}"
