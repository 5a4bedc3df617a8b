"""Job execution in Postgres: claims, leases, fencing, the sweeper and duplicates.

These drive its functions directly, with jobs on a queue no worker consumes, so that
nothing but the test moves them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta

import pytest
from sqlalchemy import update

import app.images.lifecycle  # noqa: F401  (this test runs image jobs as a worker does)
import app.sources.lifecycle  # noqa: F401
from app.db import transaction, utcnow
from app.jobs import execution
from app.jobs.execution import LeaseLost
from app.jobs.services import NewTask, create_job
from app.models import Image, ImageState, Job, JobState
from tests.api_calls import Tenant, stored_image

IDLE_QUEUE = "imagejobs-test-idle"


def new_job(tenant: Tenant, action: str = "images.prune", subject_id: str | None = None,
            task_input: dict | None = None) -> str:
    with transaction() as session:
        job = create_job(session, hub_id=tenant.hub_id, creator={"id": tenant.key_id,
                                                                  "type": "api-key"},
                         action=action, queue=IDLE_QUEUE, caption="test job",
                         subject_id=subject_id,
                         task=NewTask(header="test", caption="Test",
                                      input=task_input or {"n": time.monotonic_ns()}))
        return job.id


def load(job_id: str) -> Job:
    with transaction() as session:
        job = session.get(Job, job_id)
        session.expunge(job)
        return job


def set_job(job_id: str, **values) -> None:
    with transaction() as session:
        session.execute(update(Job).where(Job.id == job_id).values(**values))


def sweep_until(condition, timeout: float = 10.0) -> None:
    """Sweep until `condition()` holds; a worker's sweeper may hold the lock for a moment."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the sweeper did not act"
        execution.sweep()
        time.sleep(0.1)


def test_a_job_is_claimed_once(tenant):
    job_id = new_job(tenant)
    first = execution.claim(job_id, "worker-a")
    assert first is not None and first.attempt == 1
    assert execution.claim(job_id, "worker-b") is None
    job = load(job_id)
    assert job.state == JobState.RUNNING
    assert job.lease_owner == "worker-a"
    assert job.tasks[0]["state"]["current"] == "running"


def test_a_finished_job_cannot_be_claimed_again(tenant):
    job_id = new_job(tenant)
    claim = execution.claim(job_id, "worker-a")
    with execution.fenced(claim) as (session, job):
        execution.complete(session, job, {"done": "yes"})
    assert execution.claim(job_id, "worker-b") is None
    job = load(job_id)
    assert job.state == JobState.COMPLETED
    assert job.tasks[0]["output"] == {"done": "yes"}
    assert job.completed_at is not None and job.lease_owner is None


def test_a_lapsed_lease_is_requeued_and_the_old_worker_is_fenced_out(tenant):
    job_id = new_job(tenant)
    old = execution.claim(job_id, "frozen-worker")
    set_job(job_id, lease_expires=utcnow() - timedelta(seconds=1))
    sweep_until(lambda: load(job_id).state == JobState.QUEUED)

    new = execution.claim(job_id, "second-worker")
    assert new is not None and new.attempt == old.attempt + 1
    assert execution.renew(old) is False
    with pytest.raises(LeaseLost), execution.fenced(old) as (session, job):
        execution.complete(session, job)
    assert load(job_id).state == JobState.RUNNING
    assert execution.renew(new) is True


FROZEN_INSIDE = """
import sys, time
from app.jobs import execution
what, job_id = sys.argv[1], sys.argv[2]
if what == "sweep":
    for _ in range(100):  # a worker's sweeper may hold the lock for a moment
        with execution.holding_locks() as session:
            if execution.take_sweep_lock(session):
                print("holding", flush=True)
                time.sleep(60)
                break
        time.sleep(0.1)
else:
    claim = execution.claim(job_id, "frozen-worker")
    try:
        with execution.fenced(claim) as (session, job):
            print("holding", flush=True)
            time.sleep(6)
            execution.complete(session, job)
        print("completed it", flush=True)
    except Exception as exc:
        print("could not complete:", type(exc).__name__, flush=True)
"""


@contextlib.contextmanager
def frozen_inside(what: str, job_id: str) -> Iterator[subprocess.Popen]:
    """A worker that stops (as if frozen) inside a transaction holding the sweep or a job."""
    child = subprocess.Popen([sys.executable, "-c", FROZEN_INSIDE, what, job_id], text=True,
                             stdout=subprocess.PIPE, env={**os.environ,
                                                          "IMAGEJOBS_LEASE_SECONDS": "2"})
    try:
        assert child.stdout.readline().strip() == "holding"
        yield child
    finally:
        child.kill()
        child.wait()


