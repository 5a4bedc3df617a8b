"""Test services: a fresh Postgres database, a Redis database, the local Docker engine and registries.

`make test` starts the services (deploy/local-services.sh) before pytest. Tests that need Docker
fail, never skip, when it is missing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# Settings are read once, so the test environment is in place before the app is imported.
TEST_DATABASE = os.environ.get("IMAGEJOBS_TEST_DATABASE", "imagejobs_test")
os.environ["DATABASE_URL"] = f"postgresql+psycopg://postgres@127.0.0.1:5432/{TEST_DATABASE}"
os.environ["REDIS_URL"] = os.environ.get("IMAGEJOBS_TEST_REDIS", "redis://127.0.0.1:6379/15")
os.environ["IMAGEJOBS_SECRET_KEY"] = "test-secret-key-not-for-production"
os.environ["IMAGEJOBS_NODE_ID"] = "test-node"
os.environ["IMAGEJOBS_SWEEP_SECONDS"] = "1"
os.environ["IMAGEJOBS_RETRY_SECONDS"] = "1"
os.environ["IMAGEJOBS_PUBLISH_GRACE_SECONDS"] = "2"
# The tests' registries, git and file servers listen on 127.0.0.1, which users may not reach
# unless the operator allows it; 127.0.0.2 and the rest of loopback stay refused.
os.environ["IMAGEJOBS_ALLOWED_NETWORKS"] = "127.0.0.1/32"
# Small enough that the tests reach them quickly: a server that never answers, a long build log.
os.environ["IMAGEJOBS_FETCH_TIMEOUT"] = "3"
# A download's whole time: past the fetch timeout, so that a silent server still trips that first.
os.environ["IMAGEJOBS_FETCH_MAX_SECONDS"] = "6"
os.environ["IMAGEJOBS_BUILD_LOG_MAX_CHARS"] = "200000"
# Each test database its own upload folder: tests look into it, and its sweeper judges files of
# images it does not know by their age alone.
os.environ["IMAGEJOBS_UPLOAD_DIR"] = str(Path(__file__).resolve().parent.parent / ".test-logs"
                                         / f"uploads-{TEST_DATABASE}")
os.environ.setdefault("DOCKER_HOST", "unix:///var/run/docker.sock")
# The machine's env file (`deploy/local-services.sh` writes one for `make run`) is not the tests'.
os.environ["IMAGEJOBS_ENV_FILE"] = str(Path(__file__).resolve().parent / "no-env-file")

import pytest  # noqa: E402
import redis  # noqa: E402

from app import create_app, migrations  # noqa: E402
from app.db import transaction  # noqa: E402
from app.hubs.services import create_hub, create_key  # noqa: E402
from tests.support import dockerfile_context, recreate_database  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
REGISTRY = "127.0.0.1:5000"
AUTH_REGISTRY = "127.0.0.1:5001"
AUTH_USER, AUTH_PASSWORD = "imagejobs", "imagejobs-registry-pass"
BASE_IMAGE = "imagejobs/busybox:latest"


def pytest_configure(config: pytest.Config) -> None:
    recreate_database(TEST_DATABASE)
    # The uploads of the last run's database, which is gone.
    shutil.rmtree(os.environ["IMAGEJOBS_UPLOAD_DIR"], ignore_errors=True)
    migrations.upgrade()
    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()


@dataclass
class Tenant:
    """A hub with a key; `headers` authenticate as it."""

    hub_id: str
    key_id: str
    secret: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}", "X-Hub-Id": self.hub_id}


def make_tenant(*capabilities: str) -> Tenant:
    with transaction() as session:
        hub = create_hub(session, f"hub-{uuid.uuid4().hex[:8]}")
        key, secret = create_key(session, hub.id, "test key", capabilities)
        return Tenant(hub.id, key.id, secret)


@pytest.fixture
def tenant() -> Tenant:
    return make_tenant()


@pytest.fixture
def other_tenant() -> Tenant:
    return make_tenant()


@pytest.fixture(scope="session")
def app():
    return create_app()


@pytest.fixture
def client(app):
    return app.test_client()


class Api:
    """The Flask test client, authenticated as one tenant."""

    def __init__(self, client, tenant: Tenant):
        self.client = client
        self.tenant = tenant

    def __getattr__(self, method: str):
        def call(path: str, **kwargs):
            headers = {**self.tenant.headers, **kwargs.pop("headers", {})}
            return getattr(self.client, method)(path, headers=headers, **kwargs)
        return call

    def wait_for_job(self, job_id: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.get(f"/v1/jobs/{job_id}").get_json()["data"]
            if job["state"]["current"] in ("completed", "error", "expired"):
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} still {job['state']['current']}: {job}")
            time.sleep(0.2)


@pytest.fixture
def api(client, tenant) -> Api:
    return Api(client, tenant)


@pytest.fixture(scope="session")
def docker_client():
    """The local engine; its absence fails the test (make test starts it)."""
    import docker

    try:
        client = docker.DockerClient(base_url=os.environ["DOCKER_HOST"], version="auto")
        client.ping()
    except Exception as exc:
        pytest.fail(f"the Docker engine at {os.environ['DOCKER_HOST']} is not running ({exc}); "
                    "run deploy/local-services.sh (make test does)")
    yield client
    client.close()


@pytest.fixture(scope="session")
def worker(docker_client) -> Iterator[subprocess.Popen]:
    """A real Celery worker process on every shared queue and the test node's own."""
    log_path = ROOT / ".test-logs" / f"worker-{TEST_DATABASE}.log"
    log_path.parent.mkdir(exist_ok=True)
    with open(log_path, "w") as log:  # the worker keeps its own copy of the descriptor
        process = subprocess.Popen([sys.executable, "-m", "app.cli", "worker", "--concurrency",
                                    "2"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                   env=os.environ)
    deadline = time.monotonic() + 60
    while "ready." not in log_path.read_text():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.2)
    yield process
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


DOCKERFILE = """\
FROM imagejobs/busybox:latest
ENV GREETING=hello PATH=/bin
LABEL org.example.team=images org.example.tier=test
EXPOSE 8080/tcp 5353/udp
VOLUME /data
WORKDIR /srv
RUN echo built > /built.txt
USER nobody
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["echo ready"]
"""


@dataclass(frozen=True)
class PushedImage:
    """An image with a known config, pushed to both registries and absent from the engine."""

    public: str  # in the open registry
    private: str  # in the registry with htpasswd auth
    image_id: str
    size: int


@pytest.fixture(scope="session")
def pushed_image(docker_client) -> PushedImage:
    import io

    context = io.BytesIO(dockerfile_context(DOCKERFILE, compress=False))
    image, _ = docker_client.images.build(fileobj=context, custom_context=True,
                                          tag="imagejobs-tests/configured:v1", rm=True)
    tag = uuid.uuid4().hex[:8]
    public = f"{REGISTRY}/tests/configured:{tag}"
    private = f"{AUTH_REGISTRY}/private/configured:{tag}"
    auth = {"username": AUTH_USER, "password": AUTH_PASSWORD}
    for reference, auth_config in ((public, None), (private, auth)):
        repository, _, version = reference.rpartition(":")
        image.tag(repository, version)
        for event in docker_client.api.push(repository, version, stream=True, decode=True,
                                            auth_config=auth_config):
            assert "error" not in event, event
        docker_client.images.remove(reference)
    image.reload()
    return PushedImage(public=public, private=private, image_id=image.id,
                       size=image.attrs["Size"])
