"""An import's pure parts: what a source's origin pulls and with which credentials, and the spec's
image config read from the engine's inspect."""

from __future__ import annotations

from typing import Any

import pytest

from workers.engine import RegistryAuth
from workers.faults import JobFailed
from workers.tasks.imports import DOCKER_HUB_SERVER, image_config, pull_spec

HOST = "registry.example.com:5000"


def hub(target: str, **credentials: str) -> dict[str, Any]:
    return {"type": "docker-hub", "details": {"target": target, **credentials}}


def registry(url: str, target: str, **credentials: str) -> dict[str, Any]:
    return {"type": "docker-registry", "details": {"url": url, "target": target, **credentials}}


def oci(url: str, target: str, auth: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"type": "oci-registry", "details": {"url": url, "target": target,
                                                **({"auth": auth} if auth else {})}}


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
    assert pull_spec(origin, override) == spec


@pytest.mark.parametrize(("origin", "message"), [
    # The engine would send Docker Hub credentials wherever the target leads.
    (hub("ghcr.io/team/app:v1", username="ci", token="dckr_pat"),
     "The image cannot be imported: the credentials of a docker-hub source go to Docker Hub "
     "alone, and `ghcr.io/team/app:v1` names the registry ghcr.io"),
    # A host the engine reads as a Docker Hub account (made before the API refused it).
    (registry("https://registry", "team/app:v1"),
     "The registry `registry` is read by the Docker engine as a Docker Hub account"),
    (oci(f"https://{HOST}", "team/app:v1", {"type": "ecr", "details": {}}),
     "Registry authentication of type `ecr` is not supported by this service"),
])
def test_an_origin_that_cannot_be_pulled_safely_ends_the_import(origin, message):
    with pytest.raises(JobFailed) as caught:
        pull_spec(origin, {})
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
