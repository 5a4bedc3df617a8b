"""/v1/images and /v1/jobs through the API: create, list, read, rename, queue imports.

No worker runs in these tests (except the last, which says so), so the jobs they queue stay queued.
Their sources point at a tag that does not exist, so a worker that meets them later fails them fast.
"""

from __future__ import annotations

from urllib.parse import quote

import pytest

from app.db import ZERO_TIME, transaction
from app.hubs.services import create_key
from tests.api_calls import (
    Api,
    assert_error,
    create_image,
    create_source,
    get_image,
    image_from,
    import_and_wait,
    import_image,
    listed_ids,
    registry_origin,
    repository_path,
)

ABSENT = "tests/absent:v0"
NONE_ORIGIN = {"type": "none"}


@pytest.fixture
def source(api) -> dict:
    return create_source(api, registry_origin(ABSENT, username="reader", password="s3cret-pw"))


@pytest.fixture
def other_api(client, other_tenant) -> Api:
    return Api(client, other_tenant)


# Create


def test_a_new_image_is_new_and_named_after_its_source(api, source):
    response = api.post("/v1/images", json={"source_id": source["id"]})

    assert response.status_code == 201
    image = response.get_json()["data"]
    assert image["state"]["current"] == "new"
    assert image["name"] == source["name"] == ABSENT
    assert image["hub_id"] == api.tenant.hub_id
    assert image["source"]["details"]["id"] == source["id"]
    assert get_image(api, image["id"]) == image


def test_a_new_image_takes_the_name_given(api, source):
    assert create_image(api, source["id"], name="web frontend")["name"] == "web frontend"


def test_a_new_image_shows_its_sources_origin_with_secrets_blanked(api, source):
    origin = create_image(api, source["id"])["source"]["details"]["origin"]

    assert origin == {"type": "docker-registry",
                      "details": {"url": "http://127.0.0.1:5000", "target": ABSENT,
                                  "username": "reader", "password": ""}}


def test_a_new_image_keeps_its_build_args(api, source):
    image = create_image(api, source["id"], build={"args": {"VERSION": "1.2", "MODE": "prod"}})

    assert get_image(api, image["id"])["build"]["args"] == {"VERSION": "1.2", "MODE": "prod"}


def test_override_target_is_accepted_for_a_registry_source(api, source):
    image = create_image(api, source["id"], override={"target": "tests/other:v2"})

    assert get_image(api, image["id"])["source"]["override"] == {"target": "tests/other:v2"}


def test_override_target_is_refused_for_a_source_without_a_registry(api):
    none_source = create_source(api, NONE_ORIGIN)

    response = api.post("/v1/images", json={"source_id": none_source["id"],
                                            "override": {"target": "tests/other:v2"}})

    assert assert_error(response, 422, "422.invalid-input")["source"] == "/override/target"


def test_override_targz_url_is_only_for_dockerfile_sources(api, source):
    dockerfile = create_source(api, {"type": "docker-file",
                                     "details": {"targz_url": "https://example.com/app.tar.gz"}})
    override = {"targz_url": "https://example.com/other.tar.gz"}

    refused = api.post("/v1/images", json={"source_id": source["id"], "override": override})
    accepted = api.post("/v1/images", json={"source_id": dockerfile["id"], "override": override})

    assert assert_error(refused, 422, "422.invalid-input")["source"] == "/override/targz_url"
    assert accepted.status_code == 201
    assert accepted.get_json()["data"]["source"]["override"] == override


def test_an_image_without_source_id_is_a_missing_argument(api):
    error = assert_error(api.post("/v1/images", json={"name": "x"}), 422, "422.missing-argument")

    assert error["source"] == "/source_id"


def test_a_source_of_another_hub_is_not_found(api, other_api):
    foreign = create_source(other_api, NONE_ORIGIN)

    assert_error(api.post("/v1/images", json={"source_id": foreign["id"]}), 404, "404.image.source")


def test_a_source_that_does_not_exist_is_not_found(api):
    response = api.post("/v1/images", json={"source_id": "0" * 24})

    assert_error(response, 404, "404.image.source")


def test_malformed_json_is_a_400(api):
    response = api.post("/v1/images", data='{"source_id": ', content_type="application/json")

    assert_error(response, 400, "400.invalid-syntax")


