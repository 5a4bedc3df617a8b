"""Image sources, `/v1/images/sources`, as a client of the Cycle API sees them.

No Docker and no worker: these tests stop at what the API answers and what it stores.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from typing import Any

import pytest

from app import vault
from app.db import new_id, transaction
from app.hubs.services import create_key
from app.models import ImageSource, SourceState
from tests.api_calls import Api, Tenant, assert_error

SOURCES = "/v1/images/sources"
JSON = "application/json"
ZERO_TIME = "0001-01-01T00:00:00Z"
ID = re.compile(r"^[0-9a-f]{24}$")
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$")

# Every planted secret carries this marker, so one search finds any of them wherever it leaks.
MARK = "planted-"
TOKEN = "planted-token-4b1d"
PASSWORD = "planted-password-9e2c"
PASSPHRASE = "planted-passphrase-77aa"
PRIVATE_KEY = ("-----BEGIN OPENSSH PRIVATE KEY-----\nplanted-private-key-c0de\n"
               "-----END OPENSSH PRIVATE KEY-----")
API_KEY = "planted-api-key-5f5f"
SECRET = "planted-secret-a11c"
SECRET_FIELDS = {"token", "password", "passphrase", "private_key", "api_key", "secret"}


def origin(kind: str, **details: Any) -> dict[str, Any]:
    return {"type": kind, "details": details}


def user_auth(**details: Any) -> dict[str, Any]:
    return {"type": "user", "details": details}


ORIGINS = {
    "docker-hub": origin("docker-hub", target="library/busybox:1.36"),
    "docker-hub-token": origin("docker-hub", target="team/app:v2", username="robot", token=TOKEN),
    "docker-registry-password": origin("docker-registry", url="https://registry.example.com:5000",
                                       target="team/app:v2", username="robot", password=PASSWORD),
    "docker-registry-token": origin("docker-registry", url="registry.example.com", target="app",
                                    username="robot", token=TOKEN),
    "oci-registry-user": origin("oci-registry", url="https://ghcr.example.com", target="org/app:1",
                                auth=user_auth(username="robot", token=TOKEN)),
    "oci-registry-ecr": origin("oci-registry", url="https://123.dkr.ecr.us-east-1.amazonaws.com",
                               target="app:latest", auth={"type": "provider", "details": {
                                   "flavor": "ecr", "credentials": {
                                       "region": "us-east-1", "api_key": API_KEY, "secret": SECRET}}}),
    "oci-registry-webhook": origin("oci-registry", url="https://registry.example.com",
                                   target="team/app", auth={"type": "webhook", "details": {
                                       "url": "https://auth.example.com/registry-credentials"}}),
    "docker-file-repo-http": origin(
        "docker-file", context_dir="services/web", build_file="Dockerfile.prod",
        repo={"url": "https://git.example.com/team/app.git", "branch": "main",
              "ref": {"type": "tag", "value": "v1.2.0"},
              "auth": {"type": "http", "credentials": {"username": "robot", "password": PASSWORD}}},
        credentials=[{"url": "registry.example.com", "username": "robot", "token": TOKEN}]),
    "docker-file-repo-ssh": origin(
        "docker-file",
        repo={"url": "git@git.example.com:team/app.git",
              "ref": {"type": "hash", "value": "3f2a9c1d4e5b6a7980f1e2d3c4b5a69788796a5b"},
              "auth": {"type": "ssh", "credentials": {"username": "git", "passphrase": PASSPHRASE,
                                                      "private_key": PRIVATE_KEY}}}),
    "docker-file-targz": origin("docker-file", targz_url="https://files.example.com/app.tar.gz",
                                context_dir=".", build_file="Dockerfile"),
    "cycle-upload": {"type": "cycle-upload"},
    "none": {"type": "none"},
}
NONE_ORIGIN = ORIGINS["none"]


def split_secrets(value: Any) -> tuple[Any, list[str]]:
    """The document as a response must show it (secrets blank) and the secrets planted in it."""
    if isinstance(value, dict):
        shown, found = {}, []
        for key, item in value.items():
            if key in SECRET_FIELDS:
                shown[key] = ""
                found.append(item)
            else:
                shown[key], inner = split_secrets(item)
                found += inner
        return shown, found
    if isinstance(value, list):
        pairs = [split_secrets(item) for item in value]
        return [shown for shown, _ in pairs], [s for _, inner in pairs for s in inner]
    return value, []


SECRET_ORIGINS = {name: o for name, o in ORIGINS.items() if split_secrets(o)[1]}


def by_name(table: dict[str, Any]) -> Any:
    return pytest.mark.parametrize("source_origin", list(table.values()), ids=list(table))


# --- helpers -------------------------------------------------------------------------------------


def assert_time(value: str) -> datetime:
    assert RFC3339.match(value), value
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def create(api: Api, source_origin: dict[str, Any] = NONE_ORIGIN, **fields: Any) -> dict[str, Any]:
    response = api.post(SOURCES, json={"type": "direct", "origin": source_origin, **fields})
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["data"]


def patch(api: Api, source_id: str, **fields: Any) -> dict[str, Any]:
    response = api.patch(f"{SOURCES}/{source_id}", json=fields)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["data"]


def fetch(api: Api, source_id: str) -> dict[str, Any]:
    response = api.get(f"{SOURCES}/{source_id}")
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["data"]


def listed(api: Api, **params: str) -> list[dict[str, Any]]:
    response = api.get(SOURCES, query_string=params)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()["data"]


def listed_names(api: Api, **params: str) -> list[str]:
    return [source["name"] for source in listed(api, **params)]


def stored(source_id: str) -> tuple[dict[str, Any], bytes]:
    """The source's origin and sealed secrets as they sit in Postgres."""
    with transaction() as session:
        source = session.get(ImageSource, source_id)
        return source.origin, bytes(source.origin_secrets or b"")


