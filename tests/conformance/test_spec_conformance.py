"""The API against the Cycle spec extract: each response the API gives, validated against the
schema the spec gives for that path, method and status; each spec endpoint served; each error
code and capability the API can answer with known to the spec.

Where the API differs from the spec on purpose (DESIGN.md, "The contract"), the difference is in
DELIBERATE_DIFFERENCES below, once, with its reason; `test_every_deliberate_difference_is_still_true`
keeps that table honest. Anything else that does not validate is a finding.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import pytest

from app import errors as api_errors
from app.db import transaction
from app.hubs.models import Capability
from app.images.models import Image
from tests.api_calls import Api, make_tenant
from tests.conformance.spec import SPEC_FIXES, Spec, describe
from workers.buildlog import open_log

# --- Deliberate differences -----------------------------------------------------------------


@dataclass(frozen=True)
class Difference:
    kind: str  # status | not-served | extra-route | error-code | capability | parameter | spec-fix
    subject: str  # what differs: an operation, a code, a capability, a file
    spec: str  # what the spec says
    api: str  # what the API does
    reason: str
    # What the checks match, when the subject names several: "METHOD /path", a code, a
    # capability, or "/path name=value" for a query parameter.
    keys: tuple[str, ...] = ()

    @property
    def matches(self) -> tuple[str, ...]:
        return self.keys or (self.subject,)


DELIBERATE_DIFFERENCES: tuple[Difference, ...] = (
    Difference(
        "status", "POST /v1/images/{imageId}/tasks, DELETE /v1/images/{imageId}",
        spec="200 with {data: JobDescriptor}", api="202 with {data: JobDescriptor}",
        reason="DESIGN.md: every call that creates a job answers 202 Accepted (the spec's other "
               "job-creating calls already say 202); the body is checked against the spec's "
               "200 schema.",
        keys=("POST /v1/images/{imageId}/tasks", "DELETE /v1/images/{imageId}")),
    Difference(
        "not-served", "PATCH /v1/images/sources/{sourceId}/access",
        spec="platform/paths/images/sources/access.yml", api="not served",
        reason="Not in DESIGN.md's endpoint list: source ACLs are stored as given at creation "
               "but there is no endpoint to change them."),
    Difference(
        "extra-route", "POST /v1/images/{}/upload", spec="not in the extract (Cycle takes "
        "uploads on its factory host, CycleUploadOrigin's description)", api="served",
        reason="The upload of a cycle-upload image's tar, authenticated by its single-use token; "
               "this service is its own factory."),
    Difference(
        "extra-route", "GET /v1/openapi.json", spec="not in the extract", api="served",
        reason="The API's own OpenAPI document (app/openapi.py), public, for clients and for the "
               "fuzzer (tests/test_fuzz.py)."),
    Difference(
        "extra-route", "GET /v1/jobs/latest", spec="not in the extract", api="served",
        reason="The hub's newest jobs (at most 20, newest first), for clients of Cycle's 'list "
               "latest jobs'; marked x-imagejobs-extension in the OpenAPI document."),
    Difference(
        "extra-route", "POST /v1/jobs/{}/tasks", spec="not in the extract (it has no job "
        "tasks)", api="served",
        reason="Retry a job that ended in error or expired, or cancel a queued one (README, The "
               "API); needs apionly-jobs-view and the capability of the job's own action. "
               "Marked x-imagejobs-extension."),
    Difference(
        "extra-route", "GET /v1/hubs/current/notifications", spec="not in the extract (Cycle "
        "serves it: the hub notification pipeline; its capability is in Capability.yml)",
        api="served",
        reason="Cycle's notification token, and with `?token=` its one-way WebSocket of the hub's "
               "job, image and source events. The same events as Server-Sent Events, resumable "
               "with Last-Event-ID, are imagejobs' own (the header is marked "
               "x-imagejobs-extension)."),
    Difference(
        "extra-route", "GET /v1/health", spec="not in the extract", api="served",
        reason="An operational health check for load balancers and `make run`, outside Cycle's "
               "API."),
    Difference(
        "extra-route", "GET /v1/ready", spec="not in the extract", api="served",
        reason="Readiness for load balancers and Kubernetes probes (Postgres and Redis reached), "
               "outside Cycle's API."),
    Difference(
        "extra-route", "GET /metrics", spec="not in the extract", api="served",
        reason="Prometheus metrics for operators (app/metrics.py), outside Cycle's API and "
               "outside /v1 where scrapers expect it."),
    Difference(
        "extra-route", "GET /ui/ and /docs", spec="not in the extract", api="served",
        reason="A web page that follows a hub's jobs live (it calls the API from the browser "
               "with the key a person pastes) and the API's documentation (Swagger UI on "
               "/v1/openapi.json): static files outside /v1 and outside the OpenAPI document "
               "(app/ui).",
        keys=("GET /ui/", "GET /ui/{}", "GET /docs", "GET /docs/{}")),
    Difference(
        "error-code", "405.method-not-allowed", spec="not in Error.yml's code enum, and 405 not "
        "in its status enum", api="405 {error: {status: 405, code: 405.method-not-allowed}}",
        reason="DESIGN.md: no request, however malformed, gets an HTML page; the spec has no "
               "code for a known path called with the wrong method."),
    Difference(
        "error-code", "413.too-large", spec="not in Error.yml's code enum, and 413 not in its "
        "status enum", api="413 {error: {status: 413, code: 413.too-large}}",
        reason="DESIGN.md: no request gets an HTML page; a body over the size limit has no code "
               "in the spec (422.max-exceeded is about a value, and would hide the HTTP meaning)."),
    Difference(
        "capability", "images-import", spec="not in components/schemas/common/Capability.yml "
        "(so not allowed in 403.permissions' extra.capability)",
        api="required by POST /v1/images/{imageId}/tasks",
        reason="The spec itself says so: platform/paths/images/tasks.yml 'Requires the "
               "`images-import` capability'; DESIGN.md lists it. Capability.yml's enum misses it."),
    Difference(
        "parameter", "meta=containers_count on GET /v1/images and /v1/images/{imageId}",
        spec="offered", api="422.invalid-argument",
        reason="imagejobs runs no containers, so there is nothing to count (containers are "
               "out of scope, as stacks are).",
        keys=("/v1/images meta=containers_count", "/v1/images/{imageId} meta=containers_count")),
    Difference(
        "spec-fix", "components/schemas/errors/Error.yml", spec='required: ["status, code, title"]',
        api='read as required: ["status", "code", "title"]',
        reason="A typo in the spec: one string naming three properties. Fixed in the loader "
               "(tests/conformance/spec.py SPEC_FIXES)."),
)


def differences(kind: str) -> list[Difference]:
    return [d for d in DELIBERATE_DIFFERENCES if d.kind == kind]


def _listed(kind: str) -> set[str]:
    return {key for d in differences(kind) for key in d.matches}


STATUS_DIFFERENCES = _listed("status")  # "POST /v1/images/{imageId}/tasks", ...
NOT_SERVED = _listed("not-served")
EXTRA_ROUTES = _listed("extra-route")
LISTED_ERROR_CODES = _listed("error-code")
LISTED_CAPABILITIES = _listed("capability")
UNSUPPORTED_PARAMETERS = _listed("parameter")  # "/v1/images include=stacks", ...


# --- Checking one response ------------------------------------------------------------------


@dataclass
class Check:
    label: str
    problems: list[str] = field(default_factory=list)


CHECKS: list[Check] = []  # every response validated in this run (summarised by conftest.py)


def _error_tolerated(error, body: Any) -> bool:
    """A validation error that DELIBERATE_DIFFERENCES explains: a listed code (and its status)
    outside Error.yml's enums, or a listed capability outside Capability.yml's."""
    path = list(error.absolute_path)
    if error.validator != "enum" or not isinstance(body, dict):
        return False
    envelope = body.get("error") or {}
    listed = envelope.get("code") in LISTED_ERROR_CODES
    if path == ["error", "code"] and listed:
        return True
    if path == ["error", "status"] and listed and str(error.instance) == envelope["code"][:3]:
        return True
    return path == ["error", "extra", "capability"] and error.instance in LISTED_CAPABILITIES


class Conform:
    """Validates responses of one test against the spec; `verify()` fails the test at the end with
    every mismatch found, so one bad document does not hide the next."""

    def __init__(self, spec: Spec, test: str):
        self.spec = spec
        self.test = test
        self.checks: list[Check] = []
        self.verified = False

    def spec_status(self, method: str, path: str, status: int) -> str:
        responses = self.spec.statuses(method, path)
        if str(status) in responses:
            return str(status)
        if status >= 400:
            return "default"
        successes = [s for s in responses if s.startswith("2")]
        if f"{method.upper()} {path}" in STATUS_DIFFERENCES and len(successes) == 1:
            return successes[0]
        raise AssertionError(f"{method.upper()} {path} answered {status}; the spec has "
                             f"{responses} and DELIBERATE_DIFFERENCES lists no such difference")

    def __call__(self, response, method: str, path: str, expect: int, what: str = "") -> Any:
        """Validate `response` (to `method path`, the spec's URL template) and return its body."""
        body = response.get_json(silent=True)
        label = (f"{method.upper()} {path} -> {response.status_code}"
                 f"{f' ({what})' if what else ''} [{self.test}]")
        check = Check(label)
        if response.status_code != expect:
            check.problems.append(f"answered {response.status_code}, expected {expect}: "
                                  f"{str(body)[:500]}")
        if response.mimetype != "application/json":
            check.problems.append(f"Content-Type is {response.mimetype}, the spec says "
                                  "application/json")
        if body is None:
            check.problems.append("the body is not JSON")
        else:
            status = self.spec_status(method, path, response.status_code)
            ref = self.spec.response_schema_ref(method, path, status)
            for error in self.spec.errors(ref, body):
                if not _error_tolerated(error, body):
                    check.problems.append(describe(error))
            if response.status_code >= 400 and isinstance(body.get("error"), dict) and \
                    body["error"].get("status") != response.status_code:
                check.problems.append(f"error.status is {body['error'].get('status')}, the HTTP "
                                      f"status {response.status_code}")
        self.checks.append(check)
        CHECKS.append(check)
        return body

    def verify(self) -> None:
        self.verified = True
        failed = [c for c in self.checks if c.problems]
        assert self.checks, "no response was checked"
        if failed:
            pytest.fail("responses that do not conform to the spec:\n" + "\n".join(
                f"{c.label}\n    " + "\n    ".join(c.problems) for c in failed), pytrace=False)


@pytest.fixture
def conform(spec: Spec, request):
    checker = Conform(spec, request.node.name)
    yield checker
    outcome = getattr(request.node, "conformance_call_report", None)
    if outcome is not None and outcome.passed:  # a test that failed already says why
        assert checker.verified, "the test did not call conform.verify()"


# --- Test data ------------------------------------------------------------------------------

UNKNOWN_ID = "0" * 24
ORIGINS: dict[str, dict[str, Any]] = {
    "docker-hub": {"type": "docker-hub", "details": {
        "target": "busybox:1.36", "username": "someone", "token": "hub-token"}},
    "docker-hub-plain": {"type": "docker-hub", "details": {"target": "library/busybox:latest"}},
    "docker-registry": {"type": "docker-registry", "details": {
        "url": "https://registry.example.com:5000", "target": "team/app:v2",
        "username": "someone", "password": "registry-password", "token": "registry-token"}},
    "oci-registry-user": {"type": "oci-registry", "details": {
        "url": "registry.example.com", "target": "team/app:v2",
        "auth": {"type": "user", "details": {"username": "someone", "token": "oci-token"}}}},
    "oci-registry-provider": {"type": "oci-registry", "details": {
        "url": "123456789012.dkr.ecr.us-east-1.amazonaws.com", "target": "team/app:v2",
        "auth": {"type": "provider", "details": {"flavor": "ecr", "credentials": {
            "region": "us-east-1", "api_key": "AKIAEXAMPLE", "secret": "aws-secret"}}}}},
    "oci-registry-webhook": {"type": "oci-registry", "details": {
        "url": "registry.example.com", "target": "team/app:v2",
        "auth": {"type": "webhook", "details": {"url": "https://auth.example.com/registry"}}}},
    "docker-file-repo-http": {"type": "docker-file", "details": {
        "repo": {"url": "https://git.example.com/team/app.git", "branch": "main",
                 "auth": {"type": "http", "credentials": {"username": "someone",
                                                          "password": "git-password"}},
                 "ref": {"type": "tag", "value": "v1.0.0"}},
        "context_dir": "app", "build_file": "app/Dockerfile",
        "credentials": [{"url": "registry.example.com", "username": "someone",
                         "token": "parent-image-token"}]}},
    "docker-file-repo-ssh": {"type": "docker-file", "details": {
        "repo": {"url": "git@git.example.com:team/app.git",
                 "auth": {"type": "ssh", "credentials": {
                     "username": "git", "passphrase": "key-passphrase",
                     "private_key": "-----BEGIN OPENSSH PRIVATE KEY-----\nx\n"
                                    "-----END OPENSSH PRIVATE KEY-----\n"}},
                 "ref": {"type": "hash", "value": "0123456789abcdef0123456789abcdef01234567"}}}},
    "docker-file-targz": {"type": "docker-file", "details": {
        "targz_url": "https://files.example.com/app.tar.gz", "build_file": "Dockerfile"}},
    "cycle-upload": {"type": "cycle-upload"},
    "none": {"type": "none"},
}
PULL_ORIGINS = {"docker-hub", "docker-registry", "oci-registry"}
# Origins with fields a client may send although the server owns them, or that the spec types
# more narrowly than the API checks: the API may refuse them (422), and what it accepts must come
# back conforming.
EDGE_ORIGINS: dict[str, dict[str, Any]] = {
    "cycle-upload-details-from-client": {"type": "cycle-upload", "details": {
        "expires": "soon", "token": "client-token"}},
    "docker-file-existing-source": {"type": "docker-file", "details": {
        "existing": {"source_id": "my-other-source"},
        "targz_url": "https://files.example.com/app.tar.gz"}},
    "docker-hub-existing-null": {"type": "docker-hub", "details": {
        "existing": None, "target": "busybox:1.36"}},
    "docker-file-nulls": {"type": "docker-file", "details": {
        "repo": None, "targz_url": None, "context_dir": None, "build_file": None,
        "credentials": None}},
    "none-with-details": {"type": "none", "details": {"note": "kept as given"}},
}


def new_source(api: Api, origin: dict[str, Any], **extra: Any):
    return api.post("/v1/images/sources", json={"type": "direct", "origin": origin, **extra})


# --- Coverage of the spec: endpoints, error codes, capabilities -----------------------------


def _template(path: str) -> str:
    """`/v1/images/{imageId}` and `/v1/images/<image_id>` both as `/v1/images/{}`."""
    return re.sub(r"\{[^}]+\}|<[^>]+>", "{}", path)


def api_routes(app) -> set[tuple[str, str]]:
    return {(method.lower(), _template(rule.rule)) for rule in app.url_map.iter_rules()
            if rule.endpoint != "static" for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_every_spec_operation_is_served_or_listed(spec: Spec, app):
    served = api_routes(app)
    missing = [op.key for op in spec.operations()
               if (op.method, _template(op.path)) not in served and op.key not in NOT_SERVED]
    assert not missing, ("spec operations the API does not serve and DELIBERATE_DIFFERENCES "
                         f"does not list: {missing}")


def test_every_api_route_is_in_the_spec_or_listed(spec: Spec, app):
    in_spec = {(op.method, _template(op.path)) for op in spec.operations()}
    listed = {(s.split()[0].lower(), _template(s.split()[1])) for s in EXTRA_ROUTES}
    extra = sorted(f"{m.upper()} {p}" for m, p in api_routes(app) - in_spec - listed)
    assert not extra, f"API routes that are not in the spec and not listed: {extra}"


def api_error_classes() -> list[type[api_errors.ApiError]]:
    return [c for c in vars(api_errors).values()
            if isinstance(c, type) and issubclass(c, api_errors.ApiError)]


def _error_enums(spec: Spec) -> tuple[list[str], list[int]]:
    error = spec.load(spec.root / "components/schemas/errors/Error.yml")
    return error["properties"]["code"]["enum"], error["properties"]["status"]["enum"]


@pytest.mark.parametrize("error_class", api_error_classes(), ids=lambda c: c.code)
def test_every_api_error_code_is_in_the_spec_or_listed(spec: Spec, error_class):
    codes, statuses = _error_enums(spec)
    if error_class.code in LISTED_ERROR_CODES:
        return
    assert error_class.code in codes, (
        f"{error_class.__name__} answers code {error_class.code}, which is not in "
        "components/schemas/errors/Error.yml's code enum and not in DELIBERATE_DIFFERENCES")
    assert error_class.status in statuses, (
        f"{error_class.__name__} answers status {error_class.status}, which is not in "
        "Error.yml's status enum")
    assert error_class.code.split(".")[0] == str(error_class.status)


@pytest.mark.parametrize("capability", list(Capability), ids=str)
def test_every_api_capability_is_in_the_spec_or_listed(spec: Spec, capability):
    enum = spec.load(spec.root / "components/schemas/common/Capability.yml")["enum"]
    assert capability.value in enum or capability.value in LISTED_CAPABILITIES, (
        f"the API demands capability {capability.value}, which Capability.yml does not know")


def test_every_deliberate_difference_is_still_true(spec: Spec, app):
    """A difference the spec or the API no longer has is taken out of the table."""
    stale = []
    served = api_routes(app)
    operations = {op.key: op for op in spec.operations()}
    for key in NOT_SERVED:
        method, path = key.split()
        if key not in operations:
            stale.append(f"not-served {key}: not in the spec")
        elif (method.lower(), _template(path)) in served:
            stale.append(f"not-served {key}: the API serves it now; check its responses here")
    for key in STATUS_DIFFERENCES:
        if key not in operations:
            stale.append(f"status {key}: not in the spec")
        elif "202" in operations[key].document["responses"]:
            stale.append(f"status {key}: the spec says 202 now")
    for key in EXTRA_ROUTES:
        method, path = key.split()
        if (method.lower(), _template(path)) not in served:
            stale.append(f"extra-route {key}: no longer served")
    codes, _ = _error_enums(spec)
    api_codes = {c.code for c in api_error_classes()}
    for code in LISTED_ERROR_CODES:
        if code in codes or code not in api_codes:
            stale.append(f"error-code {code}: in the spec's enum, or no longer answered")
    enum = spec.load(spec.root / "components/schemas/common/Capability.yml")["enum"]
    for capability in LISTED_CAPABILITIES:
        if capability in enum or capability not in {c.value for c in Capability}:
            stale.append(f"capability {capability}: in the spec's enum, or no longer used")
    offered = {f"{path} {name}={value}" for path, name, value, _ in _parameter_cases(spec)}
    for key in UNSUPPORTED_PARAMETERS - offered:
        stale.append(f"parameter {key}: the spec does not offer it")
    listed_fixes = {d.subject for d in differences("spec-fix")}
    applied = {f.file for f in spec.applied_fixes}
    if applied != listed_fixes or applied != {f.file for f in SPEC_FIXES}:
        stale.append(f"spec-fix: applied {sorted(applied)}, listed {sorted(listed_fixes)}")
    assert not stale, "\n".join(stale)


# --- Image sources --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(ORIGINS))
def test_source_documents_of_every_origin(api, conform, kind):
    origin = ORIGINS[kind]
    created = conform(new_source(api, origin, name=f"{kind} source",
                                 about={"description": f"A {kind} source"}),
                      "post", "/v1/images/sources", 201, kind)
    source_id = created["data"]["id"]
    conform(api.get(f"/v1/images/sources/{source_id}"),
            "get", "/v1/images/sources/{sourceId}", 200, kind)
    conform(api.get(f"/v1/images/sources/{source_id}",
                    query_string={"include": "creators", "meta": "images_count"}),
            "get", "/v1/images/sources/{sourceId}", 200, f"{kind}, include=creators, "
            "meta=images_count")
    conform(api.patch(f"/v1/images/sources/{source_id}", json={
        "name": f"{kind} renamed", "identifier": f"{kind}-renamed", "about": {"description": None},
        "origin": origin, "builder": None}),
        "patch", "/v1/images/sources/{sourceId}", 200, kind)
    conform.verify()


@pytest.mark.parametrize("kind", list(EDGE_ORIGINS))
def test_source_and_image_documents_of_unusual_origins(api, conform, kind):
    response = new_source(api, EDGE_ORIGINS[kind])
    if response.status_code == 422:  # the API may refuse the origin; then its refusal must conform
        conform(response, "post", "/v1/images/sources", 422, f"{kind}: refused")
        conform.verify()
        return
    created = conform(response, "post", "/v1/images/sources", 201, kind)
    source_id = created["data"]["id"]
    conform(api.get(f"/v1/images/sources/{source_id}"),
            "get", "/v1/images/sources/{sourceId}", 200, kind)
    conform(api.post("/v1/images", json={"source_id": source_id}), "post", "/v1/images", 201,
            kind)
    conform.verify()


def test_source_with_acl_and_builder(api, conform):
    created = conform(new_source(api, ORIGINS["docker-hub-plain"], identifier="with-acl",
                                 acl={"roles": {"651586fca6078e98982dbd90": {
                                     "view": True, "modify": False, "manage": False}}},
                                 builder={"integration_id": "my-builder"}),
                      "post", "/v1/images/sources", 201, "acl and builder")
    conform(api.get(f"/v1/images/sources/{created['data']['id']}"),
            "get", "/v1/images/sources/{sourceId}", 200, "acl and builder")
    conform.verify()


def test_source_list(api, conform):
    for kind, origin in ORIGINS.items():
        assert new_source(api, origin, name=kind).status_code == 201
    body = conform(api.get("/v1/images/sources"), "get", "/v1/images/sources", 200)
    assert len(body["data"]) == len(ORIGINS)
    conform(api.get("/v1/images/sources", query_string={
        "include": "creators", "meta": "images_count", "sort": "-name", "page[size]": 5}),
        "get", "/v1/images/sources", 200, "include=creators, meta=images_count, paged")
    conform(api.get("/v1/images/sources", query_string={"filter[search]": "nothing-matches"}),
            "get", "/v1/images/sources", 200, "empty")
    conform.verify()


def test_image_deletion_and_prune(api, conform):
    source_id = new_source(api, ORIGINS["none"]).get_json()["data"]["id"]
    image_id = api.post("/v1/images", json={"source_id": source_id}).get_json()["data"]["id"]
    descriptor = conform(api.delete(f"/v1/images/{image_id}"), "delete", "/v1/images/{imageId}",
                         202)
    conform(api.get(f"/v1/jobs/{descriptor['data']['job']['id']}"),
            "get", "/v1/jobs/{jobId}", 200, "image delete job")
    conform(api.delete(f"/v1/images/{image_id}"), "delete", "/v1/images/{imageId}", 403,
            "already deleting")
    for dry_run in (True, False):
        conform(api.post("/v1/images/tasks", json={"action": "prune", "contents": {
            "source_ids": [source_id], "dry_run": dry_run}}), "post", "/v1/images/tasks", 202,
            f"dry_run={dry_run}")
    conform(api.post("/v1/images/tasks", json={"action": "prune", "contents": {
        "source_ids": []}}), "post", "/v1/images/tasks", 422, "no source")
    conform.verify()


def test_source_deletion(api, conform):
    source_id = new_source(api, ORIGINS["docker-hub-plain"]).get_json()["data"]["id"]
    assert api.post("/v1/images", json={"source_id": source_id}).status_code == 201
    descriptor = conform(api.delete(f"/v1/images/sources/{source_id}"),
                         "delete", "/v1/images/sources/{sourceId}", 202)
    conform(api.get(f"/v1/jobs/{descriptor['data']['job']['id']}"),
            "get", "/v1/jobs/{jobId}", 200, "source delete job")
    conform(api.get(f"/v1/images/sources/{source_id}",
                    query_string={"include": "creators", "meta": "images_count"}),
            "get", "/v1/images/sources/{sourceId}", 200, "deleting")
    conform(api.patch(f"/v1/images/sources/{source_id}", json={"name": "late"}),
            "patch", "/v1/images/sources/{sourceId}", 403, "403.invalid-state")
    conform(api.delete(f"/v1/images/sources/{source_id}"),
            "delete", "/v1/images/sources/{sourceId}", 202, "again")
    conform(api.get("/v1/jobs", query_string={"include": "creators"}),
            "get", "/v1/jobs", 200, "include=creators")
    conform.verify()


# --- Images ---------------------------------------------------------------------------------


def _image_body(kind: str, source_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {"source_id": source_id, "name": f"{kind} image",
                            "build": {"args": {"VERSION": "1"}, "use_disk": False}}
    origin_type = ORIGINS[kind]["type"]
    if origin_type in PULL_ORIGINS:
        body["override"] = {"target": "team/app:override"}
    elif origin_type == "docker-file":
        body["override"] = {"targz_url": "https://files.example.com/override.tar.gz"}
    return body


@pytest.mark.parametrize("kind", list(ORIGINS))
def test_image_documents_of_every_origin(api, conform, kind):
    source_id = new_source(api, ORIGINS[kind]).get_json()["data"]["id"]
    created = conform(api.post("/v1/images", json=_image_body(kind, source_id)),
                      "post", "/v1/images", 201, kind)
    image_id = created["data"]["id"]
    conform(api.get(f"/v1/images/{image_id}"), "get", "/v1/images/{imageId}", 200, kind)
    conform(api.get(f"/v1/images/{image_id}", query_string={"include": "sources,creators"}),
            "get", "/v1/images/{imageId}", 200, f"{kind}, include=sources,creators")
    conform(api.patch(f"/v1/images/{image_id}", json={"name": f"{kind} renamed"}),
            "patch", "/v1/images/{imageId}", 200, kind)
    if ORIGINS[kind]["type"] in ("none", "cycle-upload"):
        # Nothing to pull or build: `none` has nothing, uploads come by their upload call.
        conform(api.post(f"/v1/images/{image_id}/tasks", json={"action": "import"}),
                "post", "/v1/images/{imageId}/tasks", 422, f"{kind}: nothing to import")
    conform.verify()


def test_the_checks_catch_a_broken_document(api, spec):
    """Guards the suite itself: a real image document, broken in ways the spec forbids, fails."""
    source_id = new_source(api, ORIGINS["docker-registry"]).get_json()["data"]["id"]
    image = api.post("/v1/images", json={"source_id": source_id}).get_json()
    ref = spec.response_schema_ref("get", "/v1/images/{imageId}", 200)
    assert spec.errors(ref, image) == []
    broken = {**image["data"], "hub_id": 7, "events": {**image["data"]["events"],
                                                       "created": "2024-01-01 10:00"}}
    del broken["config"]["user"]
    broken["source"]["details"]["origin"]["details"].pop("url")
    broken["state"]["current"] = "exploded"
    found = {"/" + "/".join(map(str, e.absolute_path)) for e in spec.errors(ref, {"data": broken})}
    assert found == {"/data/hub_id", "/data/events/created", "/data/config",
                     "/data/source", "/data/state/current"}, found


def test_image_without_options(api, conform):
    source_id = new_source(api, ORIGINS["docker-hub-plain"]).get_json()["data"]["id"]
    conform(api.post("/v1/images", json={"source_id": source_id}), "post", "/v1/images", 201,
            "only source_id")
    conform(api.post("/v1/images", json={"source_id": source_id, "build": {}}),
            "post", "/v1/images", 201, "empty build")
    conform.verify()


def test_image_list(api, conform):
    for kind in ORIGINS:
        source_id = new_source(api, ORIGINS[kind]).get_json()["data"]["id"]
        assert api.post("/v1/images", json=_image_body(kind, source_id)).status_code == 201
    body = conform(api.get("/v1/images"), "get", "/v1/images", 200)
    assert len(body["data"]) == len(ORIGINS)
    conform(api.get("/v1/images", query_string={"include": "sources,creators", "sort": "name",
                                                 "page[size]": 4, "page[number]": 2}),
            "get", "/v1/images", 200, "include=sources,creators, paged")
    conform(api.get("/v1/images", query_string={"filter[state]": "live"}),
            "get", "/v1/images", 200, "empty")
    conform.verify()


def test_build_log(api, conform):
    source_id = new_source(api, ORIGINS["docker-file-targz"]).get_json()["data"]["id"]
    image = api.post("/v1/images", json={"source_id": source_id}).get_json()["data"]
    conform(api.get(f"/v1/images/{image['id']}/build-log"),
            "get", "/v1/images/{imageId}/build-log", 404, "no log yet")
    # Builds are not in this version yet: the log a build would write is put in place directly.
    with transaction() as session:
        open_log(session, session.get(Image, image["id"]), 1,
                 "Step 1/2 : FROM imagejobs/busybox:latest\n")
    conform(api.get(f"/v1/images/{image['id']}/build-log"),
            "get", "/v1/images/{imageId}/build-log", 200, "seeded in the database")
    conform.verify()


# --- A real import through the worker -------------------------------------------------------


@pytest.fixture(scope="module")
def imports(app, worker, pushed_image) -> dict[str, tuple[str, str, int, Any]]:
    """One import that succeeds and one that fails, each response kept for the checks below."""
    api = Api(app.test_client(), make_tenant())
    host, _, target = pushed_image.public.partition("/")
    kept: dict[str, tuple[str, str, int, Any]] = {}

    def keep(name: str, response, method: str, path: str, expect: int) -> Any:
        kept[name] = (method, path, expect, response)
        assert response.status_code == expect, (name, response.get_json())
        return response.get_json()

    source = keep("source", new_source(api, {"type": "docker-registry", "details": {
        "url": host, "target": target}}, name="configured"), "post", "/v1/images/sources", 201)
    image = keep("image-new", api.post("/v1/images", json={
        "source_id": source["data"]["id"], "name": "configured"}), "post", "/v1/images", 201)
    image_id = image["data"]["id"]
    descriptor = keep("import", api.post(f"/v1/images/{image_id}/tasks",
                                         json={"action": "import"}),
                      "post", "/v1/images/{imageId}/tasks", 202)
    job_id = descriptor["data"]["job"]["id"]
    keep("import-again", api.post(f"/v1/images/{image_id}/tasks", json={"action": "import"}),
         "post", "/v1/images/{imageId}/tasks", 202)
    keep("job-early", api.get(f"/v1/jobs/{job_id}"), "get", "/v1/jobs/{jobId}", 200)
    job = api.wait_for_job(job_id)
    assert job["state"]["current"] == "completed", job
    keep("job-completed", api.get(f"/v1/jobs/{job_id}"), "get", "/v1/jobs/{jobId}", 200)
    keep("image-live", api.get(f"/v1/images/{image_id}"), "get", "/v1/images/{imageId}", 200)
    keep("image-live-includes", api.get(f"/v1/images/{image_id}", query_string={
        "include": "sources,creators"}), "get", "/v1/images/{imageId}", 200)
    keep("image-live-patched", api.patch(f"/v1/images/{image_id}", json={"name": "renamed"}),
         "patch", "/v1/images/{imageId}", 200)

    broken = new_source(api, {"type": "docker-registry", "details": {
        "url": host, "target": "tests/does-not-exist:nope"}}).get_json()["data"]
    failing = api.post("/v1/images", json={"source_id": broken["id"]}).get_json()["data"]
    failed_job = api.post(f"/v1/images/{failing['id']}/tasks",
                          json={"action": "import"}).get_json()["data"]["job"]["id"]
    job = api.wait_for_job(failed_job)
    assert job["state"]["current"] == "error", job
    keep("job-error", api.get(f"/v1/jobs/{failed_job}"), "get", "/v1/jobs/{jobId}", 200)
    keep("image-failed", api.get(f"/v1/images/{failing['id']}"),
         "get", "/v1/images/{imageId}", 200)

    keep("images-list", api.get("/v1/images", query_string={"include": "sources,creators"}),
         "get", "/v1/images", 200)
    keep("jobs-list", api.get("/v1/jobs"), "get", "/v1/jobs", 200)
    keep("jobs-list-includes", api.get("/v1/jobs", query_string={
        "include": "creators", "sort": "-id", "filter[state]": "completed,error"}),
         "get", "/v1/jobs", 200)
    keep("sources-list", api.get("/v1/images/sources", query_string={
        "include": "creators", "meta": "images_count"}), "get", "/v1/images/sources", 200)
    return kept


IMPORT_STEPS = ["source", "image-new", "import", "import-again", "job-early", "job-completed",
                "image-live", "image-live-includes", "image-live-patched", "job-error",
                "image-failed", "images-list", "jobs-list", "jobs-list-includes", "sources-list"]


@pytest.mark.docker
@pytest.mark.parametrize("step", IMPORT_STEPS)
def test_import_documents(imports, conform, step):
    method, path, expect, response = imports[step]
    conform(response, method, path, expect, step)
    conform.verify()


@pytest.mark.docker
def test_a_live_image_has_what_the_import_fills(imports):
    """Not a schema check: that the live image's document is the filled one the schema allows."""
    image = imports["image-live"][3].get_json()["data"]
    assert image["state"]["current"] == "live"
    assert image["factory"] and image["factory"]["node_id"]
    assert image["backend"]["file_id"] and image["size"] > 0
    assert image["config"]["ports"] and image["config"]["volumes"] and image["config"]["env"]


# --- Errors ---------------------------------------------------------------------------------

# The image and source and build-log and job ids below are made in the test; `{}` marks them.
ERROR_CASES: list[tuple[str, str, str, str, dict[str, Any], int, str]] = [
    # (name, method, URL, spec path, request kwargs, status, code)
    ("404.image", "get", f"/v1/images/{UNKNOWN_ID}", "/v1/images/{imageId}", {}, 404, "404.image"),
    ("404.image.other-hub", "get", "/v1/images/{image}", "/v1/images/{imageId}", {"other": True},
     404, "404.image"),
    ("404.image.patch", "patch", f"/v1/images/{UNKNOWN_ID}", "/v1/images/{imageId}",
     {"json": {"name": "x"}}, 404, "404.image"),
    ("404.image.tasks", "post", f"/v1/images/{UNKNOWN_ID}/tasks", "/v1/images/{imageId}/tasks",
     {"json": {"action": "import"}}, 404, "404.image"),
    ("404.image.source", "get", f"/v1/images/sources/{UNKNOWN_ID}",
     "/v1/images/sources/{sourceId}", {}, 404, "404.image.source"),
    ("404.image.source.delete", "delete", f"/v1/images/sources/{UNKNOWN_ID}",
     "/v1/images/sources/{sourceId}", {}, 404, "404.image.source"),
    ("404.image.source.create-image", "post", "/v1/images", "/v1/images",
     {"json": {"source_id": UNKNOWN_ID}}, 404, "404.image.source"),
    ("404.image.build-log", "get", "/v1/images/{image}/build-log",
     "/v1/images/{imageId}/build-log", {}, 404, "404.image.build-log"),
    ("404.job", "get", f"/v1/jobs/{UNKNOWN_ID}", "/v1/jobs/{jobId}", {}, 404, "404.job"),
    # No spec path for a URL that is not the API's: any operation's `default` response will do.
    ("404.uri", "get", "/v1/nowhere", "/v1/images", {}, 404, "404.uri"),
    ("401.no-key", "get", "/v1/images", "/v1/images", {"headers": {"Authorization": ""}}, 401,
     "401.auth-invalid"),
    ("401.bad-key", "get", "/v1/jobs", "/v1/jobs",
     {"headers": {"Authorization": "Bearer ij_000000000000000000000000_nope"}}, 401,
     "401.auth-invalid"),
    ("403.wrong-hub", "get", "/v1/images/sources", "/v1/images/sources", {"other_hub": True},
     403, "403.wrong-hub"),
    ("403.no-hub", "get", "/v1/images", "/v1/images", {"headers": {"X-Hub-Id": ""}}, 403,
     "403.wrong-hub"),
    ("403.invalid-state", "post", "/v1/images", "/v1/images", {"deleting_source": True}, 403,
     "403.invalid-state"),
    ("422.missing-argument", "post", "/v1/images", "/v1/images", {"json": {}}, 422,
     "422.missing-argument"),
    ("422.invalid-input", "post", "/v1/images/sources", "/v1/images/sources",
     {"json": {"type": "direct", "origin": {"type": "docker-hub", "details": {
         "target": "Not A Target!"}}}}, 422, "422.invalid-input"),
    ("422.invalid-input.action", "post", "/v1/images/{image}/tasks", "/v1/images/{imageId}/tasks",
     {"json": {"action": "prune"}}, 422, "422.invalid-input"),
    ("422.invalid-argument.filter", "get", "/v1/images", "/v1/images",
     {"query_string": {"filter[colour]": "red"}}, 422, "422.invalid-argument"),
    ("422.invalid-argument.import", "post", "/v1/images/{image}/tasks",
     "/v1/images/{imageId}/tasks", {"json": {"action": "import"}, "none_origin": True}, 422,
     "422.invalid-argument"),
    ("422.max-exceeded", "get", "/v1/jobs", "/v1/jobs", {"query_string": {"page[size]": 100000}},
     422, "422.max-exceeded"),
    ("400.invalid-syntax", "post", "/v1/images/sources", "/v1/images/sources",
     {"data": "{nope", "content_type": "application/json"}, 400, "400.invalid-syntax"),
    ("415.invalid-content-type", "patch", "/v1/images/{image}", "/v1/images/{imageId}",
     {"data": "name=x", "content_type": "application/x-www-form-urlencoded"}, 415,
     "415.invalid-content-type"),
    # The spec has no DELETE /v1/jobs: its error envelope is taken from GET /v1/jobs (every
    # operation's `default` response is the same ErrorEnvelope).
    ("405.method-not-allowed", "delete", "/v1/jobs", "/v1/jobs", {"spec_method": "get"}, 405,
     "405.method-not-allowed"),
    ("413.too-large", "post", "/v1/images/sources", "/v1/images/sources",
     {"data": b" " * (1024 * 1024 + 1), "content_type": "application/json"}, 413,
     "413.too-large"),
]


@pytest.mark.parametrize("name, method, url, path, kwargs, status, code", ERROR_CASES,
                         ids=[c[0] for c in ERROR_CASES])
def test_error_responses(api, other_tenant, conform, name, method, url, path, kwargs, status,
                         code):
    kwargs = dict(kwargs)
    origin = ORIGINS["none"] if kwargs.pop("none_origin", False) else ORIGINS["docker-hub-plain"]
    source_id = new_source(api, origin).get_json()["data"]["id"]
    if kwargs.pop("deleting_source", False):
        assert api.delete(f"/v1/images/sources/{source_id}").status_code == 202
        kwargs["json"] = {"source_id": source_id}
    else:
        image_id = api.post("/v1/images", json={"source_id": source_id}).get_json()["data"]["id"]
        url = url.replace("{image}", image_id)
    caller = api
    if kwargs.pop("other", False):
        caller = Api(api.client, other_tenant)
    if kwargs.pop("other_hub", False):
        kwargs["headers"] = {"X-Hub-Id": other_tenant.hub_id}
    spec_method = kwargs.pop("spec_method", method)
    body = conform(getattr(caller, method)(url, **kwargs), spec_method, path, status, name)
    conform.verify()
    assert body["error"]["code"] == code, body


def _capability_routes(app) -> list[tuple[str, str, str]]:
    """(method, Flask rule, capability) of every route that demands one."""
    found = []
    for rule in app.url_map.iter_rules():
        view = app.view_functions[rule.endpoint]
        capability = getattr(view, "capability", None)
        if capability is not None:
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                found.append((method.lower(), rule.rule, capability.value))
    return sorted(found)


def test_403_permissions_for_every_route_and_capability(app, spec, conform):
    """A key without a route's capability gets 403.permissions naming it in extra.capability."""
    routes = _capability_routes(app)
    assert {c for _, _, c in routes} == {c.value for c in Capability}
    spec_paths = {(op.method, _template(op.path)): op.path for op in spec.operations()}
    for method, rule, capability in routes:
        other = next(c.value for c in Capability if c.value != capability)
        api = Api(app.test_client(), make_tenant(other))
        url = re.sub(r"<[^>]+>", UNKNOWN_ID, rule)
        kwargs = {"json": {}} if method in ("post", "patch") else {}
        response = getattr(api, method)(url, **kwargs)
        spec_path = spec_paths.get((method, _template(rule)))
        if spec_path is None:  # an extension (an extra-route above): no operation to check with
            assert f"{method.upper()} {_template(rule)}" in {
                f"{k.split()[0]} {_template(k.split()[1])}" for k in EXTRA_ROUTES}, rule
            assert response.status_code == 403, response.get_data(as_text=True)
            body = response.get_json()
        else:
            body = conform(response, method, spec_path, 403, f"lacks {capability}")
        assert body["error"]["code"] == "403.permissions"
        assert body["error"].get("extra", {}).get("capability") == capability, body
    conform.verify()


# --- Query parameters the spec offers -------------------------------------------------------


def _parameter_cases(spec: Spec) -> list[tuple[str, str, str, str]]:
    """(spec path, parameter, value, query key) for each include, meta and filter the spec offers
    on a served GET."""
    cases = []
    for op in spec.operations():
        if op.method != "get" or op.key in NOT_SERVED:
            continue
        for parameter in op.document.get("parameters", []):
            name = parameter.get("name")
            schema = parameter.get("schema", {})
            if name in ("include", "meta"):
                for value in schema.get("items", {}).get("enum", []):
                    cases.append((op.path, name, value, name))
            elif name == "filter":
                for key in schema.get("properties", {}):
                    cases.append((op.path, "filter", key, f"filter[{key}]"))
    return cases


FILTER_VALUES = {"state": {"/v1/images": "live", "/v1/images/sources": "live",
                           "/v1/jobs": "completed"},
                 "range-start": "2020-01-01T00:00:00Z", "range-end": "2999-01-01T00:00:00Z",
                 "source_type": "direct"}


def _filter_value(path: str, key: str, source_id: str) -> str:
    value = FILTER_VALUES.get(key, "x")
    if isinstance(value, dict):
        return value[path]
    return source_id if key == "source_id" else value


def pytest_generate_tests(metafunc):
    if "parameter_case" in metafunc.fixturenames:
        from tests.conformance.spec import Spec as _Spec
        from tests.conformance.spec import SpecMissing, spec_dir

        try:
            cases = _parameter_cases(_Spec(spec_dir()))
        except SpecMissing:  # one case, which fails in the `spec` fixture with the reason
            metafunc.parametrize("parameter_case", [None], ids=["spec-missing"])
            return
        metafunc.parametrize("parameter_case", cases,
                             ids=[f"{p} {k}={v}" if k != "filter" else f"{p} {q}"
                                  for p, k, v, q in cases])


def test_query_parameters_the_spec_offers(spec, api, conform, parameter_case):
    path, name, value, key = parameter_case
    source_id = new_source(api, ORIGINS["docker-hub-plain"]).get_json()["data"]["id"]
    image_id = api.post("/v1/images", json={"source_id": source_id}).get_json()["data"]["id"]
    url = path.replace("{imageId}", image_id).replace("{sourceId}", source_id)
    query = {key: _filter_value(path, value, source_id) if name == "filter" else value}
    listed = f"{path} {name}={value}" in UNSUPPORTED_PARAMETERS
    response = api.get(url, query_string=query)
    if listed:  # answering 200 now would make the table's entry stale
        conform(response, "get", path, 422, f"{key}={query[key]}: listed in "
                "DELIBERATE_DIFFERENCES as not offered")
    else:
        conform(response, "get", path, 200, f"{key}={query[key]}")
    conform.verify()


def test_the_deliberate_differences_table():
    """Prints the table (pytest -s shows it), so the report and the code say the same."""
    for d in DELIBERATE_DIFFERENCES:
        print(f"[{d.kind}] {d.subject}\n    spec: {d.spec}\n    api:  {d.api}\n    why:  "
              f"{d.reason}")
    assert len({(d.kind, d.subject) for d in DELIBERATE_DIFFERENCES}) == len(
        DELIBERATE_DIFFERENCES)

