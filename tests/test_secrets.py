"""Secrets are write-only: planted credentials do real work, then are found nowhere they could leak.

A real API and a real worker run as processes (the API of this module, the suite's worker),
so that their logs are files. Known, unique
secrets are planted in sources (registry passwords and tokens, git passwords, an SSH key and its
passphrase, registry credentials of a build) and used for real: imports from the registry with
htpasswd auth, clones from a git server with basic auth, a build whose Dockerfile looks for them.
Then every response body, every row of the hub in Postgres and every log line is searched.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import docker.errors
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select

from app import vault
from app.db import transaction
from app.hubs import services as key_services
from app.images import services as image_services
from app.images.models import BuildLogChunk
from app.models import ApiKey, BuildLog, Hub, Image, ImageSource, Job
from tests.api_calls import make_tenant, oci_origin, registry_origin
from tests.image_builds import dockerfile_context
from tests.processes import api_server, free_port
from tests.servers import FileServer, GitServer, Revision
from tests.services import AUTH_PASSWORD, AUTH_REGISTRY, AUTH_USER, BASE_IMAGE, ROOT, TEST_DATABASE

PRIVATE_TARGET = "private/busybox:latest"  # on the registry with htpasswd auth
FINAL = ("completed", "error", "expired")


def planted(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


def ssh_key(passphrase: str) -> str:
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(passphrase.encode()))
    return key.decode()


class Recorder:
    """Calls the API process as one tenant and keeps every response body it is given."""

    def __init__(self, base: str, headers: dict[str, str]):
        self.base = base
        self.session = requests.Session()
        self.session.headers.update(headers)
        self.bodies: list[tuple[str, str]] = []  # (what was asked, what was answered)

    def call(self, method: str, path: str, status: int | None = None, **kwargs: Any) -> Any:
        response = self.session.request(method, self.base + path, timeout=60, **kwargs)
        self.bodies.append((f"{method} {path.split('?')[0]}", response.text))
        if status is not None:
            assert response.status_code == status, response.text
        return response.json()

    def image_of(self, origin: dict[str, Any]) -> dict[str, Any]:
        source = self.call("POST", "/v1/images/sources", 201,
                           json={"type": "direct", "origin": origin})["data"]
        return self.call("POST", "/v1/images", 201, json={"source_id": source["id"]})["data"]

    def start_import(self, image: dict[str, Any]) -> str:
        return self.call("POST", f"/v1/images/{image['id']}/tasks", 202,
                         json={"action": "import"})["data"]["job"]["id"]

    def wait(self, job_ids: dict[str, str], timeout: float = 120) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        ended: dict[str, dict[str, Any]] = {}
        while len(ended) < len(job_ids):
            for label, job_id in job_ids.items():
                if label not in ended:
                    job = self.call("GET", f"/v1/jobs/{job_id}", 200)["data"]
                    if job["state"]["current"] in FINAL:
                        ended[label] = job
            assert time.monotonic() < deadline, f"jobs still running: {set(job_ids) - set(ended)}"
            time.sleep(0.2)
        return ended


@dataclass
class Run:
    """What the module's work planted, what it did, and everywhere its traces could be."""

    hub_id: str
    needles: dict[str, str]  # what must never be shown, by name
    jobs: dict[str, dict[str, Any]]
    images: dict[str, dict[str, Any]]
    build_log: str
    refused_bodies: list[int]
    bodies: list[tuple[str, str]]
    token_shown_in: str  # the one response that shows the upload token
    logs: list[Any] = field(default_factory=list)


def found_in(text: str, needles: dict[str, str]) -> list[str]:
    return sorted(name for name, secret in needles.items() if secret in text)