def stored_secrets(source_id: str) -> list[str]:
    return sorted(vault.unseal(stored(source_id)[1]).values())


def mark_deleted(source_id: str) -> None:
    """Finish a deletion the way a worker would, so that a `deleted` source exists."""
    with transaction() as session:
        source = session.get(ImageSource, source_id)
        source.move_to(SourceState.DELETING)
        source.move_to(SourceState.DELETED)


@pytest.fixture
def other_api(client, other_tenant) -> Api:
    return Api(client, other_tenant)


# --- create --------------------------------------------------------------------------------------


@by_name(ORIGINS)
def test_create_answers_201_with_an_image_source_document(api, source_origin):
    source = create(api, source_origin, name="Web App")
    assert ID.match(source["id"])
    assert source["type"] == "direct"
    assert source["hub_id"] == api.tenant.hub_id
    assert (source["name"], source["identifier"]) == ("Web App", "web-app")
    assert source["origin"]["type"] == source_origin["type"]
    assert source["creator"] == {"id": api.tenant.key_id, "type": "api-key"}
    assert source["state"]["current"] == "live"
    assert_time(source["state"]["changed"])
    created = assert_time(source["events"]["created"])
    assert assert_time(source["events"]["updated"]) >= created
    assert source["events"]["deleted"] == ZERO_TIME


@by_name({k: v for k, v in ORIGINS.items() if k != "cycle-upload"})
def test_create_shows_the_origin_as_sent_with_secrets_blank(api, source_origin):
    shown, _ = split_secrets(source_origin)
    assert create(api, source_origin)["origin"] == shown


def test_cycle_upload_source_shows_no_token_and_its_images_show_theirs_once(api):
    source = create(api, {"type": "cycle-upload", "details": {"expires": "soon", "token": TOKEN}})
    assert source["origin"] == {"type": "cycle-upload", "details": {"expires": ZERO_TIME, "token": ""}}

    made = api.post("/v1/images", json={"source_id": source["id"]}).get_json()["data"]
    shown = made["source"]["details"]["origin"]["details"]
    assert len(shown["token"]) >= 32 and shown["token"] != TOKEN
    assert assert_time(shown["expires"]) > assert_time(made["events"]["created"])
    again = api.get(f"/v1/images/{made['id']}").get_json()["data"]
    assert again["source"]["details"]["origin"]["details"] == {"expires": shown["expires"],
                                                               "token": ""}