@pytest.mark.parametrize("body", [
    "null", "[]", '"text"', '{"source_id": 5}', '{"source_id": ["a"]}',
    '{"source_id": "SOURCE", "name": 7}', '{"source_id": "SOURCE", "build": {"args": {"A": 1}}}',
    '{"source_id": "SOURCE", "build": "fast"}', '{"source_id": "SOURCE", "override": "x"}',
    '{"source_id": "SOURCE", "override": {"target": "Not A Reference!"}}',
    '{"source_id": "SOURCE", "colour": "red"}',
], ids=lambda body: body[:40])
def test_a_body_of_wrong_types_is_a_422(api, source, body):
    response = api.post("/v1/images", data=body.replace("SOURCE", source["id"]),
                        content_type="application/json")

    assert response.status_code == 422, response.get_json()
    assert response.get_json()["error"]["code"].startswith("422.")


@pytest.fixture
def dockerfile_source(api) -> dict:
    return create_source(api, {"type": "docker-file",
                               "details": {"targz_url": "https://example.com/app.tar.gz"}})


@pytest.mark.parametrize("body", [
    {"source_id": "a\u0000b"}, {"name": "a\u0000b"}, {"build": {"args": {"A": "\u0000"}}},
    {"build": {"args": {"\u0000": "1"}}}, {"override": {"targz_url": "https://example.com/\u0000"}},
], ids=["source_id", "name", "build-arg-value", "build-arg-name", "targz_url"])
def test_text_with_a_nul_character_is_refused(api, dockerfile_source, body):
    response = api.post("/v1/images", json={"source_id": dockerfile_source["id"], **body})

    assert_error(response, 422, "422.invalid-input")


def test_a_rename_with_a_nul_character_is_refused(api, source):
    image = create_image(api, source["id"])

    assert_error(api.patch(f"/v1/images/{image['id']}", json={"name": "a\u0000"}),
                 422, "422.invalid-input")
    assert get_image(api, image["id"])["name"] == image["name"]


@pytest.mark.parametrize("call", [
    lambda api: api.get("/v1/images/a%00b"), lambda api: api.patch("/v1/images/a%00b", json={}),
    lambda api: api.post("/v1/images/a%00b/tasks", json={"action": "import"}),
    lambda api: api.get("/v1/images/a%00b/build-log"),
], ids=["get", "patch", "import", "build-log"])
def test_an_image_id_with_a_nul_character_is_not_found(api, call):
    assert_error(call(api), 404, "404.image")


# List and read


def images(api, query: str = "") -> list[str]:
    return listed_ids(api.get(f"/v1/images?{query}"))


def test_the_list_filters_by_state(api, source):
    image = create_image(api, source["id"])

    assert images(api, "filter[state]=new") == [image["id"]]
    assert images(api, "filter[state]=live,downloading") == []


def test_the_list_filters_by_source(api, source):
    mine = create_image(api, source["id"])
    create_image(api, create_source(api, NONE_ORIGIN)["id"])

    assert images(api, f"filter[source_id]={source['id']}") == [mine["id"]]


def test_the_list_searches_names(api, source):
    web = create_image(api, source["id"], name="Web Frontend")
    create_image(api, source["id"], name="batch worker")

    assert images(api, "filter[search]=frontend") == [web["id"]]


def test_the_list_sorts_by_name(api, source):
    by_name = {name: create_image(api, source["id"], name=name)["id"] for name in ("b", "c", "a")}

    assert images(api, "sort=name") == [by_name["a"], by_name["b"], by_name["c"]]
    assert images(api, "sort=-name") == [by_name["c"], by_name["b"], by_name["a"]]


def test_the_list_pages(api, source):
    ids = [create_image(api, source["id"], name=f"image {n}")["id"] for n in range(5)]

    pages = [images(api, f"sort=name&page[size]=2&page[number]={n}") for n in (1, 2, 3, 4)]

    assert pages == [ids[0:2], ids[2:4], ids[4:5], []]


@pytest.mark.parametrize("name", ["search", "source_id"])
def test_a_list_filter_with_a_nul_character_is_refused(api, name):
    response = api.get(f"/v1/images?filter[{name}]=a%00b")

    assert assert_error(response, 422, "422.invalid-argument")["source"] == f"filter[{name}]"


def test_the_list_includes_sources_by_id(api, source):
    create_image(api, source["id"])

    includes = api.get("/v1/images?include=sources").get_json()["includes"]

    assert list(includes["sources"]) == [source["id"]]
    assert includes["sources"][source["id"]]["name"] == source["name"]
    assert includes["sources"][source["id"]]["origin"]["details"]["password"] == ""


