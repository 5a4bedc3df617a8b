"""The container image `make image` builds (deploy/Dockerfile), as an operator meets it: who it
runs as, what it holds and what it must not, and that the API starts in it."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import tarfile
import time
import tomllib
import uuid
from pathlib import Path

import pytest
import requests

from tests.image_builds import build_image
from tests.processes import free_port
from tests.services import AUTH_PASSWORD, ROOT

pytestmark = pytest.mark.docker

ENGINE = "unix:///var/run/docker.sock"
IMAGE = "imagejobs:latest"
VERSION = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
# Secrets of this repository (the tests' key, the test registry's password) that must not have
# been carried into the image.
LEAKS = (b"test-secret-key", AUTH_PASSWORD.encode())
KEY_FILE_NAMES = {"secret.key", "id_rsa", "id_ecdsa", "id_ed25519", ".env", "imagejobs.env"}
# A PEM private key with its body (code that only names the marker, as cryptography's does, is not).
PRIVATE_KEY = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\r?\n[A-Za-z0-9+/=\r\n]{40}")


def docker(*args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(["docker", "-H", ENGINE, *args], capture_output=True, text=True,
                            timeout=timeout)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def run(*args: str, entrypoint: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """`docker run --rm` of the image, with no network; ARGS go to its entrypoint."""
    options = ["--entrypoint", entrypoint] if entrypoint else []
    return docker("run", "--rm", "--network", "none", *options, IMAGE, *args, check=check)


def sh(script: str) -> str:
    return run("-c", script, entrypoint="/bin/sh").stdout.strip()


@pytest.fixture(scope="module")
def image() -> dict:
    """The image, built by the script `make image` runs (all cache when nothing changed)."""
    build_image()
    return json.loads(docker("image", "inspect", IMAGE).stdout)[0]


def test_it_runs_as_the_unprivileged_imagejobs_user(image):
    assert image["Config"]["User"] == "10001:10001"
    assert sh("id -u; id -g; id -un") == "10001\n10001\nimagejobs"
    assert sh('echo "$HOME"') == "/var/lib/imagejobs"


def test_the_upload_folder_is_set_and_owned_by_it_also_as_a_new_named_volume(image):
    env = dict(item.split("=", 1) for item in image["Config"]["Env"])
    assert env["IMAGEJOBS_UPLOAD_DIR"] == "/var/lib/imagejobs/uploads"
    assert sh("stat -c %u:%g /var/lib/imagejobs/uploads") == "10001:10001"
    volume = f"imagejobs-test-uploads-{uuid.uuid4().hex[:8]}"
    try:
        out = docker("run", "--rm", "--network", "none", "-v", f"{volume}:/var/lib/imagejobs/uploads",
                     "--entrypoint", "/bin/sh", IMAGE, "-c",
                     'touch "$IMAGEJOBS_UPLOAD_DIR/tar" && stat -c %u:%g "$IMAGEJOBS_UPLOAD_DIR"')
        assert out.stdout.strip() == "10001:10001"
    finally:
        docker("volume", "rm", "-f", volume, check=False)


def test_the_command_is_imagejobs_under_an_init(image):
    assert image["Config"]["Entrypoint"][-1] == "imagejobs"
    assert image["Config"]["Entrypoint"][0] == "/usr/bin/tini"
    help_text = run("--help").stdout
    assert "Usage: imagejobs" in help_text
    for command in ("api", "worker", "health", "secret-key"):
        assert re.search(rf"^\s+{command}\s", help_text, re.M), help_text


def test_it_is_tagged_with_its_version_and_labelled(image):
    assert json.loads(docker("image", "inspect", f"imagejobs:{VERSION}").stdout)[0]["Id"] == image["Id"]
    labels = image["Config"]["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.title"] == "imagejobs"
    assert labels["org.opencontainers.image.licenses"] == "Apache-2.0"


def test_git_an_ssh_client_and_ca_certificates_are_there(image):
    assert run("--version", entrypoint="git").stdout.startswith("git version ")
    ssh = run("-V", entrypoint="ssh")
    assert ssh.stderr.startswith("OpenSSH_"), ssh.stderr
    assert sh("grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt") != "0"


def test_it_holds_exactly_the_pinned_dependencies_and_no_test_tools(image):
    """Every distribution in the venv is deploy/constraints.txt's, at its pinned version (plus
    the project); so no pytest, fakeredis or schemathesis, and no pip to add any."""
    listing = run("-c", "import importlib.metadata as m; print('\\n'.join(sorted("
                  "f\"{d.metadata['Name']}=={d.version}\" for d in m.distributions())))",
                  entrypoint="/opt/imagejobs/bin/python").stdout.split()
    pinned = [line for line in (ROOT / "deploy/constraints.txt").read_text().splitlines()
              if line and not line.startswith("#")]
    assert sorted(map(_canonical, listing)) == sorted(map(_canonical, [*pinned, f"imagejobs=={VERSION}"]))
    for tool in ("pytest", "fakeredis", "schemathesis", "pip"):
        assert not any(_canonical(item).startswith(f"{tool}==") for item in listing)


def _canonical(requirement: str) -> str:
    name, version = requirement.split("==")
    return f"{re.sub(r'[-_.]+', '-', name).lower()}=={version}"


def test_no_secret_and_no_tests_in_the_image(image):
    env_names = [item.split("=", 1)[0] for item in image["Config"]["Env"]]
    assert not [name for name in env_names if name.startswith("IMAGEJOBS_SECRET_KEY")], env_names
    assert run("-c", "import importlib.util; print(importlib.util.find_spec('tests'))",
                         entrypoint="/opt/imagejobs/bin/python").stdout.strip() == "None"

    found = _scan_file_system()
    # The scan read the image's files: the project's code is among them.
    assert found.pop("files") > 1000
    assert found == {"key files": [], "private keys": [], "leaked strings": [], "tests": []}


def _scan_file_system() -> dict:
    """Every file of a container of the image (`docker export`), looked through for key files,
    private keys, the repository's test secrets and the project's tests."""
    container = docker("create", IMAGE).stdout.strip()
    found: dict = {"key files": [], "private keys": [], "leaked strings": [], "tests": [], "files": 0}
    try:
        export = subprocess.Popen(["docker", "-H", ENGINE, "export", container], stdout=subprocess.PIPE)
        with tarfile.open(fileobj=export.stdout, mode="r|") as tar:
            for member in tar:
                path = "/" + member.name.lstrip("./")
                # The project's tests, and the test suites of its dependencies.
                if re.search(r"^(/opt/imagejobs/.*)?/tests(/|$)", path):
                    found["tests"].append(path)
                if not member.isfile():
                    continue
                found["files"] += 1
                if Path(path).name in KEY_FILE_NAMES:
                    found["key files"].append(path)
                data = tar.extractfile(member).read()
                # GnuTLS compiles the keys of its self-tests into its library: not a key file.
                if not data.startswith(b"\x7fELF") and PRIVATE_KEY.search(data):
                    found["private keys"].append(path)
                found["leaked strings"] += [f"{path}: {leak!r}" for leak in LEAKS if leak in data]
        assert export.wait(timeout=120) == 0
    finally:
        docker("rm", "-f", container, check=False)
    return found


def test_the_api_refuses_to_start_without_a_key_and_the_image_brings_none(image):
    result = run("api", check=False)
    assert result.returncode != 0
    assert "IMAGEJOBS_SECRET_KEY" in result.stderr + result.stdout


def test_a_worker_in_the_container_refuses_to_start_without_a_node_id(image):
    # The container's host name is its id, new each time it is recreated.
    result = docker("run", "--rm", "--network", "none", "-e", "IMAGEJOBS_SECRET_KEY=k", IMAGE,
                    "worker", check=False)
    assert result.returncode != 0
    assert "IMAGEJOBS_NODE_ID is not set" in result.stderr, result.stderr


def test_the_api_serves_from_the_image_and_stops_on_sigterm(image):
    port = free_port()
    name = f"imagejobs-test-api-{uuid.uuid4().hex[:8]}"
    docker("run", "--detach", "--name", name, "--network", "host",
           "-e", f"DATABASE_URL={os.environ['DATABASE_URL']}", "-e", f"REDIS_URL={os.environ['REDIS_URL']}",
           "-e", f"IMAGEJOBS_SECRET_KEY={secrets.token_urlsafe(32)}",
           IMAGE, "api", "--host", "127.0.0.1", "--port", str(port), "--workers", "1")
    try:
        response = _wait_for_health(f"http://127.0.0.1:{port}", name)
        assert response.status_code == 200
        assert response.json() == {"data": {"status": "ok"}}
        # tini hands SIGTERM to gunicorn, which stops cleanly: exit 0, not docker's SIGKILL (137).
        docker("stop", "--time", "60", name, timeout=90)
        state = json.loads(docker("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, docker("logs", name).stderr[-3000:]
    finally:
        docker("rm", "-f", name, check=False)


def _wait_for_health(base: str, container: str) -> requests.Response:
    deadline = time.monotonic() + 60
    while True:
        try:
            return requests.get(f"{base}/v1/health", timeout=5)
        except requests.ConnectionError:  # not listening yet
            state = json.loads(docker("inspect", container).stdout)[0]["State"]
            if not state["Running"] or time.monotonic() > deadline:
                logs = docker("logs", container)
                raise AssertionError(f"the API did not start in the image ({state['Status']}):\n"
                                     f"{logs.stdout[-3000:]}{logs.stderr[-3000:]}") from None
            time.sleep(0.3)


def test_hadolint_passes_on_the_dockerfile():
    hadolint = Path(sys.executable).parent / "hadolint"
    result = subprocess.run([str(hadolint), str(ROOT / "deploy/Dockerfile")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