def test_create_is_found_again_by_get(api):
    source = create(api, ORIGINS["docker-hub"], name="Busybox", about={"description": "tiny"})
    assert fetch(api, source["id"]) == source
    assert source["about"] == {"description": "tiny"}


def test_identifier_is_slugged_from_the_name_when_not_given(api):
    assert create(api, name="My Web App!  v2")["identifier"] == "my-web-app-v2"


def test_given_identifier_is_kept(api):
    assert create(api, name="Web", identifier="web-prod.eu_1")["identifier"] == "web-prod.eu_1"


def test_source_without_a_name_still_gets_a_name_and_identifier(api):
    source = create(api, ORIGINS["docker-hub"])
    assert source["name"]
    assert re.match(r"^[a-z0-9][a-z0-9._-]*$", source["identifier"])


# --- secrets -------------------------------------------------------------------------------------


@by_name(SECRET_ORIGINS)
def test_secrets_never_appear_in_any_response(api, source_origin):
    created = api.post(SOURCES, json={"type": "direct", "origin": source_origin})
    source_id = created.get_json()["data"]["id"]
    responses = [
        created,
        api.get(f"{SOURCES}/{source_id}?include=creators&meta=images_count"),
        api.get(f"{SOURCES}?include=creators&meta=images_count"),
        api.patch(f"{SOURCES}/{source_id}", json={"name": "renamed"}),
        api.patch(f"{SOURCES}/{source_id}", json={"origin": source_origin}),
        api.post("/v1/images", json={"source_id": source_id}),
        api.get("/v1/images?include=sources"),
    ]
    for response in responses:
        assert response.status_code < 300, response.get_data(as_text=True)
        assert MARK not in response.get_data(as_text=True)


@by_name(SECRET_ORIGINS)
def test_secrets_are_encrypted_at_rest(api, source_origin):
    source_id = create(api, source_origin)["id"]
    origin_at_rest, sealed = stored(source_id)
    assert MARK not in json.dumps(origin_at_rest)
    assert MARK.encode() not in sealed
    assert stored_secrets(source_id) == sorted(split_secrets(source_origin)[1])


def test_source_without_secrets_stores_none(api):
    assert stored(create(api, ORIGINS["docker-hub"])["id"]) == (ORIGINS["docker-hub"], b"")


# --- update --------------------------------------------------------------------------------------


def test_patch_renames_the_source(api):
    source = create(api, name="Before")
    renamed = patch(api, source["id"], name="After")
    assert (renamed["name"], renamed["identifier"]) == ("After", source["identifier"])
    assert assert_time(renamed["events"]["updated"]) >= assert_time(source["events"]["updated"])
    assert fetch(api, source["id"])["name"] == "After"


def test_patch_changes_the_identifier(api):
    source = create(api, name="Web")
    assert patch(api, source["id"], identifier="web-2")["identifier"] == "web-2"
    assert fetch(api, source["id"])["identifier"] == "web-2"


def test_patch_with_an_empty_body_changes_nothing(api):
    source = create(api, ORIGINS["docker-hub-token"], name="Web")
    unchanged = patch(api, source["id"])
    assert {k: unchanged[k] for k in ("name", "identifier", "origin")} == \
        {k: source[k] for k in ("name", "identifier", "origin")}
    assert stored_secrets(source["id"]) == [TOKEN]


def test_patch_replaces_the_origin_and_its_secrets(api):
    source = create(api, ORIGINS["docker-hub-token"])
    replacement = ORIGINS["docker-registry-password"]
    assert patch(api, source["id"], origin=replacement)["origin"] == split_secrets(replacement)[0]
    assert stored_secrets(source["id"]) == [PASSWORD]


