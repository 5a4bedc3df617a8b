"""An import's pure parts: the stored origin read back, what it pulls or clones and with which
credentials, its importer, and the spec's image config read from the engine's inspect."""

from __future__ import annotations

from typing import Any

import pytest

from app.images.models import ImageState
from app.sources.origins import DockerFileOrigin, stored_origin
from workers.context import RepoSpec
from workers.engine import RegistryAuth
from workers.faults import JobFailed
from workers.tasks.imports import (
    DOCKER_HUB_SERVER,
    image_config,
    importer_of,
    pull_spec,
    read_origin,
    repo_spec,
)

HOST = "registry.example.com:5000"


def hub(target: str, **credentials: str) -> dict[str, Any]:
    return {"type": "docker-hub", "details": {"target": target, **credentials}}


def registry(url: str, target: str, **credentials: str) -> dict[str, Any]:
    return {"type": "docker-registry", "details": {"url": url, "target": target, **credentials}}


def oci(url: str, target: str, auth: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "oci-registry", "details": {"url": url, "target": target,
                                                **({"auth": auth} if auth else {})}}


# Each origin as stored (the API checked it when the source was saved), read back into its model.
@pytest.mark.parametrize(("origin", "override", "spec"), [
    (hub("library/nginx:1.27"), {}, ("library/nginx:1.27", None)),
    (hub("library/nginx:1.27"), {"target": "library/nginx:1.26"}, ("library/nginx:1.26", None)),
    (hub("team/private:v1", username="ci", token="dckr_pat"), {},
     ("team/private:v1", RegistryAuth("ci", "dckr_pat", DOCKER_HUB_SERVER))),
    (hub("docker.io/team/private:v1", token="dckr_pat"), {},
     ("docker.io/team/private:v1", RegistryAuth("", "dckr_pat", DOCKER_HUB_SERVER))),
    (registry(f"https://{HOST}/", "team/app:v1"), {}, (f"{HOST}/team/app:v1", None)),
    # A target that repeats the registry's host is not prefixed twice.
    (registry(f"http://{HOST}", f"{HOST}/team/app:v1"), {}, (f"{HOST}/team/app:v1", None)),
    (registry(f"https://{HOST}", "team/app:v1", username="ci", password="pw"), {},
     (f"{HOST}/team/app:v1", RegistryAuth("ci", "pw", HOST))),
    (registry(f"https://{HOST}", "team/app:v1", username="ci", token="tk"), {},
     (f"{HOST}/team/app:v1", RegistryAuth("ci", "tk", HOST))),
    (registry("https://[2001:db8::1]:5000", "team/app:v1"), {},
     ("[2001:db8::1]:5000/team/app:v1", None)),
    (oci(f"https://{HOST}", "team/app:v1"), {}, (f"{HOST}/team/app:v1", None)),
    (oci(f"https://{HOST}", "team/app:v1", {"type": "user", "details": {"username": "ci",
                                                                        "token": "tk"}}),
     {"target": "team/app:v2"}, (f"{HOST}/team/app:v2", RegistryAuth("ci", "tk", HOST))),
])
def test_an_origin_pulls_its_target_with_its_own_credentials(origin, override, spec):
    assert pull_spec(stored_origin(origin), override) == spec


@pytest.mark.parametrize(("origin", "message"), [
    # The engine would send Docker Hub credentials wherever the target leads.
    (hub("ghcr.io/team/app:v1", username="ci", token="dckr_pat"),
     "The image cannot be imported: the credentials of a docker-hub source go to Docker Hub "
     "alone, and `ghcr.io/team/app:v1` names the registry ghcr.io"),
    # A host the engine reads as a Docker Hub account (made before the API refused it).
    (registry("https://registry", "team/app:v1"),
     "The registry `registry` is read by the Docker engine as a Docker Hub account"),
    (oci(f"https://{HOST}", "team/app:v1", {"type": "provider", "details": {
        "flavor": "ecr", "credentials": {"region": "eu-west-1", "api_key": "k", "secret": "s"}}}),
     "Registry authentication of type `provider` is not supported by this service"),
    (oci(f"https://{HOST}", "team/app:v1", {"type": "webhook", "details": {
        "url": "https://auth.example.com/token"}}),
     "Registry authentication of type `webhook` is not supported by this service"),
])
def test_an_origin_that_cannot_be_pulled_safely_ends_the_import(origin, message):
    with pytest.raises(JobFailed) as caught:
        pull_spec(stored_origin(origin), {})
    assert caught.value.message.startswith(message) and not caught.value.transient


INSPECTED = {"Config": {
    "User": "nobody", "Env": ["PATH=/bin", "GREETING=hello=world", "EMPTY="],
    "ExposedPorts": {"8080/tcp": {}, "53/udp": {}, "443": {}, "9000/sctp": {}},
    "Labels": {"org.example.team": "images"}, "Cmd": ["echo ready"],
    "Entrypoint": ["/bin/sh", "-c"], "Volumes": {"/var/log": {}, "/data": {}},
    "WorkingDir": "/srv", "StopSignal": "SIGINT",
}}


