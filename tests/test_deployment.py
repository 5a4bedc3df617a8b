"""The compose deployment (deploy/compose.yaml) for real: the image deploy/build-image.sh builds,
the API and every worker pool in containers of it, on this machine's Postgres, Redis, engines and
registries (deploy/compose.host.yaml), driven through the containerised API as the README's quick
start drives it. Everything it starts is removed at the end, whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import docker
import docker.errors
import pytest
import redis
from sqlalchemy import create_engine, text

from app.images.models import engine_tag
from tests.api_calls import repository_path
from tests.image_builds import build_image, dockerfile_context
from tests.processes import ApiClient, free_port
from tests.servers import FileServer, GitServer, Revision
from tests.services import AUTH_PASSWORD, AUTH_USER, ROOT, recreate_database

pytestmark = pytest.mark.docker

ENGINE_A = "unix:///var/run/docker.sock"
ENGINE_B = "unix:///var/run/imagejobs/docker-b.sock"
PROJECT = "imagejobs-test-deploy"
DATABASE = "imagejobs_deploy"
REDIS_DB = 11
# docker-compose 1.29 is Debian 12's; Compose v2 reads the same files.
COMPOSE = ["docker-compose"] if shutil.which("docker-compose") else ["docker", "compose"]
FILES = ["-f", "deploy/compose.yaml", "-f", "deploy/compose.host.yaml"]
SERVICES = ["host-api", "pull-workers", "build-workers", "maintenance-workers", "node-1", "node-2"]
BUILD_REPLICAS = 2


def compose_env(**variables: str) -> dict[str, str]:
    """What compose interpolates, and nothing of the tests' own settings (their secret key above
    all: the deployment must make and share its own)."""
    return {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
            "DOCKER_HOST": ENGINE_A, **variables}


def compose(env: dict[str, str], *args: str, files: list[str] = FILES, check: bool = True,
            timeout: float = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([*COMPOSE, *files, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"compose {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result


def docker_cli(*args: str, check: bool = True) -> str:
    result = subprocess.run(["docker", "-H", ENGINE_A, *args], capture_output=True, text=True,
                            timeout=120)
    if check:
        assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stdout}{result.stderr}"
    return result.stdout


@dataclass
class Deployment:
    api: str  # the API's base URL

    def containers(self, service: str | None = None, every: bool = False) -> list[str]:
        """Ids of the project's containers (of one service), running or, with `every`, not."""
        labels = [f"label=com.docker.compose.project={PROJECT}"]
        if service:
            labels.append(f"label=com.docker.compose.service={service}")
        args = ["ps", "-q", *(["-a"] if every else [])]
        for label in labels:
            args += ["--filter", label]
        return docker_cli(*args).split()

    def logs(self, container: str) -> str:
        result = subprocess.run(["docker", "-H", ENGINE_A, "logs", container],
                                capture_output=True, text=True, timeout=60)
        return result.stdout + result.stderr

    def cli(self, *args: str) -> str:
        """`imagejobs ARGS` inside the API's container, as an operator runs it."""
        return docker_cli("exec", self.containers("host-api")[0], "imagejobs", *args).strip()


def states(containers: list[str]) -> dict[str, str]:
    """Each container's health (`healthy`, `starting`, ...) or, without one, its status."""
    out = docker_cli("inspect", "--format",
                     "{{.Id}} {{if .State.Health}}{{.State.Health.Status}}{{else}}"
                     "{{.State.Status}}{{end}}", *containers)
    return dict(line.split() for line in out.splitlines())


def report(request, line: str) -> None:
    """A line in pytest's own output, whether the test's output is captured or not."""
    plugins = request.config.pluginmanager
    with plugins.get_plugin("capturemanager").global_and_fixture_disabled():
        plugins.get_plugin("terminalreporter").write_line(line)