def planted_origins(needles: dict[str, str], repo_url: str, login_context: str
                    ) -> dict[str, dict[str, Any]]:
    """An origin for each way a secret is used, by label: the right registry password and git
    password, and wrong or unusable ones that must fail without showing themselves."""
    passphrase, key = needles["ssh passphrase"], needles["ssh key"]
    return {
        "registry": registry_origin(PRIVATE_TARGET, AUTH_REGISTRY, username=AUTH_USER,
                                    password=AUTH_PASSWORD),
        "registry wrong password": registry_origin(
            PRIVATE_TARGET, AUTH_REGISTRY, username=AUTH_USER,
            password=needles["wrong registry password"]),
        "registry token": registry_origin(PRIVATE_TARGET, AUTH_REGISTRY, username=AUTH_USER,
                                          token=needles["registry token"]),
        "oci token": oci_origin(PRIVATE_TARGET, AUTH_REGISTRY, username=AUTH_USER,
                                token=needles["oci token"]),
        **{label: {"type": "docker-file", "details": {"repo": {
            "url": repo_url, "auth": {"type": "http", "credentials": {
                "username": GitServer.USER, "password": needles[secret]}}}}}
           for label, secret in (("git", "git password"),
                                 ("git wrong password", "wrong git password"))},
        # Nothing listens on that port: the worker writes the key for ssh, which then fails to
        # connect. The failure must not show the key or its passphrase either.
        "ssh": {"type": "docker-file", "details": {"repo": {
            "url": f"ssh://git@127.0.0.1:{free_port()}/private/app.git",
            "auth": {"type": "ssh", "credentials": {
                "username": "git", "passphrase": passphrase, "private_key": key}}}}},
        "build login": {"type": "docker-file", "details": {
            "targz_url": login_context, "credentials": [{
                "url": AUTH_REGISTRY, "username": AUTH_USER,
                "token": needles["build login token"]}]}},
    }


@pytest.fixture(scope="module")
def run(docker_client, worker, tmp_path_factory) -> Iterator[Run]:
    tenant = make_tenant()
    passphrase = planted("ssh-pass")
    key = ssh_key(passphrase)
    needles = {
        "registry password": AUTH_PASSWORD, "wrong registry password": planted("reg-pass"),
        "registry token": planted("reg-token"), "oci token": planted("oci-token"),
        "git password": planted("git-pass"), "wrong git password": planted("git-wrong"),
        "ssh passphrase": passphrase, "ssh key": key, "build login token": planted("login-token"),
        "api key": tenant.secret, "invalid body secret": planted("body-secret"),
        **{f"ssh key line {n}": line for n, line in enumerate(key.splitlines()) if len(line) > 40},
    }
    files, git = FileServer(), GitServer(tmp_path_factory.mktemp("git"))
    git.PASSWORD = needles["git password"]
    git.create_repo("private/app.git", [Revision({"Dockerfile": (
        f"FROM {BASE_IMAGE}\nCOPY . /context/\n"
        # What a Dockerfile could find of the clone's credentials: its environment and files.
        'RUN env; grep -rhoa "git-pass-[0-9a-f]*" /context /etc /root /tmp 2>/dev/null; '
        "echo scanned\n")})])
    login_context = files.add("/login.tar.gz", dockerfile_context(f"FROM {BASE_IMAGE}\n"))
    api_name = f"secrets-api-{TEST_DATABASE}"
    logs = [ROOT / ".test-logs" / f"{name}.log" for name in (api_name, f"worker-{TEST_DATABASE}")]

    with api_server(api_name) as base:
        api = Recorder(base, tenant.headers)
        origins = planted_origins(needles, git.url("/private/app.git"), login_context)
        images = {label: api.image_of(origin) for label, origin in origins.items()}
        job_ids = {label: api.start_import(image) for label, image in images.items()}

        images["upload"] = api.image_of({"type": "cycle-upload"})
        token_shown_in = api.bodies[-1][1]
        needles["upload token"] = images["upload"]["source"]["details"]["origin"]["details"][
            "token"]
        tar = b"".join(docker_client.images.get(BASE_IMAGE).save(named=True))
        job_ids["upload"] = api.call(
            "POST", f"/v1/images/{images['upload']['id']}/upload?token={needles['upload token']}",
            202, data=tar, headers={"Content-Type": "application/x-tar"})["data"]["job"]["id"]

        refused = [requests.post(f"{base}/v1/images/sources", headers=tenant.headers, json={
            "type": "direct", "origin": origin}, timeout=30) for origin in (
            registry_origin("team/app:v1", "127.0.0.1:5000/a/path", password=needles["invalid body secret"]),
            {"type": "docker-registry", "details": {"url": "http://r.example", "target": "a:b",
                                                    "passwd": needles["invalid body secret"]}})]
        api.bodies += [("POST refused", r.text) for r in refused]

        jobs = api.wait(job_ids)
        for image in images.values():
            api.call("GET", f"/v1/images/{image['id']}?include=creators,sources", 200)
            api.call("GET", f"/v1/images/{image['id']}/build-log")
            source_id = image["source"]["details"]["id"]
            api.call("GET", f"/v1/images/sources/{source_id}?include=creators&meta=images_count",
                     200)
        api.call("PATCH", f"/v1/images/sources/{images['registry']['source']['details']['id']}",
                 200, json={"name": "renamed"})
        api.call("GET", "/v1/images/sources?filter[state]=live,deleting,deleted&include=creators"
                 "&meta=images_count&page[size]=100", 200)
        api.call("GET", "/v1/images?include=creators,sources&page[size]=100", 200)
        api.call("GET", "/v1/jobs?include=creators&page[size]=100", 200)
        shown = {label: api.call("GET", f"/v1/images/{image['id']}", 200)["data"]
                 for label, image in images.items()}
        build_log = api.call("GET", f"/v1/images/{images['git']['id']}/build-log", 200)
        api.session.close()  # an open keep-alive connection would hold up the API's exit
    files.close()
    git.close()

    yield Run(tenant.hub_id, needles, jobs, shown, build_log["data"]["log"],
              [r.status_code for r in refused], api.bodies, token_shown_in, logs)

    for image in shown.values():  # leave the shared engine as found
        if image["backend"]["file_name"]:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(image["backend"]["file_name"])


