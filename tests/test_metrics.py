"""GET /metrics: the figures move as jobs run, stay put when the broker is flushed, pass promtool,
and a real Prometheus scrapes them and answers the README's alerts.

The API (two gunicorn processes) and a worker run on a database and Redis db of their own, so
every change between two scrapes is this test's doing. The worker consumes the shared queues but
not its node's own: a delete of an image it imported waits there, on a queue nobody consumes.
"""

from __future__ import annotations

import io
import os
import re
import signal
import tarfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

import docker.errors
import pytest
import redis
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, text

from app.jobs.queueing import SHARED_QUEUES, node_queue
from tests.api_calls import registry_origin, repository_path
from tests.processes import ApiClient, api_server, imagejobs, own_database
from tests.prometheus import prometheus_server, promtool, query
from tests.servers import FileServer
from tests.services import BASE_IMAGE, ROOT, TEST_DATABASE

pytestmark = pytest.mark.docker

DATABASE = f"{TEST_DATABASE}_metrics"
REDIS = "redis://127.0.0.1:6379/2"
NODE = "metrics-node"
NODE_QUEUE = node_queue(NODE)
ENV = {
    "REDIS_URL": REDIS, "IMAGEJOBS_NODE_ID": NODE,
    # Short enough that a frozen worker's lease lapses within seconds.
    "IMAGEJOBS_LEASE_SECONDS": "4",
    # Nothing is published again behind the tests' back: each message the sweeper sends is one
    # the test expects (a retry come due, a requeue).
    "IMAGEJOBS_REPUBLISH_SECONDS": "3600",
    "IMAGEJOBS_UPLOAD_DIR": str(ROOT / ".test-logs" / f"uploads-{DATABASE}"),
}
# Figures the broker does not hold: a flush must leave every one of them as it was.
POSTGRES_FAMILIES = (
    "imagejobs_jobs", "imagejobs_queue_ready_jobs", "imagejobs_job_duration_seconds",
    "imagejobs_job_queued_seconds", "imagejobs_job_attempts_total", "imagejobs_job_retries_total",
    "imagejobs_leases_lapsed_total", "imagejobs_sweeper_published_total",
    "imagejobs_build_log_bytes_total")