@by_name(SECRET_ORIGINS)
def test_patch_sending_back_the_origin_as_shown_keeps_the_secrets(api, source_origin):
    source = create(api, source_origin)
    shown = fetch(api, source["id"])["origin"]
    assert patch(api, source["id"], origin=shown)["origin"] == shown
    assert stored_secrets(source["id"]) == sorted(split_secrets(source_origin)[1])


def test_patch_with_a_new_secret_replaces_the_stored_one(api):
    source = create(api, ORIGINS["docker-hub-token"])
    patch(api, source["id"], origin=origin("docker-hub", target="team/app:v2", username="robot",
                                           token="planted-token-rotated"))
    assert stored_secrets(source["id"]) == ["planted-token-rotated"]


def test_patch_of_the_target_alone_keeps_the_secret(api):
    source = create(api, ORIGINS["docker-registry-password"])
    shown = fetch(api, source["id"])["origin"]
    patch(api, source["id"], origin={**shown, "details": {**shown["details"], "target": "team/app:v3"}})
    assert stored_secrets(source["id"]) == [PASSWORD]


def test_blank_secret_is_not_carried_to_a_new_registry(api):
    source = create(api, ORIGINS["docker-registry-password"], name="Web")
    shown = fetch(api, source["id"])["origin"]
    elsewhere = {**shown, "details": {**shown["details"], "url": "https://attacker.example.net"}}
    response = api.patch(f"{SOURCES}/{source['id']}", json={"name": "Moved", "origin": elsewhere})
    assert_error(response, 422, "422.invalid-input", "/origin/details/password")
    assert fetch(api, source["id"]) == source
    assert stored_secrets(source["id"]) == [PASSWORD]


def test_new_registry_with_a_new_secret_is_accepted(api):
    source = create(api, ORIGINS["docker-registry-password"])
    moved = origin("docker-registry", url="https://mirror.example.net", target="team/app:v2",
                   username="robot", password="planted-password-mirror")
    assert patch(api, source["id"], origin=moved)["origin"]["details"]["url"] == "https://mirror.example.net"
    assert stored_secrets(source["id"]) == ["planted-password-mirror"]


def test_patch_leaving_out_a_secret_forgets_it(api):
    source = create(api, ORIGINS["docker-hub-token"])
    patch(api, source["id"], origin=origin("docker-hub", target="team/app:v2"))
    assert stored_secrets(source["id"]) == []


def test_patch_of_a_missing_source_is_404(api):
    assert_error(api.patch(f"{SOURCES}/{new_id()}", json={"name": "x"}), 404, "404.image.source")


# --- bad input -----------------------------------------------------------------------------------


def body(**fields: Any) -> dict[str, Any]:
    return {"type": "direct", "origin": NONE_ORIGIN, **fields}


def hub_origin(target: Any) -> dict[str, Any]:
    return origin("docker-hub", target=target)


def registry_origin(url: str) -> dict[str, Any]:
    return origin("docker-registry", target="team/app", url=url)