def test_the_planted_secrets_did_real_work(run):
    assert {label: job["state"]["current"] for label, job in run.jobs.items()} == {
        "registry": "completed", "git": "completed", "upload": "completed",
        "registry wrong password": "error", "registry token": "error", "oci token": "error",
        "git wrong password": "error", "ssh": "error", "build login": "error"}
    for label in ("registry wrong password", "registry token", "oci token", "git wrong password",
                  "build login"):
        assert "refused the credentials" in run.jobs[label]["state"]["error"]["message"], label
    assert {run.images[label]["state"]["current"] for label in ("registry", "git", "upload")} == {
        "live"}
    # The Dockerfile of the clone printed its environment and searched its files.
    assert "PATH=" in run.build_log and "scanned" in run.build_log
    assert run.refused_bodies == [422, 422]


def test_no_response_shows_a_secret(run):
    leaks = {}
    for asked, body in run.bodies:
        hidden = {k: v for k, v in run.needles.items()
                  if not (k == "upload token" and body == run.token_shown_in)}
        if found := found_in(body, hidden):
            leaks[asked] = found
    assert leaks == {}
    assert run.needles["upload token"] in run.token_shown_in  # shown once, where it was made


def test_no_job_build_log_or_other_row_of_the_hub_holds_a_secret(run):
    rows = []
    with transaction() as session:
        for model in (Hub, ApiKey, ImageSource, Image, Job, BuildLog):
            column = model.id if model is Hub else model.hub_id
            for row in session.execute(select(model.__table__).where(column == run.hub_id)):
                rows.append(" ".join(value.decode("latin-1") if isinstance(value, bytes)
                                     else json.dumps(value, default=str) for value in row))
        # The build logs' text, in the chunks of the hub's images.
        rows.extend(session.scalars(select(BuildLogChunk.text).where(BuildLogChunk.image_id.in_(
            select(Image.id).where(Image.hub_id == run.hub_id)))))
    assert len(rows) > 20
    assert found_in("\n".join(rows), run.needles) == []


