"""A job's steps read as honest progress: every step listed from the start, each started and
completed as the work gets there, a failed step never completed, a new attempt from zero, and
the progress of the step being worked on. A real API, a real worker and the real engine.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator

import pytest

from app.db import ZERO_TIME, transaction
from app.images.steps import DELETE_STEPS
from app.jobs import execution
from app.jobs.services import NewTask, create_job
from app.models import Job
from tests.api_calls import (
    assert_failed,
    get_image,
    image_from,
    import_image,
    parse_time,
    registry_origin,
    repository_path,
)
from tests.servers import FileServer
from tests.test_builds import Builder, dockerfile, targz, unique

IDLE_QUEUE = "imagejobs-test-idle"  # no worker consumes it: only the test moves its jobs


@pytest.fixture
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def builds(api, docker_client, worker) -> Iterator[Builder]:
    """Builds of docker-file images, their tags dropped from the shared engine at the end."""
    made = Builder(api, docker_client)
    yield made
    made.untag()


def captions(job: dict) -> list[str]:
    return [step["caption"] for step in job["tasks"][0]["steps"]]


def step_named(job: dict, caption: str) -> dict:
    [step] = [s for s in job["tasks"][0]["steps"] if s["caption"] == caption]
    return step


def assert_taken_in_order(job: dict) -> None:
    """Every step started and completed, each after the one before."""
    times = [parse_time(step[event]) for step in job["tasks"][0]["steps"]
             for event in ("started", "completed")]
    assert times == sorted(times) and times[0] < times[-1]


def watch(api, job_id: str, seen: Callable[[dict], None], timeout: float = 120) -> dict:
    """Poll the job until it ends, showing each read of it to `seen`; returns the ended job."""
    deadline = time.monotonic() + timeout
    while True:
        job = api.get(f"/v1/jobs/{job_id}").get_json()["data"]
        seen(job)
        if job["state"]["current"] in ("completed", "error", "expired"):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def test_an_import_lists_every_step_from_the_start_and_takes_them_in_order(
        api, worker, docker_client, pushed_image):
    image = image_from(api, registry_origin(repository_path(pushed_image.public)))

    descriptor = import_image(api, image["id"])

    [task] = descriptor["job"]["tasks"]
    assert task["steps"] == [
        {"caption": caption, "description": description, "started": ZERO_TIME,
         "completed": ZERO_TIME} for caption, description in [
            ("Pull", "Pulling the image from its registry"),
            ("Verify", "Reading the image's configuration and size"),
            ("Save", "Tagging the image in the engine of this node")]]
    job = api.wait_for_job(descriptor["job"]["id"])
    try:
        assert job["state"]["current"] == "completed", job["state"]
        assert captions(job) == ["Pull", "Verify", "Save"]
        assert_taken_in_order(job)
        pull = step_named(job, "Pull")
        assert pull["description"] == f"Pulling {pushed_image.public}"  # the run says more
        if "progress" in pull:  # absent when the engine held every layer and said nothing of them
            progress = pull["progress"]
            assert progress["unit"] == "bytes" and progress["done"] == progress["total"]
    finally:
        file_name = get_image(api, image["id"])["backend"]["file_name"]
        if file_name:  # leave the shared engine as found
            docker_client.images.remove(file_name, noprune=True)


def test_a_failed_build_leaves_its_build_step_not_completed_and_the_rest_not_started(
        builds, files):
    url = files.add(f"/{uuid.uuid4().hex}.tar.gz",
                    targz({"Dockerfile": dockerfile(f"RUN echo {unique()} && false")}))

    job, image = builds.build({"targz_url": url})

    assert_failed(job, image, "The build failed")
    fetch, build, verify, save = job["tasks"][0]["steps"]
    assert parse_time(fetch["started"]) <= parse_time(fetch["completed"]) <= parse_time(
        build["started"])
    assert build["caption"] == "Build" and build["completed"] == ZERO_TIME
    # The step it failed on shows where it stopped: the RUN, the second of two.
    assert build["progress"] == {"done": 1, "total": 2, "unit": "steps"}
    assert [verify["started"], verify["completed"], save["started"], save["completed"]] == [
        ZERO_TIME] * 4


def test_a_build_shows_how_many_dockerfile_steps_are_done_while_it_runs(builds, files, api):
    url = files.add(f"/{uuid.uuid4().hex}.tar.gz", targz({"Dockerfile": dockerfile(
        f"RUN echo {unique()} && sleep 5", "RUN true")}))
    image = builds.image({"targz_url": url})
    midway: list[dict] = []

    def seen(job: dict) -> None:
        progress = step_named(job, "Build").get("progress")
        if progress and step_named(job, "Build")["completed"] == ZERO_TIME:
            midway.append(progress)

    job = watch(api, import_image(api, image["id"])["job"]["id"], seen)

    assert job["state"]["current"] == "completed", job["state"]
    assert_taken_in_order(job)
    # Three Dockerfile steps: FROM, the sleeping RUN and the last RUN; polled mid-way, the first
    # was done and the sleeping one was not.
    assert {"done": 1, "total": 3, "unit": "steps"} in midway, midway
    assert all(p["total"] == 3 and p["done"] < 3 for p in midway), midway
    assert step_named(job, "Build")["progress"] == {"done": 3, "total": 3, "unit": "steps"}


def test_each_attempt_after_a_temporary_fault_starts_the_plan_over(builds, files, api):
    url = files.add(f"/{uuid.uuid4().hex}.tar.gz", targz({"Dockerfile": dockerfile()}),
                    failures=2)
    image = builds.image({"targz_url": url})
    fetches: list[str] = []
    between: list[dict] = []

    def seen(job: dict) -> None:
        fetch = step_named(job, "Fetch context")
        if fetch["started"] != ZERO_TIME and fetch["started"] not in fetches:
            fetches.append(fetch["started"])
        if job["state"]["current"] == "queued" and job["state"]["error"]:
            between.append(job)

    job = watch(api, import_image(api, image["id"])["job"]["id"], seen)

    assert job["state"]["current"] == "completed", job["state"]
    assert captions(job) == ["Fetch context", "Build", "Verify", "Save"]
    assert_taken_in_order(job)
    # Three attempts, each starting from its first step, later than the attempt before.
    assert len(fetches) == 3 and fetches == sorted(fetches), fetches
    assert step_named(job, "Fetch context")["started"] == fetches[-1]
    # Waiting for its next attempt, the job shows where the last one failed, not completed.
    assert between
    for waiting in between:
        assert step_named(waiting, "Fetch context")["completed"] == ZERO_TIME
        assert step_named(waiting, "Build")["started"] == ZERO_TIME


def new_job(tenant, steps: tuple) -> str:
    with transaction() as session:
        return create_job(session, hub_id=tenant.hub_id,
                          creator={"id": tenant.key_id, "type": "api-key"},
                          action="image.delete", queue=IDLE_QUEUE, caption="test job",
                          subject_id=None,
                          task=NewTask(header="delete", caption="Delete image",
                                       input={"n": time.monotonic_ns()}, steps=steps)).id


def steps_of(job_id: str) -> list[dict]:
    with transaction() as session:
        return session.get(Job, job_id).tasks[0]["steps"]


def test_a_job_that_ends_early_lists_only_the_steps_it_took(tenant):
    job_id = new_job(tenant, DELETE_STEPS)
    claim = execution.claim(job_id, "worker")
    with execution.fenced(claim) as (session, job):
        execution.complete(session, job, {"result": "already deleted"})
    assert steps_of(job_id) == []

    job_id = new_job(tenant, DELETE_STEPS)
    claim = execution.claim(job_id, "worker")
    with execution.fenced(claim) as (session, job):
        execution.start_step(job, "Remove", "Removing it")
        execution.complete(session, job)
    [remove] = steps_of(job_id)
    assert remove["description"] == "Removing it" and remove["completed"] != ZERO_TIME


def test_a_new_attempt_starts_every_step_over_and_keeps_the_last_ones_error(tenant):
    job_id = new_job(tenant, DELETE_STEPS)
    first = execution.claim(job_id, "worker-a")
    with execution.fenced(first) as (session, job):
        execution.start_step(job, "Remove", "Removing it")
        execution.note_progress(job, 1, 2, "bytes")
        execution.retry_later(session, job, "the engine is away (a temporary fault)", 0)
    [failed] = steps_of(job_id)
    assert failed["started"] != ZERO_TIME and failed["completed"] == ZERO_TIME

    second = execution.claim(job_id, "worker-b")

    assert second is not None and second.attempt == 2
    assert steps_of(job_id) == [{"caption": "Remove", "description": "Removing it",
                                 "started": ZERO_TIME, "completed": ZERO_TIME}]
    with transaction() as session:
        job = session.get(Job, job_id)
        assert job.error_message.startswith("the engine is away")
        assert job.tasks[0]["error"]["message"].startswith("the engine is away")