MISSING, INVALID = "422.missing-argument", "422.invalid-input"
BAD_BODIES = [
    pytest.param({"data": '{"type": "direct", ', "content_type": JSON}, 400, "400.invalid-syntax",
                 None, id="malformed-json"),
    pytest.param({"data": b"", "content_type": JSON}, 400, "400.invalid-syntax", None, id="empty-body"),
    pytest.param({"data": json.dumps(body()), "content_type": "text/plain"}, 415,
                 "415.invalid-content-type", None, id="text-plain"),
    pytest.param({"data": json.dumps(body())}, 415, "415.invalid-content-type", None,
                 id="no-content-type"),
    pytest.param({"json": [body()]}, 422, INVALID, None, id="json-array"),
    pytest.param({"json": {"type": "direct"}}, 422, MISSING, "/origin", id="missing-origin"),
    pytest.param({"json": {"origin": NONE_ORIGIN}}, 422, MISSING, "/type", id="missing-type"),
    pytest.param({"json": body(origin={"details": {}})}, 422, MISSING, "/origin/type",
                 id="missing-origin-type"),
    pytest.param({"json": body(origin=origin("docker-hub"))}, 422, MISSING, "/origin/details/target",
                 id="missing-target"),
    pytest.param({"json": body(origin=hub_origin(5))}, 422, INVALID, "/origin/details/target",
                 id="target-not-a-string"),
    pytest.param({"json": body(name=["a"])}, 422, INVALID, "/name", id="name-not-a-string"),
    pytest.param({"json": body(colour="blue")}, 422, INVALID, "/colour", id="unknown-field"),
    pytest.param({"json": body(origin=origin("docker-hub", target="app", colour="blue"))}, 422,
                 INVALID, "/origin/details/colour", id="unknown-origin-field"),
    pytest.param({"json": body(origin={"type": "ftp", "details": {}})}, 422, INVALID, "/origin/type",
                 id="unknown-origin-type"),
    pytest.param({"json": body(origin=hub_origin("Not An Image!"))}, 422, INVALID,
                 "/origin/details/target", id="target-not-an-image-reference"),
    pytest.param({"json": body(origin=registry_origin("https://registry.example.com/v2/team"))}, 422,
                 INVALID, "/origin/details/url", id="registry-url-with-path"),
    pytest.param({"json": body(origin=registry_origin("ftp://registry.example.com"))}, 422, INVALID,
                 "/origin/details/url", id="registry-url-bad-scheme"),
    pytest.param({"json": body(origin=origin("oci-registry", target="app", url="registry.example.com",
                                             auth={"details": {}}))}, 422, MISSING,
                 "/origin/details/auth/type", id="missing-auth-type"),
    pytest.param({"json": body(origin=origin("docker-file", targz_url="https://files.example.com/a.tgz",
                                             repo={"url": "https://git.example.com/a.git"}))}, 422,
                 INVALID, "/origin/details", id="repo-and-targz-url"),
    pytest.param({"json": body(origin=origin("docker-file", targz_url="file:///etc/passwd"))}, 422,
                 INVALID, "/origin/details/targz_url", id="targz-url-not-http"),
    pytest.param({"json": body(origin=origin("docker-file",
                                             targz_url="https://user:pw@files.example.com/a.tgz"))},
                 422, INVALID, "/origin/details/targz_url", id="targz-url-with-credentials"),
    pytest.param({"json": body(origin=origin("docker-file",
                                             repo={"url": "https://token@git.example.com/a.git"}))},
                 422, INVALID, "/origin/details/repo/url", id="repo-url-with-a-token"),
    pytest.param({"json": body(origin=origin("docker-file",
                                             repo={"url": "ssh://git:pw@git.example.com/a.git"}))},
                 422, INVALID, "/origin/details/repo/url", id="repo-url-with-a-password"),
    pytest.param({"json": body(origin=origin("cycle-source", source_id=new_id()))}, 422, INVALID,
                 "/origin", id="cycle-source-origin"),
    pytest.param({"json": body(type="stack-build")}, 422, INVALID, "/type", id="stack-build-type"),
    pytest.param({"json": body(identifier="Web Prod")}, 422, INVALID, "/identifier",
                 id="identifier-not-a-slug"),
    pytest.param({"json": body(name="   ")}, 422, INVALID, "/name", id="blank-name"),
    pytest.param({"json": body(name="nul\x00byte")}, 422, INVALID, "/name", id="nul-in-name"),
    pytest.param({"json": body(origin=origin("docker-hub", target="busybox:1.36",
                                             username="nul\x00byte"))}, 422, INVALID,
                 "/origin/details/username", id="nul-in-origin"),
    pytest.param({"json": body(origin={"type": "none", "details": {"note": "x"}})}, 422, INVALID,
                 "/origin/details", id="details-on-a-none-origin"),
    pytest.param({"data": json.dumps(body(name="x" * (1024 * 1024))), "content_type": JSON}, 413,
                 "413.too-large", None, id="over-1-mib"),
]


@pytest.mark.parametrize("request_args, status, code, source", BAD_BODIES)
def test_bad_create_is_refused_and_creates_nothing(api, request_args, status, code, source):
    assert_error(api.post(SOURCES, **request_args), status, code, source)
    assert listed(api, **{"filter[state]": "live,deleting,deleted"}) == []




