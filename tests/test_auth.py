"""Who may call what: API keys, the hub header, capabilities, and the `imagejobs key` command."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
from sqlalchemy import select

from app.db import new_id, transaction
from app.hubs.models import Capability
from app.models import ApiKey
from tests.api_calls import Tenant, assert_error, make_tenant
from tests.services import ROOT

SOURCES = "/v1/images/sources"
ID = "{id}"

# Every endpoint and the one capability it needs.
ENDPOINTS = [
    ("get", "/v1/images", "images-view"),
    ("post", "/v1/images", "images-manage"),
    ("get", "/v1/images/{id}", "images-view"),
    ("patch", "/v1/images/{id}", "images-manage"),
    ("post", "/v1/images/{id}/tasks", "images-import"),
    ("get", "/v1/images/{id}/build-log", "images-view"),
    ("get", "/v1/images/sources", "images-sources-view"),
    ("post", "/v1/images/sources", "images-sources-manage"),
    ("get", "/v1/images/sources/{id}", "images-sources-view"),
    ("patch", "/v1/images/sources/{id}", "images-sources-manage"),
    ("delete", "/v1/images/sources/{id}", "images-sources-manage"),
    ("get", "/v1/jobs", "apionly-jobs-view"),
    ("get", "/v1/jobs/{id}", "apionly-jobs-view"),
]
every_endpoint = pytest.mark.parametrize("method, path, capability", ENDPOINTS,
                                         ids=[f"{m.upper()} {p}" for m, p, _ in ENDPOINTS])


def call(client, method: str, path: str, headers: dict[str, str], resource_id: str | None = None):
    """One request to an endpoint of the table; bodies are sent where the method takes one."""
    kwargs: dict[str, Any] = {"headers": headers}
    if method in ("post", "patch"):
        kwargs["json"] = {}
    return getattr(client, method)(path.replace(ID, resource_id or new_id()), **kwargs)


def sources_with(client, headers: dict[str, str]):
    return client.get(SOURCES, headers=headers)


# --- the key -------------------------------------------------------------------------------------


@every_endpoint
def test_request_without_a_key_is_401(client, tenant, method, path, capability):
    response = call(client, method, path, {"X-Hub-Id": tenant.hub_id})
    assert_error(response, 401, "401.auth-invalid")


@pytest.mark.parametrize("authorization", [
    pytest.param(lambda t: f"Basic {t.secret}", id="basic-scheme"),
    pytest.param(lambda t: t.secret, id="no-scheme"),
    pytest.param(lambda t: "Bearer", id="bearer-without-secret"),
    pytest.param(lambda t: "Bearer    ", id="bearer-blank"),
    pytest.param(lambda t: f"Bearer {t.secret}x", id="wrong-secret"),
    pytest.param(lambda t: f"Bearer {t.secret[:-4]}", id="truncated-secret"),
    pytest.param(lambda t: f"Bearer ij_{t.key_id}_guessed", id="right-key-id-wrong-secret"),
    pytest.param(lambda t: "Bearer ij_000000000000000000000000_x", id="unknown-key-id"),
    pytest.param(lambda t: "Bearer not-a-key-at-all", id="malformed-secret"),
    pytest.param(lambda t: "Bearer ij_", id="prefix-only"),
    pytest.param(lambda t: "Bearer ij_\x00_x", id="nul-in-secret"),
    pytest.param(lambda t: f"Bearer {'x' * 5000}", id="huge-secret"),
])
def test_invalid_key_is_401(client, tenant, authorization):
    response = sources_with(client, {"Authorization": authorization(tenant), "X-Hub-Id": tenant.hub_id})
    assert_error(response, 401, "401.auth-invalid")


def test_valid_key_is_accepted(client, tenant):
    assert sources_with(client, tenant.headers).status_code == 200


def test_scheme_name_is_case_insensitive(client, tenant):
    headers = {**tenant.headers, "Authorization": f"bearer {tenant.secret}"}
    assert sources_with(client, headers).status_code == 200


def test_revoked_key_is_401(client, tenant):
    with transaction() as session:
        session.get(ApiKey, tenant.key_id).revoked = session.get(ApiKey, tenant.key_id).created
    assert_error(sources_with(client, tenant.headers), 401, "401.auth-invalid")


def test_revoking_one_key_leaves_the_others(client, tenant):
    other = make_tenant()
    with transaction() as session:
        session.get(ApiKey, other.key_id).revoked = session.get(ApiKey, other.key_id).created
    assert sources_with(client, tenant.headers).status_code == 200


def test_keys_are_stored_hashed(tenant):
    random_part = tenant.secret.split("_", 2)[2]  # `ij_<key id>_<random>`; random may hold `_`
    with transaction() as session:
        row = session.execute(select(ApiKey.__table__).where(ApiKey.id == tenant.key_id)).one()
    stored = " ".join(str(value) for value in row)
    assert tenant.secret not in stored and random_part not in stored


# --- the hub -------------------------------------------------------------------------------------


@pytest.mark.parametrize("hub_header", [
    pytest.param(None, id="missing"),
    pytest.param("", id="empty"),
    pytest.param("OTHER", id="another-hubs-id"),
    pytest.param("UNKNOWN", id="unknown-hub"),
])
def test_key_used_for_another_hub_is_403(client, tenant, other_tenant, hub_header):
    headers = {"Authorization": f"Bearer {tenant.secret}"}
    if hub_header is not None:
        headers["X-Hub-Id"] = {"OTHER": other_tenant.hub_id, "UNKNOWN": new_id()}.get(hub_header,
                                                                                      hub_header)
    assert_error(sources_with(client, headers), 403, "403.wrong-hub")


@every_endpoint
def test_key_used_for_another_hub_is_403_on_every_endpoint(client, tenant, other_tenant, method, path,
                                                           capability):
    headers = {**tenant.headers, "X-Hub-Id": other_tenant.hub_id}
    assert_error(call(client, method, path, headers), 403, "403.wrong-hub")


# --- capabilities --------------------------------------------------------------------------------


def tenant_without(capability: str) -> Tenant:
    return make_tenant(*(c.value for c in Capability if c.value != capability))


@every_endpoint
def test_key_lacking_the_capability_is_403_naming_it(client, method, path, capability):
    response = call(client, method, path, tenant_without(capability).headers)
    error = assert_error(response, 403, "403.permissions")
    assert error["extra"]["capability"] == capability


@every_endpoint
def test_key_with_exactly_the_capability_gets_past_the_check(client, method, path, capability):
    response = call(client, method, path, make_tenant(capability).headers)
    assert response.status_code not in (401, 403), response.get_data(as_text=True)
    assert response.status_code < 500, response.get_data(as_text=True)


def test_capabilities_are_checked_per_key_not_per_hub(client):
    viewer = make_tenant("images-sources-view")
    assert client.get(SOURCES, headers=viewer.headers).status_code == 200
    response = client.post(SOURCES, headers=viewer.headers,
                           json={"type": "direct", "origin": {"type": "none"}})
    assert_error(response, 403, "403.permissions")
    assert client.get(SOURCES, headers=viewer.headers).get_json()["data"] == []


# --- ids that cannot exist ----------------------------------------------------------------------

LOOKUPS = {"/v1/images/{id}": "404.image", "/v1/images/{id}/build-log": "404.image",
           "/v1/images/sources/{id}": "404.image.source", "/v1/jobs/{id}": "404.job"}


@pytest.mark.parametrize("path, code", LOOKUPS.items(), ids=list(LOOKUPS))
@pytest.mark.parametrize("bad_id", ["not-an-id", "nul\x00byte", "f" * 500])
def test_malformed_id_is_404_never_500(client, tenant, path, code, bad_id):
    assert_error(call(client, "get", path, tenant.headers, bad_id), 404, code)


# --- the `imagejobs key create` command ----------------------------------------------------------


def imagejobs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "app.cli", *args], cwd=ROOT, env=os.environ,
                          capture_output=True, text=True, timeout=120)


def test_key_create_prints_a_secret_that_authenticates(client, tenant):
    result = imagejobs("key", "create", "--hub", tenant.hub_id, "--capability", "images-view")
    assert result.returncode == 0, result.stderr
    headers = {"Authorization": f"Bearer {result.stdout.strip()}", "X-Hub-Id": tenant.hub_id}
    assert client.get("/v1/images", headers=headers).status_code == 200
    error = assert_error(client.get(SOURCES, headers=headers), 403, "403.permissions")
    assert error["extra"]["capability"] == "images-sources-view"


@pytest.mark.parametrize("args, message", [
    pytest.param(["--capability", "images-everything"], "images-everything", id="unknown-capability"),
    pytest.param(["--hub", "0123456789abcdef01234567"], "0123456789abcdef01234567", id="unknown-hub"),
])
def test_key_create_refuses_unknown_names_clearly(tenant, args, message):
    hub = [] if "--hub" in args else ["--hub", tenant.hub_id]
    result = imagejobs("key", "create", *hub, *args)
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr
    assert result.stdout.strip() == ""


# --- routes that do not exist --------------------------------------------------------------------


@pytest.mark.parametrize("method, path", [
    ("get", "/"),
    ("get", "/v1/nothing"),
    ("get", "/v1/images/sources/abc/def"),
    ("post", "/v2/images"),
    ("get", "/v1/jobs/abc/steps"),
])
@pytest.mark.parametrize("authenticated", [True, False], ids=["with-key", "without-key"])
def test_unknown_url_is_404_in_the_envelope(client, tenant, method, path, authenticated):
    headers = tenant.headers if authenticated else {}
    assert_error(getattr(client, method)(path, headers=headers), 404, "404.uri")


@pytest.mark.parametrize("method, path", [
    ("put", "/v1/images/sources"),
    ("delete", "/v1/images/sources"),
    ("put", "/v1/images/sources/0123456789abcdef01234567"),
    ("post", "/v1/images/sources/0123456789abcdef01234567"),
    ("delete", "/v1/jobs"),
    ("post", "/v1/jobs/0123456789abcdef01234567"),
    ("get", "/v1/jobs/0123456789abcdef01234567/tasks"),
    ("options", "/v1/images"),
])
def test_wrong_method_is_405_in_the_envelope(client, tenant, method, path):
    assert_error(getattr(client, method)(path, headers=tenant.headers), 405, "405.method-not-allowed")
