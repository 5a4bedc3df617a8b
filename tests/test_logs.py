"""IMAGEJOBS_LOG_FORMAT=json: every line of a real API and worker is a JSON object, a job's lines
carry its id, hub, attempt and node, a request's lines its X-Request-Id, and no secret shows.

Its own database and Redis server: the logs hold only this test's requests and jobs, and no
other test's worker takes its messages.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import requests

from app.config import ConfigError, Settings
from tests.api_calls import registry_origin, repository_path
from tests.processes import ApiClient, api_server, free_port, imagejobs, own_database
from tests.services import AUTH_PASSWORD, AUTH_REGISTRY, AUTH_USER, TEST_DATABASE
from tests.test_ready import redis_server

NODE = "logs-node"
WRONG_PASSWORD = "wrong-registry-pass-never-logged"


def lines(log: Path) -> list[dict[str, Any]]:
    """Every line of a log, each parsed as a JSON object (failing on the first that is not)."""
    parsed = []
    for number, line in enumerate(log.read_text().splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{log.name} line {number} is not JSON: {line!r}")
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= set(record), line
        parsed.append(record)
    return parsed


def import_image(client: ApiClient, origin: dict[str, Any], request_id: str) -> tuple[str, str]:
    """Create a source and image for `origin` and start its import; (job id, the answer's id)."""
    source = client.call("POST", "/v1/images/sources", json={"type": "direct", "origin": origin})
    image = client.call("POST", "/v1/images", json={"source_id": source["id"]})
    response = client.http.post(f"{client.base}/v1/images/{image['id']}/tasks", timeout=10,
                                json={"action": "import"}, headers={"X-Request-Id": request_id})
    assert response.status_code == 202, response.text
    return response.json()["data"]["job"]["id"], response.headers["X-Request-Id"]


def ended(client: ApiClient, job_id: str) -> dict[str, Any]:
    return client.wait_for(lambda: (job := client.job(job_id))["state"]["current"] in (
        "completed", "error", "expired") and job, f"job {job_id} to end")


@pytest.fixture(scope="module")
def run(docker_client, pushed_image) -> dict[str, Any]:
    """A real import and a failing one through a JSON-logging API and worker; what they logged."""
    port = free_port()
    env, headers = own_database(f"{TEST_DATABASE}_logs", {
        **os.environ, "REDIS_URL": f"redis://127.0.0.1:{port}/0", "IMAGEJOBS_NODE_ID": NODE,
        "IMAGEJOBS_LOG_FORMAT": "json"})
    request_id = f"test-{uuid.uuid4()}"
    with redis_server(port), api_server("logs-api", env=env) as base, imagejobs(
            "logs-worker", "worker", "--queues", f"imagejobs-pull,imagejobs-node-{NODE}",
            "--concurrency", "1", env=env) as (worker, worker_log):
        client = ApiClient(base, headers)
        client.wait_for(lambda: "ready." in worker_log.read_text() or worker.poll() is not None,
                        "the worker to start")
        assert worker.poll() is None, worker_log.read_text()[-3000:]
        target = repository_path(pushed_image.private)
        good, answered = import_image(client, registry_origin(
            target, AUTH_REGISTRY, username=AUTH_USER, password=AUTH_PASSWORD), request_id)
        bad, _ = import_image(client, registry_origin(
            target, AUTH_REGISTRY, username=AUTH_USER, password=WRONG_PASSWORD), "bad id with spaces")
        jobs = {good: ended(client, good), bad: ended(client, bad)}
        invalid = requests.get(f"{base}/v1/images", headers={"X-Request-Id": "x" * 129}, timeout=10)
        too_long = requests.get(f"{base}/v1/images?filter[search]={'a' * 9000}", timeout=10)
        time.sleep(0.5)  # the access line is written after the answer
    return {"hub": headers["X-Hub-Id"], "key": headers["Authorization"], "jobs": jobs,
            "good": good, "bad": bad, "request_id": request_id, "answered": answered,
            "invalid": invalid, "too_long": too_long,
            "api": lines(worker_log.parent / "logs-api.log"), "worker": lines(worker_log),
            "text": (worker_log.parent / "logs-api.log").read_text() + worker_log.read_text()}


def test_every_line_of_the_api_and_the_worker_is_a_json_object(run):
    assert run["api"] and run["worker"]
    loggers = {line["logger"] for line in run["api"] + run["worker"]}
    # gunicorn's own lines, its access lines, Celery's and the project's, all of them JSON.
    assert {"gunicorn.error", "gunicorn.access", "imagejobs.worker"} <= loggers, loggers
    assert any(name.startswith("celery.") for name in loggers), loggers


def test_a_jobs_lines_carry_its_id_hub_attempt_and_node(run):
    assert run["jobs"][run["good"]]["state"]["current"] == "completed", run["jobs"]
    assert run["jobs"][run["bad"]]["state"]["current"] == "error", run["jobs"]
    for job_id in (run["good"], run["bad"]):
        mine = [line for line in run["worker"] if line.get("job_id") == job_id]
        claimed = [line for line in mine if "attempt" in line]
        assert claimed, f"no line of job {job_id} carries its attempt: {mine}"
        for line in claimed:
            assert line["hub_id"] == run["hub"] and line["node_id"] == NODE, line
            assert line["attempt"] == 1, line
        # Every line naming the job in its words carries its id as a field too.
        named = [line for line in run["worker"] if f"job {job_id}" in line["message"]]
        assert named and all(line.get("job_id") == job_id for line in named), named
    failed = [line for line in run["worker"]
              if line.get("job_id") == run["bad"] and ": error: " in line["message"]]
    assert failed, "the failing job's error is not in the worker's log"


def test_the_request_id_sent_is_answered_and_on_the_requests_lines(run):
    assert run["answered"] == run["request_id"]
    access = [line for line in run["api"] if line["logger"] == "gunicorn.access"]
    mine = [line for line in access if line.get("request_id") == run["request_id"]]
    assert [(line["method"], line["status"]) for line in mine] == [("POST", 202)], access
    assert mine[0]["path"].endswith("/tasks")
    assert all(line.get("request_id") for line in access), access


def test_an_id_that_is_not_sane_is_replaced_and_errors_carry_one_too(run):
    replaced = run["invalid"].headers["X-Request-Id"]
    assert replaced != "x" * 129 and 0 < len(replaced) <= 128 and replaced.isascii()
    # gunicorn's own refusal (a request line too long, so no header was read): the answer in the
    # envelope has an id of its own, and gunicorn's line about it carries that id.
    assert run["too_long"].status_code == 414, run["too_long"].text
    assert run["too_long"].json()["error"]["code"] == "414.uri-too-long"
    made = run["too_long"].headers["X-Request-Id"]
    refused = [line for line in run["api"] if line.get("request_id") == made]
    assert refused and refused[0]["logger"] == "gunicorn.error", run["api"][-10:]


def test_no_secret_is_logged(run):
    key = run["key"].removeprefix("Bearer ")
    for secret in (AUTH_PASSWORD, WRONG_PASSWORD, key):
        assert secret not in run["text"]


def test_an_unknown_log_format_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("IMAGEJOBS_LOG_FORMAT", "yaml")
    with pytest.raises(ConfigError, match="IMAGEJOBS_LOG_FORMAT='yaml': expected one of text, json"):
        Settings.from_env()