def as_patch(param: Any) -> Any:
    """The same fault in a PATCH body, which has no `type` field."""
    request_args, *expected = param.values
    if isinstance(request_args.get("json"), dict):
        request_args = {**request_args, "json": {k: v for k, v in request_args["json"].items()
                                                 if k != "type"}}
    return pytest.param(request_args, *expected, id=param.id)


BAD_PATCHES = [as_patch(p) for p in BAD_BODIES
               if p.id not in {"missing-origin", "missing-type", "stack-build-type"}]


@pytest.mark.parametrize("request_args, status, code, source", BAD_PATCHES)
def test_bad_patch_is_refused_and_changes_nothing(api, request_args, status, code, source):
    before = create(api, ORIGINS["docker-hub-token"], name="Web")
    assert_error(api.patch(f"{SOURCES}/{before['id']}", **request_args), status, code, source)
    assert fetch(api, before["id"]) == before
    assert stored_secrets(before["id"]) == [TOKEN]


# --- list ----------------------------------------------------------------------------------------


def create_named(api: Api, *names: str) -> list[dict[str, Any]]:
    return [create(api, name=name) for name in names]


def test_list_shows_the_hubs_sources_newest_first(api):
    create_named(api, "first", "second", "third")
    assert listed_names(api) == ["third", "second", "first"]


def test_list_leaves_out_deleted_sources_by_default(api):
    kept, gone = create_named(api, "kept", "gone")
    mark_deleted(gone["id"])
    assert listed_names(api) == ["kept"]
    assert fetch(api, gone["id"])["state"]["current"] == "deleted"
    assert fetch(api, gone["id"])["events"]["deleted"] != ZERO_TIME


@pytest.mark.parametrize("states, expected", [
    ("deleted", ["gone"]),
    ("live", ["kept"]),
    ("deleting", ["going"]),
    ("live,deleted", ["gone", "kept"]),
])
def test_filter_state_selects_sources_by_state(api, states, expected):
    kept, going, gone = create_named(api, "kept", "going", "gone")
    mark_deleted(gone["id"])
    assert api.delete(f"{SOURCES}/{going['id']}").status_code == 202
    assert sorted(listed_names(api, **{"filter[state]": states})) == expected


def test_filter_identifier_selects_exact_identifier(api):
    create(api, name="Web", identifier="web")
    create(api, name="Web 2", identifier="web-2")
    assert listed_names(api, **{"filter[identifier]": "web"}) == ["Web"]


def test_filter_search_matches_a_name_substring_ignoring_case(api):
    create_named(api, "Frontend Web", "backend-WEB-api", "Database")
    assert sorted(listed_names(api, **{"filter[search]": "wEb"})) == ["Frontend Web", "backend-WEB-api"]


@pytest.mark.parametrize("wildcard", ["%", "_"])
def test_filter_search_takes_sql_wildcards_literally(api, wildcard):
    create_named(api, f"100{wildcard}pure", "100 pure", "plain")
    assert listed_names(api, **{"filter[search]": wildcard}) == [f"100{wildcard}pure"]


@pytest.mark.parametrize("sort, expected", [("name", ["alpha", "bravo", "charlie"]),
                                            ("-name", ["charlie", "bravo", "alpha"])])
def test_sort_by_name(api, sort, expected):
    create_named(api, "bravo", "charlie", "alpha")
    assert listed_names(api, sort=sort) == expected


def test_pages_split_the_list_without_overlap(api):
    create_named(api, "a", "b", "c", "d", "e")
    pages = [listed_names(api, sort="name", **{"page[size]": "2", "page[number]": str(n)})
             for n in (1, 2, 3, 4)]
    assert pages == [["a", "b"], ["c", "d"], ["e"], []]


def test_default_page_size_is_20(api):
    create_named(api, *(f"source {n:02}" for n in range(21)))
    assert len(listed(api)) == 20
    assert len(listed(api, **{"page[size]": "100"})) == 21