def untag_images() -> None:
    """Take off both engines every image the deployment's database knows, as its deletes would."""
    database = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}")
    with database.connect() as connection:
        ids = connection.execute(text("SELECT id FROM images")).scalars().all()
    database.dispose()
    for url in (ENGINE_A, ENGINE_B):
        engine = docker.DockerClient(base_url=url, version="auto")
        try:
            for image_id in ids:
                with contextlib.suppress(docker.errors.ImageNotFound):
                    engine.images.remove(":".join(engine_tag(image_id)))
        finally:
            engine.close()


@pytest.fixture(scope="module")
def image() -> None:
    """imagejobs:latest, built by the script `make image` runs (all cache when nothing changed)."""
    build_image()


@pytest.fixture(scope="module")
def deployment(request, image) -> Iterator[Deployment]:
    gids = {os.stat(path.removeprefix("unix://")).st_gid for path in (ENGINE_A, ENGINE_B)}
    assert len(gids) == 1, f"the engines' sockets belong to different groups {gids}"
    port = free_port()
    env = compose_env(POSTGRES_PASSWORD="unused", DOCKER_GID=str(gids.pop()),
                      IMAGEJOBS_API_PORT=str(port), IMAGEJOBS_DATABASE=DATABASE,
                      IMAGEJOBS_REDIS_DB=str(REDIS_DB))
    recreate_database(DATABASE)
    redis.Redis.from_url(f"redis://127.0.0.1:6379/{REDIS_DB}").flushdb()
    deployment = Deployment(f"http://127.0.0.1:{port}")
    try:
        started = time.monotonic()
        made = compose(env, "-p", PROJECT, "run", "--rm", "--no-deps", "secret-key").stdout
        assert "wrote a new secret key" in made, made
        # Run again, as every `up` does: the key stays the one every service already has.
        kept = compose(env, "-p", PROJECT, "run", "--rm", "--no-deps", "secret-key").stdout
        assert "kept the secret key" in kept, kept
        compose(env, "-p", PROJECT, "run", "--rm", "--no-deps", "migrate")
        one_shots = time.monotonic() - started

        upping = time.monotonic()
        compose(env, "-p", PROJECT, "up", "-d", "--no-deps", "--scale",
                f"build-workers={BUILD_REPLICAS}", *SERVICES)
        expected = len(SERVICES) - 1 + BUILD_REPLICAS
        deadline = time.monotonic() + 180
        while True:
            containers = deployment.containers()
            health = states(containers)
            if len(containers) == expected and set(health.values()) == {"healthy"}:
                break
            failed = [c for c, state in health.items() if state not in ("healthy", "starting")]
            assert not failed and time.monotonic() < deadline, \
                f"not healthy: {health}\n" + "\n".join(deployment.logs(c)[-3000:] for c in failed)
            time.sleep(0.5)
        report(request, f"\ndeployment: key and migration in {one_shots:.1f} s; up to the API "
                        f"and {expected - 1} workers healthy in {time.monotonic() - upping:.1f} s")
        yield deployment
    finally:
        logs = ROOT / ".test-logs"
        logs.mkdir(exist_ok=True)
        for container in deployment.containers(every=True):
            name = docker_cli("inspect", "--format", "{{.Name}}", container).strip("/\n")
            (logs / f"{name}.log").write_text(deployment.logs(container))
        compose(env, "-p", PROJECT, "down", "-v", "--remove-orphans", check=False)
        untag_images()
        left = deployment.containers(every=True) + docker_cli(
            "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}").split()
        assert not left, f"compose down left {left}"


@pytest.fixture(scope="module")
def client(deployment) -> ApiClient:
    hub = deployment.cli("hub", "create", "deployment")
    key = deployment.cli("key", "create", "--hub", hub)
    return ApiClient(deployment.api, {"Authorization": f"Bearer {key}", "X-Hub-Id": hub})


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[tuple[FileServer, GitServer]]:
    files, git = FileServer(), GitServer(tmp_path_factory.mktemp("deploy-git"))
    yield files, git
    files.close()
    git.close()


