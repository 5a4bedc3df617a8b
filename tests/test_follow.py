"""Following jobs without polling, through a real API (gunicorn's gevent worker) and the suite's
worker: Cycle's notification WebSocket, the same events as Server-Sent Events resumed with
Last-Event-ID, the long poll of a job, and a build log followed as it grows.

Clients are real ones from PyPI (websocket-client, sseclient-py over requests).
"""

from __future__ import annotations

import json
import os
import queue
import signal
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import sseclient
import websocket
from sqlalchemy import text

from app.db import transaction
from app.events import stream
from tests.api_calls import ENDED, Http, make_tenant, registry_origin
from tests.image_builds import dockerfile_context
from tests.processes import api_server, free_port, imagejobs
from tests.services import BASE_IMAGE, TEST_ENVIRONMENT

pytestmark = pytest.mark.docker

NOTIFICATIONS = "/v1/hubs/current/notifications"


@pytest.fixture(scope="module")
def base(worker) -> Iterator[str]:
    with api_server("follow-api", env={**os.environ, **TEST_ENVIRONMENT}) as url:
        yield url


class Socket:
    """A notification WebSocket whose messages a thread gathers as they come."""

    def __init__(self, http: Http):
        url = http.base.replace("http://", "ws://") + f"{NOTIFICATIONS}?token={http.token()}"
        self.connection = websocket.create_connection(url, timeout=5)
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.closed = threading.Event()
        threading.Thread(target=self._gather, daemon=True).start()

    def _gather(self) -> None:
        while not self.closed.is_set():
            try:
                message = self.connection.recv()
            except websocket.WebSocketTimeoutException:
                continue
            except (websocket.WebSocketConnectionClosedException, OSError):
                return
            if not message:  # closed
                return
            self.messages.put(json.loads(message))

    def until(self, done, timeout: float = 90) -> list[dict[str, Any]]:
        """Every message up to and including the first for which `done(message)`."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while True:
            try:
                message = self.messages.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no message ended the wait; seen: {seen}") from None
            seen.append(message)
            if done(message):
                return seen

    def drain(self, seconds: float) -> list[dict[str, Any]]:
        time.sleep(seconds)
        found = []
        while not self.messages.empty():
            found.append(self.messages.get())
        return found

    def close(self) -> None:
        self.closed.set()
        self.connection.close()


def job_ended(job_id: str):
    return lambda m: (m["topic"] == "job.state.changed" and m["object"]["id"] == job_id
                      and m["object"]["state"] in ENDED)


def of(messages: list[dict[str, Any]], object_id: str) -> list[tuple[str, str | None, str]]:
    """(topic, state_previous, state) of one object's messages, in the order received."""
    return [(m["topic"], m["object"]["state_previous"], m["object"]["state"]) for m in messages
            if m["object"]["id"] == object_id]


def assert_unbroken(changes: list[tuple[str, str | None, str]]) -> list[str]:
    """Each state change starts where the one before ended: none was lost or reordered.
    Returns the states in order."""
    states = [changes[0][2]]
    for topic, previous, state in changes[1:]:
        if topic.endswith("state.changed"):
            assert previous == states[-1], changes
            states.append(state)
    return states


@pytest.fixture
def tenants(base) -> tuple[Http, Http]:
    return Http(base, make_tenant()), Http(base, make_tenant())