@pytest.mark.parametrize("params, code, source", [
    ({"page[size]": "101"}, "422.max-exceeded", "page[size]"),
    ({"page[size]": "0"}, "422.invalid-argument", "page[size]"),
    ({"page[size]": "abc"}, "422.invalid-argument", "page[size]"),
    ({"page[number]": "0"}, "422.invalid-argument", "page[number]"),
    ({"page[number]": "-1"}, "422.invalid-argument", "page[number]"),
    ({"page[number]": "99999999999999999999"}, "422.max-exceeded", "page[number]"),
    ({"filter[colour]": "blue"}, "422.invalid-argument", "filter[colour]"),
    ({"filter[label1]": "blue"}, "422.invalid-argument", "filter[label1]"),
    ({"filter[state]": "sleeping"}, "422.invalid-argument", "filter[state]"),
    ({"filter[search]": "nul\x00byte"}, "422.invalid-argument", "filter[search]"),
    ({"sort": "colour"}, "422.invalid-argument", "sort"),
    ({"sort": "-colour"}, "422.invalid-argument", "sort"),
    ({"include": "everything"}, "422.invalid-argument", "include"),
    ({"meta": "everything"}, "422.invalid-argument", "meta"),
])
def test_bad_list_parameters_are_refused(api, params, code, source):
    create(api)
    assert_error(api.get(SOURCES, query_string=params), 422, code, source)


def make_images(api: Api, source_id: str, count: int) -> None:
    for _ in range(count):
        response = api.post("/v1/images", json={"source_id": source_id})
        assert response.status_code == 201, response.get_data(as_text=True)


def images_count(new: int) -> dict[str, Any]:
    # Every state but `deleted`, at zero too: `uploading` (an image waiting for its tar) as well.
    states = dict.fromkeys(("new", "uploading", "downloading", "building", "verifying", "saving",
                            "live", "deleting"), 0)
    return {"total": new, "state": {**states, "new": new}}


def test_meta_images_count_counts_each_sources_images(api):
    busy, idle = create_named(api, "busy", "idle")
    make_images(api, busy["id"], 2)
    counts = {s["name"]: s["meta"]["images_count"] for s in listed(api, meta="images_count")}
    assert counts == {"busy": images_count(2), "idle": images_count(0)}


def test_meta_images_count_on_one_source(api):
    source = create(api)
    make_images(api, source["id"], 3)
    document = api.get(f"{SOURCES}/{source['id']}?meta=images_count").get_json()["data"]
    assert document["meta"]["images_count"] == images_count(3)


def test_without_meta_no_meta_is_shown(api):
    create(api)
    assert "meta" not in listed(api)[0]


@pytest.mark.parametrize("one", [False, True], ids=["list", "one"])
def test_include_creators_shows_the_creating_key_without_its_secret(api, one):
    source = create(api)
    url = f"{SOURCES}/{source['id']}" if one else SOURCES
    response = api.get(url, query_string={"include": "creators"})
    creators = response.get_json()["includes"]["creators"]
    key = creators["api_keys"][api.tenant.key_id]
    assert key["id"] == api.tenant.key_id and key["hub_id"] == api.tenant.hub_id
    assert key["state"]["current"] == "live"
    text = response.get_data(as_text=True)
    assert api.tenant.secret not in text and "secret" not in text


# --- tenancy -------------------------------------------------------------------------------------


@pytest.fixture
def foreign_source(other_api) -> dict[str, Any]:
    return create(other_api, ORIGINS["docker-hub-token"], name="Foreign Secret Project")


def call(api: Api, method: str, source_id: str):
    if method == "patch":
        return api.patch(f"{SOURCES}/{source_id}", json={"name": "taken over"})
    return getattr(api, method)(f"{SOURCES}/{source_id}")


def not_found_error(api: Api, method: str, source_id: str) -> dict[str, Any]:
    error = assert_error(call(api, method, source_id), 404, "404.image.source")
    return {**error, "detail": error.get("detail", "").replace(source_id, "<id>")}