@pytest.mark.parametrize(("attrs", "config"), [
    (INSPECTED, {
        "user": "nobody",
        "ports": [{"host": 53, "container": 53, "type": "udp"},
                  {"host": 443, "container": 443, "type": "tcp"},
                  {"host": 8080, "container": 8080, "type": "tcp"},
                  {"host": 9000, "container": 9000, "type": "sctp"}],
        "env": {"PATH": "/bin", "GREETING": "hello=world", "EMPTY": ""},
        "labels": {"org.example.team": "images"}, "command": ["echo ready"],
        "entrypoint": ["/bin/sh", "-c"],
        "volumes": [{"path": "/data", "mode": "rw"}, {"path": "/var/log", "mode": "rw"}],
        "workdir": "/srv", "signal_stop": "SIGINT"}),
    # An image built FROM scratch with nothing set: the engine answers nulls.
    ({"Config": {"User": "", "Env": None, "ExposedPorts": None, "Labels": None, "Cmd": None,
                 "Entrypoint": None, "Volumes": None, "WorkingDir": "", "StopSignal": None}}, {
        "user": "", "ports": [], "env": {}, "labels": {}, "command": [], "entrypoint": [],
        "volumes": [], "workdir": "", "signal_stop": ""}),
    ({}, {"user": "", "ports": [], "env": {}, "labels": {}, "command": [], "entrypoint": [],
          "volumes": [], "workdir": "", "signal_stop": ""}),
])
def test_the_image_config_is_read_from_the_engines_inspect(attrs, config):
    assert image_config(attrs) == config


@pytest.mark.parametrize("exposed", ["0/tcp", "65536/tcp", "80/icmp", "http", "8080-8090/tcp"])
def test_an_image_exposing_what_is_not_a_port_cannot_be_used(exposed):
    with pytest.raises(JobFailed, match=f"exposes `{exposed}`, which is not a port such as "
                                        "`8080/tcp`; the image cannot be used"):
        image_config({"Config": {"ExposedPorts": {exposed: {}}}})


def test_the_worker_reads_an_origin_with_its_secrets_back_into_its_model():
    origin = read_origin({"type": "docker-file", "details": {"repo": {
        "url": "https://git.example.com/a.git", "branch": "main",
        "auth": {"type": "http", "credentials": {"username": "ci", "password": ""}}}}},
        {"/details/repo/auth/credentials/password": "pw"})
    assert isinstance(origin, DockerFileOrigin) and origin.details.repo is not None
    assert repo_spec(origin.details.repo) == RepoSpec(
        url="https://git.example.com/a.git", branch="main", username="ci", password="pw")


@pytest.mark.parametrize(("repo", "spec"), [
    ({"url": "git@git.example.com:a.git", "ref": {"type": "tag", "value": "v1"},
      "auth": {"type": "ssh", "credentials": {"username": "git", "passphrase": "phrase",
                                              "private_key": "KEY"}}},
     RepoSpec(url="git@git.example.com:a.git", ref_type="tag", ref_value="v1", username="git",
              private_key="KEY", passphrase="phrase")),
    ({"url": "https://git.example.com/a.git"}, RepoSpec(url="https://git.example.com/a.git")),
])
def test_a_repo_is_cloned_with_its_own_credentials(repo, spec):
    origin = stored_origin({"type": "docker-file", "details": {"repo": repo}})
    assert repo_spec(origin.details.repo) == spec


def test_an_origin_the_worker_cannot_read_ends_the_import_saying_why():
    with pytest.raises(JobFailed) as caught:
        read_origin({"type": "docker-hub", "details": {"token": ""}}, {"/details/token": "s3cret"})
    assert caught.value.message == (
        "The origin stored with the image cannot be read (`/details/target`: Field required); "
        "save the source's origin again and make a new image of it.")
    assert not caught.value.transient


@pytest.mark.parametrize(("origin", "state"), [
    (hub("library/nginx"), ImageState.DOWNLOADING),
    (registry(f"https://{HOST}", "a:v1"), ImageState.DOWNLOADING),
    (oci(f"https://{HOST}", "a:v1"), ImageState.DOWNLOADING),
    ({"type": "docker-file", "details": {"targz_url": "https://example.com/c.tar.gz"}},
     ImageState.BUILDING),
    ({"type": "cycle-upload", "details": {"expires": "0001-01-01T00:00:00Z", "token": ""}},
     ImageState.UPLOADING),
])
def test_each_kind_of_origin_has_its_importer(origin, state):
    assert importer_of(stored_origin(origin)).first_state == state


@pytest.mark.parametrize("origin", [
    {"type": "none"}, {"type": "cycle-source", "details": {"source_id": "x"}}])
def test_an_origin_with_no_importer_ends_the_import(origin):
    with pytest.raises(JobFailed, match=f"^Images of `{origin['type']}` sources cannot be "
                                        "imported.$"):
        importer_of(stored_origin(origin))