def test_every_topic_of_an_import_a_build_a_delete_and_a_prune_reaches_only_its_hub(
        tenants, pushed_image, files):
    ours, theirs = tenants
    mine, others = Socket(ours), Socket(theirs)
    try:
        # The other hub works beside us all along: none of it may reach our socket.
        their_source = theirs.source(registry_origin(pushed_image.public), name="theirs")
        their_image = theirs.image(their_source)
        their_job = theirs.job_of("post", f"/v1/images/{their_image}/tasks", {"action": "import"})

        source = ours.source(registry_origin(pushed_image.public))
        pulled = ours.image(source)
        assert ours.call("patch", f"/v1/images/{pulled}", json={"name": "renamed"}).ok
        imported = ours.job_of("post", f"/v1/images/{pulled}/tasks", {"action": "import"})
        messages = mine.until(job_ended(imported))

        url = files.add("/follow-build.tar.gz", dockerfile_context(
            f"FROM {BASE_IMAGE}\nRUN echo built\n"))
        build_source = ours.source({"type": "docker-file", "details": {"targz_url": url}})
        built = ours.image(build_source)
        building = ours.job_of("post", f"/v1/images/{built}/tasks", {"action": "import"})
        messages += mine.until(job_ended(building))

        missing = ours.image(ours.source(registry_origin(f"{pushed_image.public}-no-such-tag")))
        failing = ours.job_of("post", f"/v1/images/{missing}/tasks", {"action": "import"})
        messages += mine.until(job_ended(failing))

        deleting = ours.job_of("delete", f"/v1/images/{pulled}")
        messages += mine.until(job_ended(deleting))

        pruning = ours.job_of("post", "/v1/images/tasks", {
            "action": "prune", "contents": {"source_ids": [build_source]}})
        messages += mine.until(job_ended(pruning))

        assert ours.call("patch", f"/v1/images/sources/{source}", json={"name": "again"}).ok
        removing = ours.job_of("delete", f"/v1/images/sources/{source}")
        messages += mine.until(job_ended(removing))
        messages += mine.until(lambda m: m["object"]["id"] == source
                               and m["object"]["state"] == "deleted")
        theirs.wait_for_job(their_job)
        their_messages = others.drain(1.0)
    finally:
        mine.close()
        others.close()

    # Every job's own story, in order.
    for job_id, end in ((imported, "completed"), (building, "completed"), (failing, "error"),
                        (deleting, "completed"), (pruning, "completed"),
                        (removing, "completed")):
        changes = of(messages, job_id)
        assert changes[0] == ("job.new", None, "queued"), changes
        assert assert_unbroken(changes)[-2:] == ["running", end], changes
    assert ("job.error", "running", "error") in of(messages, failing)

    # Each image's, unbroken from new to where its jobs left it.
    pulled_states = assert_unbroken(of(messages, pulled))
    assert pulled_states[0] == "new" and pulled_states[-1] == "deleted", pulled_states
    assert {"downloading", "live", "deleting"} <= set(pulled_states)
    assert ("image.updated", "new", "new") in of(messages, pulled)
    built_states = assert_unbroken(of(messages, built))
    assert "building" in built_states and built_states[-1] == "deleted", built_states
    assert [t for t, _, _ in of(messages, missing)].count("image.error") == 1
    assert assert_unbroken(of(messages, source)) == ["live", "deleting", "deleted"]
    assert ("image.source.updated", "live", "live") in of(messages, source)

    topics = {m["topic"] for m in messages}
    assert topics >= {"job.new", "job.state.changed", "job.error", "image.new",
                      "image.state.changed", "image.updated", "image.error",
                      "image.source.new", "image.source.state.changed", "image.source.updated"}
    # Only our hub's, and the other hub saw only its own.
    assert {m["context"]["hub_id"] for m in messages} == {ours.tenant.hub_id}
    their_ids = {their_source, their_image, their_job}
    assert not their_ids & {m["object"]["id"] for m in messages}
    assert their_messages and {m["context"]["hub_id"] for m in their_messages} == {
        theirs.tenant.hub_id}
    assert not {m["object"]["id"] for m in messages} & {m["object"]["id"] for m in their_messages}


def sse(http: Http, last_event_id: str | None = None, **params: str) -> tuple[
        requests.Response, Iterator[sseclient.Event]]:
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    response = http.call("get", NOTIFICATIONS, headers=headers, params=params, stream=True)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return response, sseclient.SSEClient(response).events()


def next_message(events: Iterator[sseclient.Event]) -> sseclient.Event:
    for event in events:
        if event.data:
            return event
    raise AssertionError("the stream ended")


def test_a_stream_resumed_with_last_event_id_loses_nothing_that_happened_while_away(tenants):
    ours, _ = tenants
    response, events = sse(ours)
    first = ours.source({"type": "none"}, name="before")
    seen = next_message(events)
    assert json.loads(seen.data)["object"]["id"] == first
    response.close()  # the connection drops

    while_away = [ours.source({"type": "none"}, name=f"away-{n}") for n in range(3)]

    response, events = sse(ours, last_event_id=seen.id)
    resumed = [next_message(events) for _ in while_away]
    after = ours.source({"type": "none"}, name="after")
    resumed.append(next_message(events))
    response.close()

    assert [json.loads(e.data)["object"]["id"] for e in resumed] == [*while_away, after]
    assert [int(e.id) for e in resumed] == list(range(int(seen.id) + 1, int(seen.id) + 5))
    assert {json.loads(e.data)["topic"] for e in resumed} == {"image.source.new"}