class Figures:
    """One scrape: every sample, by name and labels."""

    def __init__(self, body: str):
        self.body = body
        self.samples: dict[tuple[str, frozenset], float] = {}
        self.families: dict[str, str] = {}
        for family in text_string_to_metric_families(body):
            self.families[family.name] = family.type
            for sample in family.samples:
                self.samples[sample.name, frozenset(sample.labels.items())] = sample.value

    def __call__(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a series not (yet) shown."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def of(self, *prefixes: str) -> dict[tuple[str, frozenset], float]:
        return {key: value for key, value in self.samples.items()
                if key[0].startswith(prefixes)}


@dataclass
class Stack:
    base: str
    api: ApiClient
    worker_pid: int

    def scrape(self) -> Figures:
        response = requests.get(f"{self.base}/metrics", timeout=30)
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return Figures(response.text)

    def image(self, origin: dict) -> dict:
        source = self.api.call("POST", "/v1/images/sources",
                               json={"type": "direct", "name": "metrics", "origin": origin})
        return self.api.call("POST", "/v1/images", json={"source_id": source["id"]})

    def start_import(self, origin: dict) -> tuple[str, str]:
        image = self.image(origin)
        job = self.api.call("POST", f"/v1/images/{image['id']}/tasks", json={"action": "import"})
        return image["id"], job["job"]["id"]

    def ended(self, job_id: str) -> dict:
        return self.api.wait_for(
            lambda: (job := self.api.job(job_id))["state"]["current"] in ("completed", "error",
                                                                           "expired") and job,
            f"job {job_id} to end", timeout=120)

    def consumers(self, queue: str) -> float | None:
        figures = self.scrape()
        key = ("imagejobs_queue_consumers", frozenset({("queue", queue)}))
        return figures.samples.get(key)


@contextmanager
def worker(env: dict[str, str]) -> Iterator[int]:
    with imagejobs("metrics-worker", "worker", "--queues", ",".join(SHARED_QUEUES),
                   "--concurrency", "2", env=env) as (child, log):
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            assert child.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield child.pid


@pytest.fixture(scope="module")
def stack(docker_client, pushed_image) -> Iterator[Stack]:
    redis.Redis.from_url(REDIS).flushdb()
    env, headers = own_database(DATABASE, {**os.environ, **ENV})
    with api_server("metrics-api", "api", "--workers", "2", env=env) as base, \
            worker(env) as worker_pid:
        stack = Stack(base, ApiClient(base, headers), worker_pid)
        yield stack
        for image in stack.api.call("GET", "/v1/images?page[size]=100&filter[state]="
                                           "new,live,deleting,deleted"):
            if image["backend"]["file_name"]:
                with suppress(docker.errors.ImageNotFound):
                    docker_client.images.remove(image["backend"]["file_name"], noprune=True)


@pytest.fixture(scope="module")
def waiting_delete(stack, pushed_image) -> str:
    """A delete job queued on the worker's node queue, which no worker consumes: its job id."""
    image_id, job_id = stack.start_import(registry_origin(repository_path(pushed_image.public)))
    assert stack.ended(job_id)["state"]["current"] == "completed"
    deleted = stack.api.http.delete(f"{stack.base}/v1/images/{image_id}", timeout=10)
    assert deleted.status_code == 202, deleted.text
    return deleted.json()["data"]["job"]["id"]


def context(*lines: str) -> bytes:
    """A tar.gz holding a Dockerfile from the base image with `lines`."""
    data = "\n".join([f"FROM {BASE_IMAGE}", *lines]).encode() + b"\n"
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def build_origin(files: FileServer, *lines: str, failures: int = 0) -> dict:
    url = files.add(f"/{uuid.uuid4().hex}.tar.gz", context(*lines), failures=failures)
    return {"type": "docker-file", "details": {"targz_url": url}}


def build_log_bytes(stack: Stack, image_id: str) -> int:
    return len(stack.api.call("GET", f"/v1/images/{image_id}/build-log")["log"].encode())


def test_an_import_a_retried_build_and_a_failed_build_move_the_figures(stack, files,
                                                                       pushed_image):
    before = stack.scrape()

    _, pulled = stack.start_import(registry_origin(repository_path(pushed_image.public)))
    # The context server answers 503 once: a temporary fault, retried after a backoff.
    built_image, built = stack.start_import(build_origin(
        files, f"RUN echo {uuid.uuid4().hex}; seq 1 300", failures=1))
    failed_image, failed = stack.start_import(build_origin(
        files, f"RUN echo {uuid.uuid4().hex}; seq 1 50; exit 3"))
    assert stack.ended(pulled)["state"]["current"] == "completed"
    assert stack.ended(built)["state"]["current"] == "completed"
    assert stack.ended(failed)["state"]["current"] == "error"
    health_calls = 7
    for _ in range(health_calls):
        requests.get(f"{stack.base}/v1/health", timeout=10)

    after = stack.scrape()

    def moved(name: str, **labels: str) -> float:
        return after(name, **labels) - before(name, **labels)

    imports = {"action": "image.import"}
    assert moved("imagejobs_jobs", queue="imagejobs-pull", state="completed", **imports) == 1
    assert moved("imagejobs_jobs", queue="imagejobs-build", state="completed", **imports) == 1
    assert moved("imagejobs_jobs", queue="imagejobs-build", state="error", **imports) == 1
    assert moved("imagejobs_job_attempts_total", **imports) == 4  # the retried build twice
    assert moved("imagejobs_job_retries_total", **imports) == 1
    # The retry's message was sent by the sweeper once its backoff was over.
    assert moved("imagejobs_sweeper_published_total", **imports) == 1
    assert moved("imagejobs_leases_lapsed_total", outcome="requeued", **imports) == 0
    for histogram in ("imagejobs_job_duration_seconds", "imagejobs_job_queued_seconds"):
        completed = {**imports, "outcome": "completed"}
        error = {**imports, "outcome": "error"}
        assert moved(f"{histogram}_count", **completed) == 2
        assert moved(f"{histogram}_bucket", le="+Inf", **completed) == 2
        assert moved(f"{histogram}_count", **error) == 1
        assert moved(f"{histogram}_sum", **completed) > 0
    # The retried build waited out its backoff (1 s) between its attempts.
    assert moved("imagejobs_job_duration_seconds_bucket", le="0.5", outcome="completed",
                 **imports) < 2
    # Every byte of both builds' logs, and nothing else.
    assert moved("imagejobs_build_log_bytes_total") == (build_log_bytes(stack, built_image)
                                                        + build_log_bytes(stack, failed_image))
    # Requests are counted by route, whichever of the API's two processes answered them.
    assert moved("imagejobs_http_request_duration_seconds_count", method="POST",
                 route="/v1/images/<image_id:image_id>/tasks", status="202") == 3
    assert moved("imagejobs_http_request_duration_seconds_count", method="GET",
                 route="/v1/health", status="200") == health_calls
    # Nothing of any hub: no hub, image or job id, and no image name.
    hub = stack.api.http.headers["X-Hub-Id"]
    for secret_ish in (hub, built_image, failed_image, pulled, built, failed,
                       repository_path(pushed_image.public)):
        assert secret_ish not in after.body
    checked = promtool("check", "metrics", stdin=after.body)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_a_lapsed_lease_is_counted_and_the_job_is_requeued(stack, files):
    before = stack.scrape()
    image_id, job_id = stack.start_import(build_origin(
        files, f"RUN echo {uuid.uuid4().hex}; sleep 6"))
    owner = stack.api.wait_for(lambda: lease_owner(job_id), "the build to be claimed")
    child = int(owner.rsplit("/", 1)[1])  # node/host/pid: the pool process running it
    os.kill(child, signal.SIGSTOP)
    try:
        # Frozen, it renews nothing: the sweeper queues the job again for the other process.
        stack.api.wait_for(lambda: (lease_owner(job_id) or owner) != owner,
                           "another attempt to claim the job", timeout=60)
    finally:
        os.kill(child, signal.SIGCONT)
    assert stack.ended(job_id)["state"]["current"] == "completed"

    after = stack.scrape()
    imports = {"action": "image.import"}
    assert (after("imagejobs_leases_lapsed_total", outcome="requeued", **imports)
            - before("imagejobs_leases_lapsed_total", outcome="requeued", **imports)) == 1
    assert (after("imagejobs_leases_lapsed_total", outcome="abandoned", **imports)
            == before("imagejobs_leases_lapsed_total", outcome="abandoned", **imports))
    assert (after("imagejobs_job_attempts_total", **imports)
            - before("imagejobs_job_attempts_total", **imports)) == 2
    assert (after("imagejobs_sweeper_published_total", **imports)
            - before("imagejobs_sweeper_published_total", **imports)) == 1
    assert image_id not in after.body


def lease_owner(job_id: str) -> str | None:
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}")
    try:
        with engine.connect() as connection:
            return connection.scalar(text("SELECT lease_owner FROM jobs WHERE id = :id "
                                          "AND state = 'running'"), {"id": job_id})
    finally:
        engine.dispose()


