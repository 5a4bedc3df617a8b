"""What Cycle's clients send and expect beyond the core: the latest jobs, the includes of things
imagejobs does not have, and list parameters sent along to single resources."""

from __future__ import annotations

import pytest

from app.jobs.views import LATEST_JOBS
from tests.api_calls import Api, assert_error, create_image, create_source, listed_ids
from tests.test_job_execution import new_job

NONE_ORIGIN = {"type": "none"}


def test_latest_jobs_are_the_hubs_newest_first_and_bounded(api: Api, other_tenant):
    theirs = new_job(other_tenant)
    ours = [new_job(api.tenant) for _ in range(LATEST_JOBS + 2)]
    latest = listed_ids(api.get("/v1/jobs/latest"))
    assert latest == ours[::-1][:LATEST_JOBS]
    assert theirs not in latest
    with_creators = api.get("/v1/jobs/latest?include=creators").get_json()
    assert list(with_creators["includes"]["creators"]["api_keys"]) == [api.tenant.key_id]


@pytest.mark.parametrize("path", ["/v1/images", "/v1/images/{image}"])
@pytest.mark.parametrize("include", ["stack_builds", "stacks", "integrations"])
def test_image_includes_of_what_imagejobs_has_none_of_are_empty(api: Api, path, include):
    image = create_image(api, create_source(api, NONE_ORIGIN)["id"])
    response = api.get(path.format(image=image["id"]), query_string={
        "include": f"creators,{include}"})
    assert response.status_code == 200, response.get_json()
    includes = response.get_json()["includes"]
    assert includes[include] == {}
    assert api.tenant.key_id in includes["creators"]["api_keys"]


@pytest.mark.parametrize("path", ["/v1/images/sources", "/v1/images/sources/{source}"])
def test_source_integrations_include_is_empty(api: Api, path):
    source = create_source(api, NONE_ORIGIN)
    response = api.get(path.format(source=source["id"]), query_string={"include": "integrations"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["includes"] == {"integrations": {}}


def test_an_unknown_include_is_still_refused(api: Api):
    image = create_image(api, create_source(api, NONE_ORIGIN)["id"])
    assert_error(api.get(f"/v1/images/{image['id']}?include=containers"), 422,
                 "422.invalid-argument", "include")


@pytest.mark.parametrize("path", ["/v1/images/{image}", "/v1/images/sources/{source}",
                                  "/v1/jobs/{job}"])
def test_list_parameters_sent_to_one_resource_are_ignored(api: Api, path):
    source = create_source(api, NONE_ORIGIN)
    image = create_image(api, source["id"])
    url = path.format(image=image["id"], source=source["id"], job=new_job(api.tenant))
    response = api.get(url, query_string={"sort": "-created", "page[number]": "1",
                                          "page[size]": "20"})
    assert response.status_code == 200, response.get_json()
    assert response.get_json()["data"]["id"] in url


def test_the_latest_jobs_are_documented_as_an_extension(client):
    paths = client.get("/v1/openapi.json").get_json()["paths"]
    assert paths["/v1/jobs/latest"]["get"]["x-imagejobs-extension"] is True
    assert paths["/v1/jobs/latest"]["get"]["x-capability"] == "apionly-jobs-view"
    assert "x-imagejobs-extension" not in paths["/v1/jobs"]["get"]