def test_a_stream_opened_without_last_event_id_starts_from_now_and_a_token_opens_it(tenants):
    ours, _ = tenants
    ours.source({"type": "none"}, name="earlier")
    token = ours.token()
    response = requests.get(f"{ours.base}{NOTIFICATIONS}", params={"token": token},
                            headers={"Accept": "text/event-stream"}, stream=True, timeout=30)
    assert response.status_code == 200, response.text
    events = sseclient.SSEClient(response).events()
    later = ours.source({"type": "none"}, name="later")
    assert json.loads(next_message(events).data)["object"]["id"] == later
    response.close()


def test_events_are_numbered_in_the_order_they_commit_not_the_order_they_began(api):
    """A transaction that records its event first but commits last is numbered after the one that
    committed first, so a follower past the first number still gets it."""
    hub_id = api.tenant.hub_id
    early, late = (api.post("/v1/images/sources", json={
        "type": "direct", "name": name, "origin": {"type": "none"}}).get_json()["data"]["id"]
        for name in ("early", "late"))
    stream.sequence()
    with transaction() as session:
        start = stream.last_number(session, hub_id)
    rename = text("UPDATE image_sources SET name = :name WHERE id = :id")
    with transaction() as slow:
        slow.execute(rename, {"name": "renamed first", "id": early})  # its event's id comes first
        with transaction() as quick:
            quick.execute(rename, {"name": "renamed second", "id": late})
        stream.sequence()
        with transaction() as session:
            numbered = [(e.seq, e.object["id"]) for e in stream.after(session, hub_id, start)]
        assert numbered == [(start + 1, late)]
    stream.sequence()
    with transaction() as session:
        numbered = [(e.seq, e.object["id"]) for e in stream.after(session, hub_id, start + 1)]
    assert numbered == [(start + 2, early)]


def test_a_long_poll_answers_when_the_job_changes_and_says_how_long_it_took(
        tenants, pushed_image):
    ours, _ = tenants
    image = ours.image(ours.source(registry_origin(pushed_image.public)))
    job_id = ours.job_of("post", f"/v1/images/{image}/tasks", {"action": "import"})
    first = ours.call("get", f"/v1/jobs/{job_id}")
    tag = first.headers["ETag"]

    versions = []
    started = time.monotonic()
    while tag and len(versions) < 20:
        response = ours.call("get", f"/v1/jobs/{job_id}?wait=30", headers={"If-None-Match": tag})
        assert response.status_code == 200, response.text
        job = response.json()["data"]
        versions.append((time.monotonic() - started, job["state"]["current"]))
        if job["state"]["current"] in ENDED:
            break
        assert response.headers["ETag"] != tag, "a long poll answered with the job unchanged"
        tag = response.headers["ETag"]
    print(f"long-poll answers (seconds since the first read, state): {versions}")
    assert versions[-1][1] == "completed", versions
    # Answered at each change, not at the end of each 30 s wait.
    assert versions[-1][0] < 30, versions


def test_an_unchanged_job_is_answered_304_or_after_the_wait_as_it_is(tenants, pushed_image):
    ours, _ = tenants
    image = ours.image(ours.source(registry_origin(pushed_image.public)))
    job = ours.wait_for_job(ours.job_of("post", f"/v1/images/{image}/tasks",
                                        {"action": "import"}))
    response = ours.call("get", f"/v1/jobs/{job['id']}")
    tag = response.headers["ETag"]

    assert ours.call("get", f"/v1/jobs/{job['id']}",
                     headers={"If-None-Match": tag}).status_code == 304
    started = time.monotonic()
    waited = ours.call("get", f"/v1/jobs/{job['id']}?wait=1", headers={"If-None-Match": tag})
    assert time.monotonic() - started >= 1
    assert waited.status_code == 200 and waited.headers["ETag"] == tag
    assert waited.json() == response.json()


@pytest.mark.parametrize("wait", ["61", "-1", "soon", "nan", "1e400"])
def test_a_wait_out_of_range_is_refused(api, wait):
    response = api.get(f"/v1/jobs/{'0' * 24}?wait={wait}")
    assert response.status_code == 422
    assert response.get_json()["error"]["source"] == "wait"