def test_a_worker_frozen_while_sweeping_does_not_stop_the_sweeps(tenant):
    job_id = new_job(tenant)
    execution.claim(job_id, "crashed-worker")
    set_job(job_id, lease_expires=utcnow() - timedelta(seconds=1))
    with frozen_inside("sweep", job_id):
        sweep_until(lambda: load(job_id).state == JobState.QUEUED, timeout=20)


def test_a_worker_frozen_mid_write_loses_the_job_and_cannot_finish_it_when_it_wakes(tenant):
    job_id = new_job(tenant)
    with frozen_inside("write", job_id) as child:
        sweep_until(lambda: load(job_id).state == JobState.QUEUED, timeout=20)
        assert execution.claim(job_id, "second-worker") is not None
        woke = child.stdout.readline()
    assert woke.startswith("could not complete"), woke
    job = load(job_id)
    assert (job.state, job.lease_owner, job.attempt) == (JobState.RUNNING, "second-worker", 2)


def test_a_requeued_job_leaves_its_image_resting_until_the_next_attempt(tenant):
    image_id = stored_image(tenant)
    job_id = new_job(tenant, action="image.import", subject_id=image_id)
    claim = execution.claim(job_id, "doomed")
    with execution.fenced(claim) as (session, _):
        session.get(Image, image_id).move_to(ImageState.DOWNLOADING)
    set_job(job_id, lease_expires=utcnow() - timedelta(seconds=1))
    sweep_until(lambda: load(job_id).state == JobState.QUEUED)
    with transaction() as session:
        image = session.get(Image, image_id)
        assert image.state == ImageState.NEW
        assert "stopped responding" in image.state_error


def test_a_job_whose_workers_keep_dying_ends_in_error_and_frees_its_image(tenant):
    image_id = stored_image(tenant)
    job_id = new_job(tenant, action="image.import", subject_id=image_id)
    for attempt in range(1, 4):
        claim = execution.claim(job_id, f"doomed-{attempt}")
        assert claim is not None and claim.attempt == attempt
        if attempt == 1:
            with execution.fenced(claim) as (session, _):
                session.get(Image, image_id).move_to(ImageState.DOWNLOADING)
        set_job(job_id, lease_expires=utcnow() - timedelta(seconds=1))
        sweep_until(lambda: load(job_id).state in (JobState.QUEUED, JobState.ERROR))

    job = load(job_id)
    assert job.state == JobState.ERROR
    assert "given up after 3 attempts" in job.error_message
    assert job.tasks[0]["error"]["message"] == job.error_message
    with transaction() as session:
        image = session.get(Image, image_id)
        assert image.state == ImageState.NEW
        assert "given up" in image.state_error


def test_an_import_that_ends_while_its_image_is_being_deleted_leaves_it_to_the_delete(tenant):
    image_id = stored_image(tenant)
    failing = new_job(tenant, action="image.import", subject_id=image_id)
    expiring = new_job(tenant, action="image.import", subject_id=image_id)
    dry_run = new_job(tenant, action="image.delete", subject_id=image_id,
                      task_input={"image_id": image_id, "dry_run": True})
    with transaction() as session:  # a delete was accepted while the imports waited
        session.get(Image, image_id).move_to(ImageState.DELETING)

    for job_id in (failing, dry_run):
        claim = execution.claim(job_id, "worker")
        with execution.fenced(claim) as (session, job):
            execution.fail(session, job, "The image was deleted before its import started.")
    set_job(expiring, expires=utcnow() - timedelta(seconds=1))
    sweep_until(lambda: load(expiring).state == JobState.EXPIRED)

    with transaction() as session:
        image = session.get(Image, image_id)
        assert image.state == ImageState.DELETING
        assert image.state_error is None


def test_a_job_not_started_before_it_expires_ends_expired(tenant):
    job_id = new_job(tenant)
    set_job(job_id, expires=utcnow() - timedelta(seconds=1))
    assert execution.claim(job_id, "late-worker") is None
    job = load(job_id)
    assert job.state == JobState.EXPIRED
    assert "expired" in job.error_message


def test_the_sweeper_expires_queued_jobs(tenant):
    job_id = new_job(tenant)
    set_job(job_id, expires=utcnow() - timedelta(seconds=1))
    sweep_until(lambda: load(job_id).state == JobState.EXPIRED)