def test_the_list_includes_creators(api, source):
    image = create_image(api, source["id"])

    includes = api.get("/v1/images?include=creators").get_json()["includes"]

    assert image["creator"] == {"id": api.tenant.key_id, "type": "api-key"}
    assert list(includes["creators"]["api_keys"]) == [api.tenant.key_id]


def test_another_hubs_images_never_appear(api, other_api, source):
    mine = create_image(api, source["id"])
    image_from(other_api, NONE_ORIGIN)

    assert images(api) == [mine["id"]]
    assert images(api, "filter[state]=new,live,deleted&page[size]=100") == [mine["id"]]


def test_another_hubs_image_is_not_found(api, other_api):
    foreign = image_from(other_api, NONE_ORIGIN)

    assert_error(api.get(f"/v1/images/{foreign['id']}"), 404, "404.image")
    assert_error(api.patch(f"/v1/images/{foreign['id']}", json={"name": "mine"}), 404, "404.image")
    assert_error(api.post(f"/v1/images/{foreign['id']}/tasks", json={"action": "import"}),
                 404, "404.image")
    assert get_image(other_api, foreign["id"])["name"] == "none source"


def test_patch_renames_an_image(api, source):
    image = create_image(api, source["id"])

    response = api.patch(f"/v1/images/{image['id']}", json={"name": "renamed"})

    assert response.status_code == 200
    assert response.get_json()["data"]["name"] == "renamed"
    assert get_image(api, image["id"])["name"] == "renamed"


# Import tasks and jobs


def test_import_answers_202_with_a_job_descriptor(api, source):
    image = create_image(api, source["id"])

    response = api.post(f"/v1/images/{image['id']}/tasks", json={"action": "import"})

    assert response.status_code == 202
    descriptor = response.get_json()["data"]
    assert descriptor["action"] == "import"
    job = descriptor["job"]
    assert len(job["id"]) == 24
    assert job["accepted"] is True
    assert job["queue"] == "imagejobs-pull"
    assert job["schedule"] != "0001-01-01T00:00:00Z"
    assert job["parallel"] == {"sub_queue": None, "tasks": False}
    [task] = job["tasks"]
    assert task["header"] == "import"
    assert task["caption"]
    assert task["input"] == {"image_id": image["id"]}
    # Every step the import will take is listed from the start, none started yet.
    assert [(s["caption"], s["started"], s["completed"]) for s in task["steps"]] == [
        (caption, ZERO_TIME, ZERO_TIME) for caption in ("Pull", "Verify", "Save")]


def test_a_second_import_while_the_first_is_queued_returns_the_same_job(api, source):
    image = create_image(api, source["id"])

    first = import_image(api, image["id"])["job"]["id"]
    second = import_image(api, image["id"])["job"]["id"]

    assert second == first
    job = api.get(f"/v1/jobs/{first}").get_json()["data"]
    assert job["limit_duplicates"] is True
    assert job["hash"]
    assert listed_ids(api.get("/v1/jobs")) == [first]


@pytest.mark.parametrize("body", [{"action": "build"}, {}, {"action": 5}, {"action": "import", "x": 1}])
def test_an_image_task_other_than_import_is_refused(api, source, body):
    image = create_image(api, source["id"])

    response = api.post(f"/v1/images/{image['id']}/tasks", json=body)

    assert response.status_code == 422
    assert listed_ids(api.get("/v1/jobs")) == []


@pytest.mark.parametrize(("origin", "words"), [
    (NONE_ORIGIN, "nothing to import"),
    ({"type": "cycle-upload"}, "uploading their tar"),
])
def test_an_image_without_a_registry_cannot_be_imported(api, origin, words):
    image = image_from(api, origin)

    response = api.post(f"/v1/images/{image['id']}/tasks", json={"action": "import"})

    assert words in assert_error(response, 422, "422.invalid-argument")["detail"]
    assert get_image(api, image["id"])["state"]["current"] == "new"


def test_the_jobs_list_shows_only_the_hubs_jobs(api, other_api, source):
    mine = [import_image(api, create_image(api, source["id"])["id"])["job"]["id"] for _ in range(2)]
    other_source = create_source(other_api, registry_origin(ABSENT))
    import_image(other_api, create_image(other_api, other_source["id"])["id"])

    assert listed_ids(api.get("/v1/jobs")) == mine[::-1]
    assert listed_ids(api.get("/v1/jobs?sort=created")) == mine