def test_a_build_log_followed_streams_its_lines_while_the_build_runs_then_ends(
        tenants, files):
    ours, _ = tenants
    url = files.add("/follow-log.tar.gz", dockerfile_context(
        f"FROM {BASE_IMAGE}\nRUN echo first-line && sleep 2\nRUN echo second-line && sleep 2\n"
        "RUN echo last-line\n"))
    image = ours.image(ours.source({"type": "docker-file", "details": {"targz_url": url}}))
    job_id = ours.job_of("post", f"/v1/images/{image}/tasks", {"action": "import"})

    response = ours.call("get", f"/v1/images/{image}/build-log?follow=true", stream=True)
    assert response.status_code == 200, response.text
    chunks, states_at_chunks, end = [], [], None
    for event in sseclient.SSEClient(response).events():
        if event.event == "end":
            end = json.loads(event.data)
            break
        if not event.data:
            continue
        chunk = json.loads(event.data)
        assert chunk["offset"] == sum(len(c["text"]) for c in chunks)
        assert int(event.id) == chunk["offset"] + len(chunk["text"])
        chunks.append(chunk)
        states_at_chunks.append(ours.call("get", f"/v1/jobs/{job_id}").json()[
            "data"]["state"]["current"])
    response.close()

    followed = "".join(c["text"] for c in chunks)
    log = ours.call("get", f"/v1/images/{image}/build-log").json()["data"]
    assert followed == log["log"]
    assert followed.index("first-line") < followed.index("second-line") < followed.index(
        "last-line")
    assert len(chunks) >= 2 and "running" in states_at_chunks, states_at_chunks
    assert end == {"state": "live"}
    assert log["building"] is False
    assert ours.wait_for_job(job_id)["state"]["current"] == "completed"


def test_a_followed_build_log_resumes_from_last_event_id(tenants, files):
    ours, _ = tenants
    url = files.add("/follow-resume.tar.gz", dockerfile_context(
        f"FROM {BASE_IMAGE}\nRUN echo resumed-line\n"))
    image = ours.image(ours.source({"type": "docker-file", "details": {"targz_url": url}}))
    ours.wait_for_job(ours.job_of("post", f"/v1/images/{image}/tasks", {"action": "import"}))
    whole = ours.call("get", f"/v1/images/{image}/build-log").json()["data"]["log"]

    response = ours.call("get", f"/v1/images/{image}/build-log",
                         headers={"Accept": "text/event-stream", "Last-Event-ID": "10"},
                         stream=True)
    events = [e for e in sseclient.SSEClient(response).events() if e.data]
    assert json.loads(events[0].data) == {"offset": 10, "text": whole[10:]}
    assert events[-1].event == "end"


def test_a_stopping_api_answers_its_long_polls_and_ends_its_streams_instead_of_holding_the_stop(
        worker, pushed_image):
    tenant = make_tenant()
    port = free_port()
    with imagejobs("follow-stopping-api", "api", "--workers", "1", "--port", str(port),
                   env={**os.environ, **TEST_ENVIRONMENT}) as (child, log):
        http = Http(f"http://127.0.0.1:{port}", tenant)
        deadline = time.monotonic() + 60
        while not log.read_text().count("Booting worker") or not _answers(http):
            assert child.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        image = http.image(http.source(registry_origin(pushed_image.public)))
        job = http.wait_for_job(http.job_of("post", f"/v1/images/{image}/tasks",
                                            {"action": "import"}))
        tag = http.call("get", f"/v1/jobs/{job['id']}").headers["ETag"]
        polled: list[requests.Response] = []
        poll = threading.Thread(target=lambda: polled.append(http.call(
            "get", f"/v1/jobs/{job['id']}?wait=60", headers={"If-None-Match": tag})))
        poll.start()
        response, events = sse(http)
        time.sleep(1)  # both are waiting

        child.send_signal(signal.SIGTERM)
        assert [e for e in events if e.data] == []  # the stream ends, cleanly
        poll.join(timeout=60)
        assert polled and polled[0].status_code == 200, polled
        assert polled[0].headers["ETag"] == tag
        assert child.wait(timeout=60) == 0


def _answers(http: Http) -> bool:
    try:
        return http.call("get", "/v1/health").ok
    except requests.RequestException:
        return False


def test_events_older_than_a_day_are_forgotten_and_numbers_go_on_after_them(api):
    hub_id = api.tenant.hub_id

    def new_source() -> str:
        return api.post("/v1/images/sources", json={
            "type": "direct", "name": "kept a day", "origin": {"type": "none"}}).get_json()[
            "data"]["id"]

    new_source()
    stream.sequence()
    with transaction() as session:
        last = stream.last_number(session, hub_id)
        session.execute(text("UPDATE hub_events SET created = now() - interval '25 hours' "
                             "WHERE hub_id = :hub"), {"hub": hub_id})
    assert stream.forget_old() >= 1
    with transaction() as session:
        assert list(stream.after(session, hub_id, 0)) == []

    later = new_source()
    stream.sequence()
    with transaction() as session:
        assert [(e.seq, e.object["id"]) for e in stream.after(session, hub_id, 0)] == [
            (last + 1, later)]