@pytest.fixture(scope="module")
def engine_b() -> Iterator[docker.DockerClient]:
    client = docker.DockerClient(base_url=ENGINE_B, version="auto")
    yield client
    client.close()


def holds(engine: docker.DockerClient, reference: str) -> bool:
    try:
        engine.images.get(reference)
        return True
    except docker.errors.ImageNotFound:
        return False


def new_image(client: ApiClient, origin: dict) -> dict:
    source = client.call("POST", "/v1/images/sources", json={"type": "direct", "origin": origin})
    return client.call("POST", "/v1/images", json={"source_id": source["id"]})


def completed(client: ApiClient, job_id: str, timeout: float = 120) -> dict:
    """The job once it ended, which must be `completed`."""
    job = client.wait_for(lambda: (job := client.job(job_id))["state"]["current"] in (
        "completed", "error", "expired") and job, f"job {job_id} to end", timeout)
    error = job["state"].get("error") or {}
    assert job["state"]["current"] == "completed", \
        f"job {job_id} ended {job['state']['current']}: {error.get('message')}"
    return job


def build_log(client: ApiClient, image_id: str) -> str:
    """The image's build log so far; empty until its build started."""
    response = client.http.get(f"{client.base}/v1/images/{image_id}/build-log", timeout=10)
    return response.json()["data"]["log"] if response.status_code == 200 else ""


def echoed(word: str) -> str:
    """A shell command printing `word`, which its own text (in the log's step line) does not hold."""
    return f"echo '{word[:1]}''{word[1:]}'"


def imported(client: ApiClient, image_id: str) -> dict:
    """The image once its import completed (the upload's import starts by itself)."""
    job = client.call("POST", f"/v1/images/{image_id}/tasks", json={"action": "import"})
    completed(client, job["job"]["id"])
    return client.call("GET", f"/v1/images/{image_id}")


def test_the_compose_file_is_valid_and_refuses_to_run_without_a_database_password():
    full = ["-f", "deploy/compose.yaml"]
    services = compose(compose_env(POSTGRES_PASSWORD="p"), "config", "--services", files=full)
    assert set(services.stdout.split()) == {
        "postgres", "redis", "registry", "secret-key", "migrate", "api", "pull-workers",
        "build-workers", "maintenance-workers", "node-1", "docker-1", "node-2", "docker-2"}
    compose(compose_env(POSTGRES_PASSWORD="p"), "config", "-q", files=full)
    unset = compose(compose_env(), "config", "-q", files=full, check=False)
    assert unset.returncode != 0 and "set POSTGRES_PASSWORD" in unset.stderr, unset.stderr