def test_the_jobs_list_filters_by_state(api, source):
    job_id = import_image(api, create_image(api, source["id"])["id"])["job"]["id"]

    assert listed_ids(api.get("/v1/jobs?filter[state]=completed,expired")) == []
    assert listed_ids(api.get("/v1/jobs?filter[state]=queued,running,completed,error")) == [job_id]
    assert_error(api.get("/v1/jobs?filter[state]=sleeping"), 422, "422.invalid-argument")


def test_the_jobs_list_pages(api, source):
    jobs = [import_image(api, create_image(api, source["id"])["id"])["job"]["id"] for _ in range(3)]

    pages = [listed_ids(api.get(f"/v1/jobs?sort=created&page[size]=2&page[number]={n}"))
             for n in (1, 2)]

    assert pages == [jobs[0:2], jobs[2:3]]


def test_another_hubs_job_is_not_found(api, other_api):
    other_source = create_source(other_api, registry_origin(ABSENT))
    job_id = import_image(other_api, create_image(other_api, other_source["id"])["id"])["job"]["id"]

    assert_error(api.get(f"/v1/jobs/{job_id}"), 404, "404.job")
    assert other_api.get(f"/v1/jobs/{job_id}").status_code == 200


def test_a_job_that_does_not_exist_is_not_found(api):
    assert_error(api.get(f"/v1/jobs/{'0' * 24}"), 404, "404.job")


def test_a_job_id_with_a_nul_character_is_not_found(api):
    assert_error(api.get("/v1/jobs/a%00b"), 404, "404.job")


def test_a_jobs_search_with_a_nul_character_is_refused(api):
    assert_error(api.get("/v1/jobs?filter[search]=a%00b"), 422, "422.invalid-argument")


@pytest.mark.parametrize("path", ["/v1/images", "/v1/jobs"])
def test_a_page_number_past_any_list_is_not_a_server_error(api, source, path):
    import_image(api, create_image(api, source["id"])["id"])

    response = api.get(f"{path}?page[number]=99999999999999999999")

    assert response.status_code in (200, 422), response.get_json()
    if response.status_code == 200:
        assert response.get_json()["data"] == []


def test_an_imported_image_has_no_build_log(api, worker, pushed_image):
    """Uses the worker: the image is really imported, not built."""
    image = image_from(api, registry_origin(repository_path(pushed_image.public)))
    assert import_and_wait(api, image["id"])["state"]["current"] == "completed"

    assert_error(api.get(f"/v1/images/{image['id']}/build-log"), 404, "404.image.build-log")


def test_the_jobs_list_filters_by_a_time_range(api, source):
    job = import_image(api, create_image(api, source["id"])["id"])["job"]
    queued = api.get(f"/v1/jobs/{job['id']}").get_json()["data"]["events"]["queued"]

    assert listed_ids(api.get(f"/v1/jobs?filter[range-start]={queued}")) == [job["id"]]
    assert listed_ids(api.get("/v1/jobs?filter[range-end]=2000-01-01T00:00:00Z")) == []
    assert listed_ids(api.get("/v1/jobs?filter[range-start]=2000-01-01T00:00:00Z"
                              f"&filter[range-end]={queued}")) == [job["id"]]
    assert_error(api.get("/v1/jobs?filter[range-start]=yesterday"), 422, "422.invalid-argument",
                 source="filter[range-start]")


def test_images_are_found_by_their_sources_identifier(api, other_api):
    mine = create_source(api, registry_origin(ABSENT), identifier="web-app")
    image = create_image(api, mine["id"])
    create_image(api, create_source(api, registry_origin(ABSENT), identifier="worker")["id"])
    foreign = create_source(other_api, registry_origin(ABSENT), identifier="web-app")
    create_image(other_api, foreign["id"])

    assert listed_ids(api.get("/v1/images?filter[identifier]=web-app")) == [image["id"]]


# Inputs that once answered 500


LONG_PATH = "/".join(["team"] + ["segment"] * 60)  # about 480 characters


TARGZ_URL = f"https://files.example.com/{LONG_PATH}.tgz"
REPO_URL = f"https://git.example.com/{LONG_PATH}"