def test_a_flushed_broker_changes_no_figure_postgres_holds(stack, waiting_delete):
    stack.api.wait_for(lambda: stack.consumers("imagejobs-pull") == 1, "the worker's announcement")
    before = stack.scrape()
    assert before("imagejobs_queue_ready_jobs", queue=NODE_QUEUE) == 1
    assert before("imagejobs_queue_consumers", queue=NODE_QUEUE) == 0

    redis.Redis.from_url(REDIS).flushdb()  # the delete's message is gone with it
    after = stack.scrape()

    assert after.of(*POSTGRES_FAMILIES) == before.of(*POSTGRES_FAMILIES)
    # The job still waits, as long as it did and longer.
    assert (after("imagejobs_queue_oldest_age_seconds", queue=NODE_QUEUE)
            >= before("imagejobs_queue_oldest_age_seconds", queue=NODE_QUEUE) > 0)
    # The workers say again what they consume within a sweep.
    stack.api.wait_for(lambda: stack.consumers("imagejobs-pull") == 1, "the announcement again")


def readme_rules() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### Metrics"):readme.index("## Guarantees")]
    [rules] = re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)
    return rules


def test_the_readme_alert_rules_are_valid(tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(readme_rules())
    checked = promtool("check", "rules", str(rules))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 2 rules found" in checked.stdout, checked.stdout


def test_prometheus_scrapes_the_api_and_sees_the_queue_nobody_consumes(stack, waiting_delete,
                                                                       tmp_path):
    rules = tmp_path / "rules.yml"
    rules.write_text(readme_rules())
    expressions = {rule["alert"]: rule["expr"]
                   for rule in yaml.safe_load(rules.read_text())["groups"][0]["rules"]}
    with prometheus_server(tmp_path, stack.base.removeprefix("http://"), rules) as prometheus:
        age = stack.api.wait_for(lambda: query(
            prometheus, f'imagejobs_queue_oldest_age_seconds{{queue="{NODE_QUEUE}"}} > 0'),
            "Prometheus to scrape the waiting job's age", timeout=60)
        assert float(age[0]["value"][1]) > 0
        assert age[0]["metric"]["job"] == "imagejobs"
        # The node-queue alert's expression names that queue, and no shared one.
        unconsumed = stack.api.wait_for(
            lambda: query(prometheus, expressions["ImagejobsNodeQueueUnconsumed"]),
            "the unconsumed node queue", timeout=60)
        assert [series["metric"]["queue"] for series in unconsumed] == [NODE_QUEUE]
        # The alert is pending: its `for` has not passed.
        alerts = stack.api.wait_for(lambda: requests.get(
            f"{prometheus}/api/v1/alerts", timeout=10).json()["data"]["alerts"],
            "the alert to be pending", timeout=30)
        assert {(a["labels"]["alertname"], a["labels"]["queue"], a["state"]) for a in alerts} == {
            ("ImagejobsNodeQueueUnconsumed", NODE_QUEUE, "pending")}


def test_metrics_answer_without_a_key(client):
    response = client.get("/metrics")
    assert response.status_code == 200, response.get_data(as_text=True)
    assert "# TYPE imagejobs_jobs gauge" in response.get_data(as_text=True)
