"""A job's steps as pure data: the plan each kind of origin imports by, started and completed in
order, a failed step left not completed, a new attempt from zero; and the progress of a step read
from a pull's events and a build's printed lines."""

from __future__ import annotations

import pytest

from app.db import ZERO_TIME
from app.images import steps as image_steps
from app.jobs import steps
from app.jobs.steps import Step
from app.sources.origins import (
    CycleSourceOrigin,
    CycleUploadOrigin,
    DockerFileOrigin,
    DockerHubOrigin,
    DockerRegistryOrigin,
    NoneOrigin,
    OciRegistryOrigin,
)
from workers.engine import PullProgress
from workers.progress import BuildSteps
from workers.tasks.imports import IMPORTERS

T1, T2, T3, T4 = (f"2026-01-02T03:04:0{n}.000Z" for n in range(1, 5))
PLAN = steps.plan([Step("One", "first"), Step("Two", "second"), Step("Three", "third")])


def times(documents: list[dict]) -> list[tuple[str, str, str]]:
    return [(s["caption"], s["started"], s["completed"]) for s in documents]


@pytest.mark.parametrize(("origin", "captions"), [
    (DockerHubOrigin, ["Pull", "Verify", "Save"]),
    (DockerRegistryOrigin, ["Pull", "Verify", "Save"]),
    (OciRegistryOrigin, ["Pull", "Verify", "Save"]),
    (DockerFileOrigin, ["Fetch context", "Build", "Verify", "Save"]),
    (CycleUploadOrigin, ["Load", "Verify", "Save"]),
    (CycleSourceOrigin, []),
    (NoneOrigin, []),
])
def test_each_kind_of_origin_plans_the_steps_its_import_takes(origin, captions):
    assert [s.caption for s in origin.import_steps] == captions
    # A kind the worker imports has a plan; one it does not import plans nothing.
    assert bool(captions) == (origin in IMPORTERS)


def test_a_plan_lists_every_step_none_started():
    assert steps.plan(image_steps.REMOVE_IMAGES_STEPS) == [
        {"caption": "Plan", "description": "Finding the images of the sources",
         "started": ZERO_TIME, "completed": ZERO_TIME},
        {"caption": "Remove", "description": "Handing the images to the nodes that hold them",
         "started": ZERO_TIME, "completed": ZERO_TIME}]


def test_starting_a_step_completes_the_one_before_and_says_more():
    one = steps.started(PLAN, "One", "first, on node a", T1)
    two = steps.started(one, "Two", "second", T2)
    assert times(two) == [("One", T1, T2), ("Two", T2, ZERO_TIME),
                          ("Three", ZERO_TIME, ZERO_TIME)]
    assert two[0]["description"] == "first, on node a"
    assert times(PLAN) == [(c, ZERO_TIME, ZERO_TIME) for c in ("One", "Two", "Three")]


def test_a_step_the_plan_lacks_is_added_after_the_others():
    old = steps.started([], "Fetch context", "fetching", T1)  # a job made before plans
    assert times(steps.started(old, "Build", "building", T2)) == [
        ("Fetch context", T1, T2), ("Build", T2, ZERO_TIME)]


def test_a_step_is_completed_once_and_only_while_worked_on():
    done = steps.completed(steps.started(PLAN, "One", "first", T1), T2)
    assert steps.current(done) is None
    assert steps.completed(done, T3) == done
    assert steps.completed(PLAN, T3) == PLAN


def test_a_completed_step_shows_its_progress_done_where_its_total_is_known():
    working = steps.with_progress(steps.started(PLAN, "One", "first", T1), 3, 7, "steps")
    assert working[0]["progress"] == {"done": 3, "total": 7, "unit": "steps"}
    assert steps.completed(working, T2)[0]["progress"] == {"done": 7, "total": 7, "unit": "steps"}
    unknown = steps.with_progress(steps.started(PLAN, "One", "first", T1), 0, 0, "bytes")
    assert steps.completed(unknown, T2)[0]["progress"]["done"] == 0
    assert steps.with_progress(PLAN, 1, 2, "bytes") == PLAN  # no step is worked on


def test_a_success_keeps_only_the_steps_taken_and_a_new_attempt_starts_over():
    one = steps.with_progress(steps.started(PLAN, "One", "first", T1), 1, 2, "bytes")
    assert times(steps.taken(steps.completed(one, T2))) == [("One", T1, T2)]
    again = steps.restarted(steps.started(one, "Two", "second", T3))
    assert again == [{**s, "description": d} for s, d in zip(PLAN, ["first", "second", "third"],
                                                              strict=True)]
    assert times(steps.started(again, "One", "first", T4))[0] == ("One", T4, ZERO_TIME)


def pulling(layer: str, status: str, current: int | None = None, total: int | None = None
            ) -> dict:
    detail = {"current": current, "total": total} if total else {}
    return {"id": layer, "status": status, "progressDetail": detail}


def test_a_pull_sums_the_bytes_of_its_layers_as_they_are_announced():
    progress = PullProgress()
    seen = []
    for event in [
        {"id": "v1", "status": "Pulling from team/app"},
        pulling("a", "Already exists"),
        pulling("b", "Pulling fs layer"),
        pulling("c", "Pulling fs layer"),
        pulling("b", "Downloading", 100, 1000),
        pulling("b", "Downloading", 600, 1000),
        pulling("c", "Downloading", 50, 500),
        pulling("b", "Verifying Checksum"),
        pulling("b", "Download complete"),
        pulling("b", "Extracting", 1000, 1000),
        pulling("c", "Download complete"),
        pulling("b", "Pull complete"),
        pulling("c", "Pull complete"),
        {"status": "Digest: sha256:" + "0" * 64},
        {"status": "Status: Downloaded newer image for team/app:v1"},
    ]:
        if progress.feed(event):
            seen.append((progress.done, progress.total))
    assert seen == [(0, 0), (100, 1000), (600, 1000), (650, 1500), (1050, 1500), (1500, 1500)]


def test_a_pull_of_layers_the_engine_holds_is_done_at_once():
    progress = PullProgress()
    assert progress.feed(pulling("a", "Already exists"))
    assert (progress.done, progress.total) == (0, 0)


@pytest.mark.parametrize(("pieces", "counts"), [
    (["Step 1/3 : FROM busybox\n", " ---> 1a2b\n", "Step 2/3 : RUN sleep 5\n"],
     [(0, 3), (0, 3), (1, 3)]),
    # Pieces cut anywhere: a line is read once whole, and each change is told once.
    (["Step 1/4 : FR", "OM busybox\nStep 2", "/4 : RUN true\n ---> Running in 9f\nStep 3/4 : "],
     [(0, 0), (0, 4), (1, 4)]),
    # What is not a step line: a build's own output, a pull's status, an error.
    (["Step 1/2 : FROM busybox\n", "Pulling from library/busybox\n", "  Step 9/9 : echo\n",
      "ERROR: The command '/bin/sh -c false' returned a non-zero code: 1\n"],
     [(0, 2), (0, 2), (0, 2), (0, 2)]),
])
def test_a_build_counts_its_dockerfile_steps_finished_from_what_it_prints(pieces, counts):
    build = BuildSteps()
    seen = []
    for piece in pieces:
        build.feed(piece)
        seen.append((build.done, build.total))
    assert seen == counts


def test_a_build_tells_only_a_change():
    build = BuildSteps()
    assert build.feed("Step 1/2 : FROM busybox\n")
    assert not build.feed(" ---> 1a2b\n")
    assert build.feed("Step 2/2 : RUN true\n")