@pytest.mark.parametrize("origin, named_after", [
    (registry_origin(f"{LONG_PATH}:v1"), f"{LONG_PATH}:v1"),
    ({"type": "docker-file", "details": {"targz_url": TARGZ_URL}}, TARGZ_URL),
    ({"type": "docker-file", "details": {"repo": {"url": REPO_URL}}}, REPO_URL),
], ids=["target", "targz-url", "repo-url"])
def test_a_source_named_after_a_long_target_or_url_gets_a_name_cut_to_fit(api, origin,
                                                                          named_after):
    response = api.post("/v1/images/sources", json={"type": "direct", "origin": origin})

    assert response.status_code == 201, response.get_json()
    source = response.get_json()["data"]
    assert source["name"] == named_after[:255] + "…"
    assert 0 < len(source["identifier"]) <= 256 and not source["identifier"].endswith("-")
    assert create_image(api, source["id"])["name"] == source["name"]  # an image takes it too


@pytest.mark.parametrize("end", ["9999-12-31T23:59:59.999999Z", "9999-12-31T23:59:59.9999+00:00",
                                 "9999-12-31T23:59:59.999999-14:00",
                                 "9999-12-31T23:59:59.999999+14:00"])
def test_a_time_range_ending_at_the_end_of_time_lists_every_job(api, source, end):
    job = import_image(api, create_image(api, source["id"])["id"])["job"]

    assert listed_ids(api.get("/v1/jobs", query_string={"filter[range-end]": end})) == [job["id"]]
    assert listed_ids(api.get("/v1/jobs", query_string={"filter[range-start]": end})) == []
    assert listed_ids(api.get("/v1/jobs", query_string={
        "filter[range-start]": "0001-01-01T00:00:00+14:00", "filter[range-end]": end})) == \
        [job["id"]]


@pytest.mark.parametrize("path, value", [
    ("/v1/images/{id}/build-log?offset={v}", "²"), ("/v1/images/{id}/build-log?offset={v}", "①"),
    ("/v1/images/{id}/build-log?offset={v}", "٣"), ("/v1/images?page[number]={v}", "٣"),
    ("/v1/images?page[size]={v}", "²"), ("/v1/jobs?page[number]={v}", "1_0"),
    ("/v1/jobs?page[size]={v}", " 5"),
], ids=["offset-superscript", "offset-circled", "offset-arabic-indic", "page-number-arabic-indic",
        "page-size-superscript", "page-number-underscore", "page-size-space"])
def test_a_number_not_written_in_ascii_digits_is_refused(api, source, path, value):
    image = create_image(api, source["id"])
    parameter = path.rpartition("?")[2].partition("=")[0]

    response = api.get(path.format(id=image["id"], v=quote(value)))

    assert_error(response, 422, "422.invalid-argument", source=parameter)


def key_with(api, *capabilities: str) -> dict[str, str]:
    with transaction() as session:
        _, secret = create_key(session, api.tenant.hub_id, "narrow key", capabilities)
    return {"Authorization": f"Bearer {secret}", "X-Hub-Id": api.tenant.hub_id}


@pytest.mark.parametrize("path", ["/v1/images?include=sources",
                                  "/v1/images?include=creators,sources",
                                  "/v1/images/{id}?include=sources"])
def test_including_sources_needs_the_capability_to_view_sources(api, source, path):
    image = create_image(api, source["id"])
    path = path.format(id=image["id"])

    refused = api.client.get(path, headers=key_with(api, "images-view"))
    error = assert_error(refused, 403, "403.permissions")
    assert error["extra"] == {"capability": "images-sources-view"}

    allowed = api.client.get(path, headers=key_with(api, "images-view", "images-sources-view"))
    assert allowed.status_code == 200, allowed.get_json()
    assert source["id"] in allowed.get_json()["includes"]["sources"]


def test_a_deleting_or_deleted_image_cannot_be_renamed(api, worker):
    image = create_image(api, create_source(api, NONE_ORIGIN)["id"], name="before")
    deleted = api.delete(f"/v1/images/{image['id']}")
    assert deleted.status_code == 202, deleted.get_json()

    assert_error(api.patch(f"/v1/images/{image['id']}", json={"name": "after"}), 403,
                 "403.invalid-state")
    assert api.wait_for_job(deleted.get_json()["data"]["job"]["id"])["state"]["current"] == \
        "completed"
    assert_error(api.patch(f"/v1/images/{image['id']}", json={"name": "after"}), 403,
                 "403.invalid-state")
    assert get_image(api, image["id"])["name"] == "before"
