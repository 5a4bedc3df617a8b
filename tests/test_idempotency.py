"""Idempotency-Key on the calls that create something: the first answer again, nothing created
twice, a key per hub, and a different request refused."""

from __future__ import annotations

import json
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from app.db import transaction
from app.idempotency import requests, services
from app.idempotency.models import IdempotencyKey
from app.models import Image, ImageSource, Job
from tests.api_calls import Api, assert_error, create_image, create_source

NONE_SOURCE = {"type": "direct", "origin": {"type": "none"}}
REGISTRY_ORIGIN = {"type": "docker-hub", "details": {"target": "busybox:latest"}}


def keyed(key: str) -> dict[str, str]:
    return {"Idempotency-Key": key}


def count(model, hub_id: str) -> int:
    with transaction() as session:
        return session.scalar(select(func.count()).select_from(model).where(
            model.hub_id == hub_id))


def test_a_source_sent_twice_with_one_key_is_created_once(api: Api):
    key = str(uuid.uuid4())
    first = api.post("/v1/images/sources", json=NONE_SOURCE, headers=keyed(key))
    again = api.post("/v1/images/sources", json=NONE_SOURCE, headers=keyed(key))
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count(ImageSource, api.tenant.hub_id) == 1


def test_without_a_key_each_request_creates(api: Api):
    api.post("/v1/images/sources", json=NONE_SOURCE)
    api.post("/v1/images/sources", json=NONE_SOURCE)
    assert count(ImageSource, api.tenant.hub_id) == 2


@pytest.mark.parametrize("call", ["create_image", "import", "delete_image", "prune",
                                  "delete_source"])
def test_every_creating_call_answers_the_first_answer_again(api: Api, call):
    source = create_source(api, REGISTRY_ORIGIN)
    image = create_image(api, source["id"])
    method, path, body = {
        "create_image": ("post", "/v1/images", {"source_id": source["id"]}),
        "import": ("post", f"/v1/images/{image['id']}/tasks", {"action": "import"}),
        "delete_image": ("delete", f"/v1/images/{image['id']}", None),
        "prune": ("post", "/v1/images/tasks", {"action": "prune",
                                               "contents": {"source_ids": [source["id"]]}}),
        "delete_source": ("delete", f"/v1/images/sources/{source['id']}", None),
    }[call]
    key = str(uuid.uuid4())
    before = count(Image, api.tenant.hub_id), count(Job, api.tenant.hub_id)
    first = getattr(api, method)(path, json=body, headers=keyed(key))
    assert first.status_code in (201, 202), first.get_json()
    after = count(Image, api.tenant.hub_id), count(Job, api.tenant.hub_id)
    assert after != before
    # A job that ended no longer stands in for an equal one (job duplicates): only the key does.
    with transaction() as session:
        session.execute(update(Job).where(Job.hub_id == api.tenant.hub_id).values(
            state="completed"))
    again = getattr(api, method)(path, json=body, headers=keyed(key))
    assert (again.status_code, again.get_json()) == (first.status_code, first.get_json())
    assert (count(Image, api.tenant.hub_id), count(Job, api.tenant.hub_id)) == after


def test_a_key_sent_with_another_request_is_refused(api: Api):
    key = str(uuid.uuid4())
    api.post("/v1/images/sources", json=NONE_SOURCE, headers=keyed(key))
    other = api.post("/v1/images/sources", json={**NONE_SOURCE, "name": "other"},
                     headers=keyed(key))
    error = assert_error(other, 422, "422.already-exists", "Idempotency-Key")
    assert "different request" in error["detail"]
    assert count(ImageSource, api.tenant.hub_id) == 1


def test_keys_are_per_hub(api: Api, client, other_tenant):
    key = str(uuid.uuid4())
    mine = api.post("/v1/images/sources", json=NONE_SOURCE, headers=keyed(key))
    theirs = Api(client, other_tenant).post("/v1/images/sources", json=NONE_SOURCE,
                                            headers=keyed(key))
    assert theirs.status_code == 201 and "Idempotent-Replayed" not in theirs.headers
    assert theirs.get_json()["data"]["id"] != mine.get_json()["data"]["id"]
    assert theirs.get_json()["data"]["hub_id"] == other_tenant.hub_id
    assert count(ImageSource, other_tenant.hub_id) == 1


def test_a_request_that_failed_leaves_its_key_free(api: Api):
    key = str(uuid.uuid4())
    missing = api.post("/v1/images", json={"source_id": "0" * 24}, headers=keyed(key))
    assert_error(missing, 404, "404.image.source")
    source = create_source(api, NONE_SOURCE["origin"])
    # The same key with another body is a new request: the failed one kept nothing.
    created = api.post("/v1/images", json={"source_id": source["id"]}, headers=keyed(key))
    assert created.status_code == 201, created.get_json()