def test_no_log_line_holds_a_secret(run):
    texts = {path.name: path.read_text(errors="replace") for path in run.logs}
    logged = "\n".join(texts.values())
    # These are the logs of the processes that did the work: they name every job they ran.
    assert all(job["id"] in logged for job in run.jobs.values())
    assert {name: found_in(text, run.needles) for name, text in texts.items()} == {
        name: [] for name in texts}


def test_secrets_are_stored_encrypted_and_still_usable(run):
    origin_secrets = {"registry password", "wrong registry password", "registry token",
                      "oci token", "git password", "wrong git password", "ssh passphrase",
                      "ssh key", "build login token"}
    sealed_values = set()
    with transaction() as session:
        for model in (ImageSource, Image):
            for sealed in session.scalars(select(model.origin_secrets).where(
                    model.hub_id == run.hub_id, model.origin_secrets.is_not(None))):
                assert found_in(bytes(sealed).decode("latin-1"), run.needles) == []
                sealed_values.update(vault.unseal(sealed).values())
    assert {run.needles[name] for name in origin_secrets} <= sealed_values


def test_keys_and_upload_tokens_are_stored_only_as_hashes(run):
    with transaction() as session:
        key_hashes = set(session.scalars(select(ApiKey.secret_hash).where(
            ApiKey.hub_id == run.hub_id)))
        token_hash = session.scalar(select(Image.upload_token_hash).where(
            Image.id == run.images["upload"]["id"]))
    assert key_hashes == {hashlib.sha256(run.needles["api key"].encode()).hexdigest()}
    assert token_hash == hashlib.sha256(run.needles["upload token"].encode()).hexdigest()


# --- comparing secrets ---------------------------------------------------------------------------


@pytest.fixture
def comparisons(monkeypatch) -> list[tuple[str, str]]:
    """Every comparison of a presented secret with a stored one, as the services make it.

    A spy, not a stand-in: it records the arguments and returns what hmac.compare_digest says.
    """
    seen: list[tuple[str, str]] = []

    def compare_digest(stored: str, presented: str) -> bool:
        seen.append((stored, presented))
        return hmac.compare_digest(stored, presented)

    spy = SimpleNamespace(compare_digest=compare_digest)
    monkeypatch.setattr(key_services, "hmac", spy)
    monkeypatch.setattr(image_services, "hmac", spy)
    return seen


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_an_api_key_is_found_by_its_id_and_compared_in_constant_time(client, tenant,
                                                                    comparisons):
    """The row is looked up by the key id the secret carries; the secret itself meets the stored
    value only as a SHA-256 digest of the same length, through hmac.compare_digest."""
    guessed = f"ij_{tenant.key_id}_{'x' * 43}"
    assert client.get("/v1/images", headers=tenant.headers).status_code == 200
    bad = client.get("/v1/images", headers={**tenant.headers, "Authorization": f"Bearer {guessed}"})
    assert bad.status_code == 401
    stored = sha256(tenant.secret)
    assert comparisons == [(stored, sha256(tenant.secret)), (stored, sha256(guessed))]


def test_an_upload_token_is_compared_in_constant_time(api, comparisons):
    source = api.post("/v1/images/sources", json={"type": "direct",
                                                  "origin": {"type": "cycle-upload"}})
    image = api.post("/v1/images", json={"source_id": source.get_json()["data"]["id"]}
                     ).get_json()["data"]
    token = image["source"]["details"]["origin"]["details"]["token"]
    response = api.post(f"/v1/images/{image['id']}/upload?token=guessed", data=b"x",
                        content_type="application/x-tar")
    assert response.status_code == 401
    assert [c for c in comparisons if c[0] == sha256(token)] == [
        (sha256(token), sha256("guessed"))]
