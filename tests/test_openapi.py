"""The API's own OpenAPI document: valid, complete, made from the models, and true of real answers."""

from __future__ import annotations

import re
from typing import Any

import jsonschema
import pytest
from openapi_spec_validator import validate

from app import errors
from app.db import transaction
from app.images.models import Image
from app.openapi import IMPLICIT_METHODS, REF, openapi_path, operations
from tests.api_calls import create_image, create_source, import_and_wait, registry_origin
from workers.buildlog import open_log


@pytest.fixture(scope="module")
def document(app) -> dict[str, Any]:
    response = app.test_client().get("/v1/openapi.json")  # no credentials: the document is public
    assert response.status_code == 200 and response.is_json
    return response.get_json()


def test_the_document_is_valid_openapi_3_1(document):
    assert document["openapi"].startswith("3.1.")
    validate(document)


def v1_routes(app) -> list[tuple[Any, str]]:
    """(rule, method) of every route under /v1, with the methods Flask adds by itself left out."""
    return [(rule, method.lower()) for rule in app.url_map.iter_rules()
            if rule.rule.startswith("/v1/") for method in rule.methods - IMPLICIT_METHODS]


def test_every_route_under_v1_is_in_the_document_with_its_methods_and_nothing_else(app, document):
    routes = {(method, openapi_path(rule.rule)) for rule, method in v1_routes(app)}
    documented = {(method, path) for path, item in document["paths"].items() for method in item}
    assert documented == routes
    for path, item in document["paths"].items():
        names = set(re.findall(r"{([^}]+)}", path))
        for operation in item.values():
            assert {p["name"] for p in operation["parameters"] if p["in"] == "path"} == names


def test_request_bodies_are_the_schemas_the_models_produce(app, document):
    schemas = document["components"]["schemas"]
    request_bodies = {o.body for o in operations(app).values() if o.body is not None}
    for model in request_bodies:
        produced = model.model_json_schema(ref_template=REF)
        assert schemas[model.__name__] == {k: v for k, v in produced.items() if k != "$defs"}
        for name, schema in produced.get("$defs", {}).items():
            assert schemas[name] == schema, name
    bodies = {operation["requestBody"]["content"]["application/json"]["schema"]["$ref"]
              for item in document["paths"].values() for operation in item.values()
              if "application/json" in operation.get("requestBody", {}).get("content", {})}
    assert bodies == {REF.format(model=m.__name__) for m in request_bodies}


def test_capabilities_and_every_error_code_are_documented(app, document):
    for rule, method in v1_routes(app):
        capability = getattr(app.view_functions[rule.endpoint], "capability", None)
        operation = document["paths"][openapi_path(rule.rule)][method]
        assert operation.get("x-capability") == (capability and capability.value)
        assert bool(operation["security"]) == (capability is not None)
    codes = {value.code for value in vars(errors).values()
             if isinstance(value, type) and issubclass(value, errors.ApiError)}
    enum = document["components"]["schemas"]["ErrorDetail"]["properties"]["code"]["enum"]
    assert set(enum) == codes


def conform(document: dict[str, Any], response, method: str, path: str) -> dict[str, Any]:
    """The answer matches the schema the document gives for this operation and status."""
    declared = document["paths"][path][method]["responses"][str(response.status_code)]
    schema = declared["content"]["application/json"]["schema"]
    body = response.get_json()
    jsonschema.Draft202012Validator({**schema, "components": document["components"]}
                                    ).validate(body)
    return body


def test_real_answers_match_the_document(api, document, worker, pushed_image):
    """Answers the fuzzer rarely reaches: a live image, includes, meta, a build log."""
    source = create_source(api, registry_origin(pushed_image.public.partition("/")[2]))
    image = create_image(api, source["id"], build={"args": {"A": "1"}})
    job = import_and_wait(api, image["id"])
    assert job["state"]["current"] == "completed", job
    with transaction() as session:
        open_log(session, session.get(Image, image["id"]), 1, "step 1\n")

    sources = "/v1/images/sources"
    for url, method, path in [
        (f"{sources}?include=creators&meta=images_count", "get", sources),
        (f"{sources}/{source['id']}?include=creators&meta=images_count", "get",
         f"{sources}/{{source_id}}"),
        ("/v1/images?include=creators,sources", "get", "/v1/images"),
        (f"/v1/images/{image['id']}?include=creators,sources", "get", "/v1/images/{image_id}"),
        (f"/v1/images/{image['id']}/build-log?offset=2", "get",
         "/v1/images/{image_id}/build-log"),
        ("/v1/jobs?include=creators", "get", "/v1/jobs"),
        (f"/v1/jobs/{job['id']}", "get", "/v1/jobs/{job_id}"),
        ("/v1/images/000000000000000000000000", "get", "/v1/images/{image_id}"),
    ]:
        conform(document, getattr(api, method)(url), method, path)
    # Past the end of any log (and of Postgres' int4): nothing more to read.
    beyond = conform(document, api.get(f"/v1/images/{image['id']}/build-log?offset=999999999999"),
                     "get", "/v1/images/{image_id}/build-log")
    assert beyond["data"]["log"] == "" and beyond["data"]["meta"]["next_offset"] == 7
    live = conform(document, api.get(f"/v1/images/{image['id']}"), "get", "/v1/images/{image_id}")
    assert live["data"]["state"]["current"] == "live" and live["data"]["config"]["ports"]
    upload = create_source(api, {"type": "cycle-upload"})
    conform(document, api.post("/v1/images", json={"source_id": upload["id"]}), "post",
            "/v1/images")
    conform(document, api.delete(f"/v1/images/{image['id']}"), "delete", "/v1/images/{image_id}")
