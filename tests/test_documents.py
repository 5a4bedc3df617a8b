"""The response documents: absent never null, nothing undescribed, stored parts as stored, and
each view's query declared once for its parsing and its documentation."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from pydantic import ValidationError

from app import errors
from app.db import ZERO_TIME
from app.documents import Creator, StateError
from app.jobs.documents import Job
from app.jobs.models import Job as JobRow
from app.openapi import documented, operations
from app.sources.documents import ImageSource, SourceStatus
from app.sources.models import ImageSource as SourceRow

WHEN = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
ID = "6b14d07e12a4ca1dfe0802a4"


@pytest.mark.parametrize(("error", "expected"), [
    (None, {"current": "live", "changed": ZERO_TIME}),
    ("it broke", {"current": "live", "changed": ZERO_TIME, "error": {"message": "it broke"}}),
])
def test_an_optional_field_is_absent_when_none_never_null(error, expected):
    status = SourceStatus(current="live", changed=ZERO_TIME,
                          error=error and {"message": error})
    assert status.answer() == expected


def test_a_document_refuses_a_field_it_does_not_describe():
    with pytest.raises(ValidationError, match="extra"):
        Creator(id=ID, type="api-key", extra="undescribed")


def test_a_view_answers_the_document_it_declares_with_its_status():
    @documented("A creator", Creator, status=201)
    def creator():
        return Creator(id=ID, type="api-key")

    @documented("A creator", Creator)
    def something_else():
        return StateError(message="not a creator")

    assert creator() == ({"id": ID, "type": "api-key"}, 201)
    assert creator.operation.response is Creator
    with pytest.raises(TypeError, match="documented as a Creator"):
        something_else()


def test_stored_parts_are_answered_as_stored_and_times_in_rfc3339():
    origin = {"type": "docker-hub", "details": {"target": "busybox:1.36", "token": ""}}
    row = SourceRow(id=ID, hub_id=ID, name="n", identifier="i", type="direct",
                    about_description=None, origin=origin, builder=None, acl=None,
                    creator_type="api-key", creator_id=ID, state="live", state_changed=WHEN,
                    state_error=None, created=WHEN, updated=WHEN, deleted=None)
    answered = ImageSource.of(row).answer()
    assert answered["origin"] == origin and answered["builder"] is None
    assert answered["events"] == {"created": "2026-01-02T03:04:05.678Z",
                                  "updated": "2026-01-02T03:04:05.678Z", "deleted": ZERO_TIME}
    assert "meta" not in answered and "error" not in answered["state"]


def test_a_job_answers_null_error_and_zero_times_for_what_has_not_happened():
    row = JobRow(id=ID, hub_id=ID, queue="q", caption="c", tasks=[], hash="h",
                 limit_duplicates=True, creator_id=ID, creator_type="api-key", state="queued",
                 state_changed=WHEN, error_message=None, queued_at=WHEN, started_at=None,
                 completed_at=None, schedule=WHEN, expires=WHEN)
    answered = Job.of(row).answer()
    assert answered["state"]["error"] is None
    assert answered["events"]["started"] == answered["events"]["completed"] == ZERO_TIME


def test_the_filters_a_list_documents_are_the_ones_it_parses(app):
    listed = {endpoint: o.query for endpoint, o in operations(app).items()
              if o.query is not None and o.query.states is not None}
    assert set(listed) == {"sources.list_sources", "images.list_images", "jobs.list_jobs"}
    document = app.test_client().get("/v1/openapi.json").get_json()
    for item in document["paths"].values():
        for operation in item.values():
            if operation["operationId"] not in listed:
                continue
            parameters = listed[operation["operationId"]]
            documented = {p["name"][len("filter["):-1] for p in operation["parameters"]
                          if p["name"].startswith("filter[")}
            assert documented == parameters.filter_names()
            for name in documented:
                with app.test_request_context(f"/?filter[{name}]=x"):
                    assert parameters.parse().filters == {name: "x"}
            with app.test_request_context("/?filter[undeclared]=x"), \
                    pytest.raises(errors.InvalidArgument):
                parameters.parse()