def test_an_expired_key_is_free_again(api: Api):
    key = str(uuid.uuid4())
    first = api.post("/v1/images/sources", json=NONE_SOURCE, headers=keyed(key))
    with transaction() as session:
        session.execute(update(IdempotencyKey).where(IdempotencyKey.key == key).values(
            created=IdempotencyKey.created - timedelta(hours=25)))
    again = api.post("/v1/images/sources", json=NONE_SOURCE, headers=keyed(key))
    assert again.status_code == 201 and "Idempotent-Replayed" not in again.headers
    assert again.get_json()["data"]["id"] != first.get_json()["data"]["id"]


@pytest.mark.parametrize("key", ["", " leading-space", "x" * 256, "tab\there", "é"])
def test_a_malformed_key_is_refused(api: Api, key):
    response = api.post("/v1/images/sources", json=NONE_SOURCE,
                        headers={"Idempotency-Key": key})
    assert_error(response, 422, "422.invalid-argument", "Idempotency-Key")
    assert count(ImageSource, api.tenant.hub_id) == 0


def test_a_key_of_255_characters_is_taken(api: Api):
    response = api.post("/v1/images/sources", json=NONE_SOURCE, headers=keyed("k" * 255))
    assert response.status_code == 201


def test_twenty_requests_sent_together_with_one_key_create_one_resource(app, tenant):
    source = create_source(Api(app.test_client(), tenant), NONE_SOURCE["origin"])
    key = str(uuid.uuid4())
    together = threading.Barrier(20)

    def send(_):
        together.wait()
        response = Api(app.test_client(), tenant).post(
            "/v1/images", json={"source_id": source["id"]}, headers=keyed(key))
        return response.status_code, response.get_json()

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(send, range(20)))
    assert {status for status, _ in answers} == {201}, answers
    assert len({body["data"]["id"] for _, body in answers}) == 1
    assert count(Image, tenant.hub_id) == 1


def test_the_header_is_documented_as_an_extension(client):
    paths = client.get("/v1/openapi.json").get_json()["paths"]
    for path, method in (("/v1/images", "post"), ("/v1/images/{image_id}", "delete"),
                         ("/v1/images/{image_id}/tasks", "post"), ("/v1/images/tasks", "post"),
                         ("/v1/images/sources", "post"),
                         ("/v1/images/sources/{source_id}", "delete")):
        header = [p for p in paths[path][method]["parameters"]
                  if p["name"] == "Idempotency-Key"]
        assert header and header[0]["x-imagejobs-extension"] is True, (path, method)
        assert "422" in paths[path][method]["responses"], (path, method)
    assert not [p for p in paths["/v1/images"]["get"]["parameters"]
                if p["name"] == "Idempotency-Key"]



def test_a_key_whose_first_request_has_not_answered_is_409_after_a_wait(api: Api, monkeypatch):
    monkeypatch.setattr(requests, "WAIT_SECONDS", 0.3)
    body = json.dumps(NONE_SOURCE).encode()
    key = str(uuid.uuid4())
    # The first request's work is committed and its answer not yet kept.
    with transaction() as session:
        session.add(IdempotencyKey(
            hub_id=api.tenant.hub_id, key=key, status=None,
            request_hash=services.request_hash("POST", "/v1/images/sources?", body)))
    started = time.monotonic()

    response = api.post("/v1/images/sources", data=body, content_type="application/json",
                        headers=keyed(key))

    error = assert_error(response, 409, "409.duplicate-found", "Idempotency-Key")
    assert "still being served" in error["detail"] and time.monotonic() - started >= 0.3
    assert count(ImageSource, api.tenant.hub_id) == 0


def test_a_kept_answer_holds_its_secrets_sealed(api: Api):
    source = create_source(api, {"type": "cycle-upload"})
    key = str(uuid.uuid4())
    first = api.post("/v1/images", json={"source_id": source["id"]}, headers=keyed(key))
    token = first.get_json()["data"]["source"]["details"]["origin"]["details"]["token"]
    assert len(token) > 16
    with transaction() as session:
        row = session.execute(select(IdempotencyKey.__table__).where(
            IdempotencyKey.key == key)).one()
    assert token.encode() not in b"".join(str(v).encode() if not isinstance(v, bytes) else v
                                          for v in row)
    again = api.post("/v1/images", json={"source_id": source["id"]}, headers=keyed(key))
    assert again.get_json() == first.get_json()  # the token shown once is shown to the retry
