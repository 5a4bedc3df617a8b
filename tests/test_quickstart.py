"""The README's quick start, over real HTTP: the CLI, gunicorn and a worker as separate processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
import redis
import requests

from tests.processes import api_server
from tests.services import ROOT, TEST_DATABASE


def cli(*args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                            text=True, cwd=ROOT, env=os.environ, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# A broker of its own, so that only the quick start's own worker can take its import.
QUICK_START_REDIS = "redis://127.0.0.1:6379/6"


@pytest.fixture
def server(docker_client):
    """`imagejobs dev` as `make run` starts it: no node id chosen, inside a container (as this
    machine kind is; KUBERNETES_SERVICE_HOST makes any machine count as one)."""
    redis.Redis.from_url(QUICK_START_REDIS).flushdb()
    env = {name: value for name, value in os.environ.items() if name != "IMAGEJOBS_NODE_ID"}
    env.update(REDIS_URL=QUICK_START_REDIS, KUBERNETES_SERVICE_HOST="kubernetes.invalid")
    with api_server(f"dev-{TEST_DATABASE}", "dev", env=env) as base:
        yield base


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
    assert live["factory"]["node_id"] == socket.gethostname()  # dev's worker, named by its host
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