def test_the_quick_start_through_the_containerised_api(deployment, client, servers, pushed_image,
                                                       docker_client, engine_b):
    files, git = servers

    # A registry import with credentials: the API seals them, a pull worker opens them, so
    # both read the one key the secret-key one-shot made.
    private = new_image(client, {"type": "docker-registry", "details": {
        "url": "http://127.0.0.1:5001", "target": repository_path(pushed_image.private),
        "username": AUTH_USER, "password": AUTH_PASSWORD}})
    pulled = imported(client, private["id"])
    assert pulled["state"]["current"] == "live"
    assert pulled["backend"]["file_id"] == pushed_image.image_id
    assert pulled["factory"]["node_id"] == "node-1"
    assert holds(docker_client, pulled["backend"]["file_name"])
    assert not holds(engine_b, pulled["backend"]["file_name"])

    # A Dockerfile build from a git repository, cloned by the git inside the image.
    marker = f"built-in-a-container-{uuid.uuid4().hex[:8]}"
    git.create_repo("app.git", [Revision({
        "Dockerfile": f"FROM imagejobs/busybox:latest\nRUN {echoed(marker)}\n"})])
    built = new_image(client, {"type": "docker-file", "details": {
        "repo": {"url": git.url("/app.git"), "branch": "main"}}})
    built = imported(client, built["id"])
    assert built["factory"]["node_id"] == "node-2"
    assert holds(engine_b, built["backend"]["file_name"])
    assert not holds(docker_client, built["backend"]["file_name"])
    assert marker in build_log(client, built["id"])

    # An upload: the API writes the tar to the shared volume, a pull worker loads it from there.
    saved = b"".join(docker_client.images.get("imagejobs/busybox:latest").save(named=True))
    upload = new_image(client, {"type": "cycle-upload"})
    token = upload["source"]["details"]["origin"]["details"]["token"]
    response = client.http.post(f"{client.base}/v1/images/{upload['id']}/upload",
                                params={"token": token}, data=saved,
                                headers={"Content-Type": "application/x-tar"}, timeout=60)
    assert response.status_code == 202, response.text
    completed(client, response.json()["data"]["job"]["id"])
    uploaded = client.call("GET", f"/v1/images/{upload['id']}")
    assert uploaded["state"]["current"] == "live" and uploaded["factory"]["node_id"] == "node-1"
    assert holds(docker_client, uploaded["backend"]["file_name"])
    # The worker removed the tar once loaded, and the API's container sees it gone.
    left = docker_cli("exec", deployment.containers("host-api")[0], "ls", "-A",
                      "/var/lib/imagejobs/uploads")
    assert left.strip() == "", left

    # The built image is node-2's: its delete goes to node-2's queue, and node-2's worker does it.
    deleting = client.call("DELETE", f"/v1/images/{built['id']}")
    assert deleting["job"]["queue"] == "imagejobs-node-node-2"
    completed(client, deleting["job"]["id"])
    claimed = f"job {deleting['job']['id']}: claimed"
    assert claimed in deployment.logs(deployment.containers("node-2")[0])
    assert claimed not in deployment.logs(deployment.containers("node-1")[0])
    assert not holds(engine_b, built["backend"]["file_name"])
    assert holds(docker_client, pulled["backend"]["file_name"])
    assert client.call("GET", f"/v1/images/{built['id']}")["state"]["current"] == "deleted"


def test_a_build_worker_killed_mid_build_leaves_its_job_to_the_other(deployment, client, servers,
                                                                     engine_b):
    files, _ = servers
    run = uuid.uuid4().hex[:8]
    url = files.add(f"/{run}.tar.gz", dockerfile_context(
        f"FROM imagejobs/busybox:latest\n"
        f"RUN {echoed(f'started-{run}')} && sleep 8 && {echoed(f'finished-{run}')}\n"))
    image = new_image(client, {"type": "docker-file", "details": {"targz_url": url}})
    job_id = client.call("POST", f"/v1/images/{image['id']}/tasks",
                         json={"action": "import"})["job"]["id"]

    client.wait_for(lambda: f"started-{run}" in build_log(client, image["id"])
                    or client.job(job_id)["state"]["current"] not in ("queued", "running"),
                    "the build to start")
    assert f"started-{run}" in build_log(client, image["id"]), client.job(job_id)["state"]
    replicas = deployment.containers("build-workers")
    assert len(replicas) == BUILD_REPLICAS
    holder = [c for c in replicas if f"job {job_id}: claimed" in deployment.logs(c)]
    assert len(holder) == 1, f"{len(holder)} build workers claimed job {job_id}"
    docker_cli("kill", holder[0])

    completed(client, job_id, timeout=180)  # once the dead worker's lease lapses
    other = next(c for c in replicas if c != holder[0])
    assert f"job {job_id}: claimed (image.import, attempt 2)" in deployment.logs(other)
    assert f"job {job_id}: completed" in deployment.logs(other)
    assert docker_cli("inspect", "--format", "{{.State.Running}}", holder[0]).strip() == "false"
    # Built once: one finished build in the log, one image in the engine.
    assert build_log(client, image["id"]).count(f"finished-{run}") == 1
    live = client.call("GET", f"/v1/images/{image['id']}")
    assert live["state"]["current"] == "live"
    assert engine_b.images.get(live["backend"]["file_name"]).id == live["backend"]["file_id"]
