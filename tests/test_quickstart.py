"""The README's quick start, over real HTTP: the CLI, gunicorn and a worker as separate processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import ROOT, TEST_DATABASE


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                            text=True, cwd=ROOT, env=os.environ, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(docker_client):
    port = free_port()
    log_path = ROOT / ".test-logs" / f"dev-{TEST_DATABASE}.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "dev", "--port", str(port)],
                                   stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(base, process, log_path)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()
            raise


def wait_until_healthy(base: str, process: subprocess.Popen | None = None,
                       log_path: Path | None = None) -> None:
    deadline = time.monotonic() + 60
    while not _healthy(base):
        if (process is not None and process.poll() is not None) or time.monotonic() > deadline:
            log = log_path.read_text()[-3000:] if log_path else ""
            raise RuntimeError(f"the API at {base} did not start:\n{log}")
        time.sleep(0.3)


def _healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/v1/health", timeout=5).ok
    except requests.RequestException:  # not listening yet, or still starting
        return False


def test_quick_start_imports_an_image_from_the_local_registry(server, pushed_image):
    cli("db", "upgrade")
    hub = cli("hub", "create", "quick-start")
    key = cli("key", "create", "--hub", hub)
    headers = {"Authorization": f"Bearer {key}", "X-Hub-Id": hub}
    host, _, target = pushed_image.public.partition("/")

    source = requests.post(f"{server}/v1/images/sources", headers=headers, json={
        "name": "configured", "type": "direct",
        "origin": {"type": "docker-registry", "details": {"url": host, "target": target}},
    })
    assert source.status_code == 201, source.text
    image = requests.post(f"{server}/v1/images", headers=headers,
                          json={"source_id": source.json()["data"]["id"]})
    assert image.status_code == 201, image.text
    image_id = image.json()["data"]["id"]
    task = requests.post(f"{server}/v1/images/{image_id}/tasks", headers=headers,
                         json={"action": "import"})
    assert task.status_code == 202, task.text
    job_id = task.json()["data"]["job"]["id"]

    deadline = time.monotonic() + 60
    while (job := requests.get(f"{server}/v1/jobs/{job_id}", headers=headers).json()["data"]
           )["state"]["current"] not in ("completed", "error"):
        assert time.monotonic() < deadline, job
        time.sleep(0.3)
    assert job["state"]["current"] == "completed", job

    live = requests.get(f"{server}/v1/images/{image_id}", headers=headers).json()["data"]
    assert live["state"]["current"] == "live"
    assert live["size"] == pushed_image.size
    assert live["backend"]["file_id"] == pushed_image.image_id
    assert live["config"]["workdir"] == "/srv"
    assert live["config"]["env"]["GREETING"] == "hello"


def test_the_api_answers_malformed_requests_in_the_envelope_not_html(server):
    response = requests.post(f"{server}/v1/images", data="{nope",
                             headers={"Content-Type": "application/json"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "401.auth-invalid"
    missing = requests.get(f"{server}/nowhere")
    assert missing.status_code == 404 and missing.json()["data"] is None