def test_an_unpublished_job_is_published_by_the_sweeper(tenant):
    job_id = new_job(tenant)
    assert load(job_id).published_at is None  # nothing published it: as if the API died here
    sweep_until(lambda: load(job_id).published_at is not None)
    assert load(job_id).state == JobState.QUEUED


def test_an_equal_unfinished_job_is_returned_instead_of_a_second(tenant):
    first = new_job(tenant, task_input={"image_id": "x"})
    assert new_job(tenant, task_input={"image_id": "x"}) == first
    claim = execution.claim(first, "worker")
    with execution.fenced(claim) as (session, job):
        execution.complete(session, job)
    assert new_job(tenant, task_input={"image_id": "x"}) != first


def test_steps_are_recorded_with_real_times(tenant):
    job_id = new_job(tenant)
    claim = execution.claim(job_id, "worker")
    with execution.fenced(claim) as (_, job):
        execution.start_step(job, "One", "first")
    with execution.fenced(claim) as (session, job):
        execution.complete_step(job)
        execution.start_step(job, "Two", "second")
    with execution.fenced(claim) as (session, job):
        execution.complete(session, job)
    steps = load(job_id).tasks[0]["steps"]
    assert [s["caption"] for s in steps] == ["One", "Two"]
    times = [t for s in steps for t in (s["started"], s["completed"])]
    assert "0001-01-01T00:00:00Z" not in times
    assert times == sorted(times)


def test_a_job_retried_later_is_not_claimed_or_published_before_its_time(tenant):
    job_id = new_job(tenant)
    claim = execution.claim(job_id, "worker")
    with execution.fenced(claim) as (session, job):
        execution.retry_later(session, job, "registry away (a temporary fault)", delay_seconds=60)

    job = load(job_id)
    assert job.state == JobState.QUEUED and job.error_message.startswith("registry away")
    assert execution.claim(job_id, "eager-worker") is None
    execution.sweep()
    assert load(job_id).published_at is None

    set_job(job_id, schedule=utcnow() - timedelta(seconds=1))
    again = execution.claim(job_id, "worker")
    assert again is not None and again.attempt == 2
    with execution.fenced(again) as (session, job):
        execution.complete(session, job)
    done = load(job_id)
    assert done.state == JobState.COMPLETED and done.error_message is None
    assert done.tasks[0]["error"] is None


def test_a_parent_waits_unleased_and_its_last_child_to_end_finishes_it(tenant):
    parent_id = new_job(tenant, action="images.prune", task_input={"source_ids": [], "n": 1})
    claim = execution.claim(parent_id, "planner")
    with execution.fenced(claim) as (session, parent):
        children = [create_job(session, hub_id=tenant.hub_id, action="image.delete",
                               creator={"id": tenant.key_id, "type": "api-key"},
                               queue=IDLE_QUEUE, caption="child", subject_id=f"image-{n}",
                               task=NewTask(header="delete", caption="Delete",
                                            input={"n": time.monotonic_ns()}),
                               parent_id=parent_id).id for n in (1, 2)]
        execution.wait_for_children(session, parent, {"image-0": "kept: decided at once"})
    assert not execution.renew(claim)  # the planner's lease keeper cannot take it back
    with pytest.raises(LeaseLost), execution.fenced(claim):  # nor can its planner change it
        pass
    waiting = load(parent_id)
    assert waiting.state == JobState.RUNNING and waiting.lease_expires is None

    done = execution.claim(children[0], "node-worker")
    with execution.fenced(done) as (session, child):
        execution.complete(session, child, {"result": "removed"})
    assert load(parent_id).tasks[0]["output"] == {"image-0": "kept: decided at once",
                                                  "image-1": "removed"}
    marker = new_job(tenant)  # once the sweeper expired it, it has swept the waiting parent too
    set_job(marker, expires=utcnow() - timedelta(seconds=1))
    sweep_until(lambda: load(marker).state == JobState.EXPIRED)
    assert (load(parent_id).state, load(parent_id).attempt) == (JobState.RUNNING, 1)  # no lease
    set_job(children[1], expires=utcnow() - timedelta(seconds=1))
    sweep_until(lambda: load(children[1]).state == JobState.EXPIRED)

    parent = load(parent_id)
    assert parent.state == JobState.COMPLETED
    assert parent.tasks[0]["output"] == {
        "image-0": "kept: decided at once", "image-1": "removed",
        "image-2": "kept: The job was not started before it expired.",
        "summary": "1 image(s) removed, 2 kept"}