@pytest.mark.parametrize("method", ["get", "patch", "delete"])
def test_another_hubs_source_is_answered_like_a_missing_one(api, other_api, foreign_source, method):
    assert not_found_error(api, method, foreign_source["id"]) == not_found_error(api, method, new_id())
    assert fetch(other_api, foreign_source["id"]) == foreign_source


@pytest.mark.parametrize("missing_id", ["not-an-id", "a" * 300, "nul\x00byte"])
def test_malformed_source_id_is_404(api, missing_id):
    assert_error(api.get(f"{SOURCES}/{missing_id}"), 404, "404.image.source")


@pytest.mark.parametrize("params", [
    {},
    {"filter[state]": "live,deleting,deleted"},
    {"filter[search]": "Foreign"},
    {"filter[search]": "FOREIGN_SOURCE_ID"},
    {"filter[identifier]": "foreign-secret-project"},
])
def test_another_hubs_source_never_shows_in_the_list(api, foreign_source, params):
    create(api, name="Mine")
    params = {k: v.replace("FOREIGN_SOURCE_ID", foreign_source["id"]) for k, v in params.items()}
    assert foreign_source["id"] not in {s["id"] for s in listed(api, **params)}


def test_image_cannot_be_made_from_another_hubs_source(api, foreign_source):
    response = api.post("/v1/images", json={"source_id": foreign_source["id"]})
    assert_error(response, 404, "404.image.source")


# --- delete --------------------------------------------------------------------------------------


def test_delete_answers_202_with_a_job_descriptor(api):
    source = create(api)
    response = api.delete(f"{SOURCES}/{source['id']}")
    assert response.status_code == 202
    descriptor = response.get_json()["data"]
    assert descriptor["action"] == "delete"
    job = descriptor["job"]
    assert ID.match(job["id"]) and job["accepted"] is True
    assert isinstance(job["queue"], str) and job["queue"]
    assert_time(job["schedule"])
    assert isinstance(job["parallel"]["tasks"], bool)
    assert job["tasks"] and {"caption", "header", "input", "steps"} <= set(job["tasks"][0])
    assert api.get(f"/v1/jobs/{job['id']}").status_code == 200


def test_deleted_source_is_deleting_until_the_job_runs(api):
    source = create(api)
    api.delete(f"{SOURCES}/{source['id']}")
    assert fetch(api, source["id"])["state"]["current"] == "deleting"
    assert [s["state"]["current"] for s in listed(api)] == ["deleting"]


def test_patch_of_a_deleting_source_is_refused(api):
    source = create(api, name="Doomed")
    api.delete(f"{SOURCES}/{source['id']}")
    assert_error(api.patch(f"{SOURCES}/{source['id']}", json={"name": "Saved"}), 403,
                 "403.invalid-state")
    assert fetch(api, source["id"])["name"] == "Doomed"


def test_delete_of_a_deleted_source_is_refused(api):
    source = create(api)
    mark_deleted(source["id"])
    assert_error(api.delete(f"{SOURCES}/{source['id']}"), 403, "403.invalid-state")


def test_image_cannot_be_made_from_a_deleting_source(api):
    source = create(api)
    api.delete(f"{SOURCES}/{source['id']}")
    assert_error(api.post("/v1/images", json={"source_id": source["id"]}), 403, "403.invalid-state")


def test_another_key_of_the_same_hub_sees_the_source(client, api):
    source = create(api)
    with transaction() as session:
        key, secret = create_key(session, api.tenant.hub_id, "colleague", ["images-sources-view"])
    colleague = Api(client, Tenant(api.tenant.hub_id, key.id, secret))
    assert fetch(colleague, source["id"]) == source


def test_an_error_under_a_key_named_like_an_origin_type_points_at_that_key(api):
    response = api.post("/v1/images/sources", json={
        "type": "direct", "origin": NONE_ORIGIN,
        "acl": {"roles": {"http": {"view": "maybe", "modify": True, "manage": True}}}})
    assert response.status_code == 422
    assert response.get_json()["error"]["source"] == "/acl/roles/http/view"
