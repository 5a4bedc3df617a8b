"""Fixtures on the test services (tests/services.py): a fresh Postgres database and Redis database,
the local Docker engine and registries.

`make test` starts the services (deploy/local-services.sh) before pytest. Tests that need Docker
fail, never skip, when it is missing. A run of tests/unit alone touches none of them.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from app import create_app, migrations
from app.config import Settings, use_settings
from tests.api_calls import Api, Tenant, make_tenant
from tests.image_builds import dockerfile_context
from tests.servers import FileServer
from tests.services import (
    AUTH_PASSWORD,
    AUTH_REGISTRY,
    AUTH_USER,
    REGISTRY,
    ROOT,
    TEST_DATABASE,
    TEST_ENVIRONMENT,
    recreate_database,
)

# The processes the tests start (API servers, workers, commands) read their settings from the
# environment, as deployed ones do; this process is given them as an object.
os.environ.update(TEST_ENVIRONMENT)
SETTINGS = use_settings(Settings.from_env(os.environ))
UNIT = Path(__file__).resolve().parent / "unit"


@pytest.fixture(scope="session", autouse=True)
def services(request: pytest.FixtureRequest) -> None:
    """Before the first test, unless every test is a unit test: a fresh database, migrated, an
    empty Redis database, and no uploads left by the last run's database, which is gone."""
    if all(UNIT in item.path.parents for item in request.session.items):
        return
    recreate_database(TEST_DATABASE)
    shutil.rmtree(SETTINGS.upload_dir, ignore_errors=True)
    migrations.upgrade()
    redis.Redis.from_url(SETTINGS.redis_url).flushdb()


@pytest.fixture
def tenant() -> Tenant:
    return make_tenant()


@pytest.fixture
def other_tenant() -> Tenant:
    return make_tenant()


@pytest.fixture(scope="session")
def app():
    return create_app(SETTINGS)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def api(client, tenant) -> Api:
    return Api(client, tenant)


@pytest.fixture(scope="session")
def docker_client():
    """The local engine; its absence fails the test (make test starts it)."""
    import docker

    try:
        client = docker.DockerClient(base_url=SETTINGS.docker_host, version="auto")
        client.ping()
    except Exception as exc:
        pytest.fail(f"the Docker engine at {SETTINGS.docker_host} is not running ({exc}); "
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


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    """A loopback server of build contexts (`files.add(path, data)` gives its URL), for a module."""
    server = FileServer()
    yield server
    server.close()


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
