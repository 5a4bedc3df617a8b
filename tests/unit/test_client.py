"""The client's pure parts: Server-Sent Events read from lines, a job's steps as followed, the
origin documents its options make, and its settings file (0600, the environment winning)."""

from __future__ import annotations

import os
import stat

import click
import pytest

from app.client import settings
from app.client.commands import origin_of
from app.client.settings import ClientSettings
from app.client.sse import Event, events
from app.client.steps import job_error, step_views

ZERO = "0001-01-01T00:00:00Z"
T1, T2 = "2026-01-02T03:04:01.000Z", "2026-01-02T03:04:03.500Z"


@pytest.mark.parametrize(("lines", "expected"), [
    (["data: {\"a\": 1}", ""], [Event("message", "{\"a\": 1}", None)]),
    (["id: 7", "data: x", "", "event: end", "data: y", ""],
     [Event("message", "x", "7"), Event("end", "y", "7")]),
    ([": keepalive", "", "data:no-space", ""], [Event("message", "no-space", None)]),
    (["data: one", "data: two", ""], [Event("message", "one\ntwo", None)]),
    (["event: end", ""], []),  # no data: not dispatched
    (["data: cut off"], []),  # no blank line: the event never ended
    (["data:", ""], [Event("message", "", None)]),
])
def test_server_sent_events_are_read_as_the_standard_reads_them(lines, expected):
    assert list(events(lines)) == expected


def step(caption: str, started: str = ZERO, completed: str = ZERO, **progress: object) -> dict:
    document = {"caption": caption, "description": caption.lower(), "started": started,
                "completed": completed}
    if progress:
        document["progress"] = progress
    return document


def job(state: str, *steps: dict, error: str | None = None) -> dict:
    return {"id": "j", "state": {"current": state, "error": {"message": error} if error else None},
            "tasks": [{"steps": list(steps), "error": None}]}


@pytest.mark.parametrize(("document", "statuses", "fractions", "amounts"), [
    (job("queued", step("Pull"), step("Save")), ["planned", "planned"], [None, None], ["", ""]),
    (job("running", step("Pull", T1, done=5_000_000, total=20_000_000, unit="bytes"),
         step("Save")),
     ["running", "planned"], [0.25, None], ["5.0 MB of 20.0 MB", ""]),
    (job("running", step("Build", T1, done=3, total=4, unit="steps")), ["running"], [0.75],
     ["3 of 4 steps"]),
    (job("completed", step("Pull", T1, T2), step("Save", T2, T2)), ["done", "done"], [1.0, 1.0],
     ["", ""]),
    (job("error", step("Pull", T1, T2), step("Build", T2)), ["done", "failed"], [1.0, None],
     ["", ""]),
])
def test_a_jobs_steps_say_which_is_done_running_or_failed_and_how_far(
        document, statuses, fractions, amounts):
    views = step_views(document)
    assert [v.status for v in views] == statuses
    assert [v.fraction() for v in views] == fractions
    assert [v.amount() for v in views] == amounts


def test_a_done_steps_time_is_the_apis_own():
    (view,) = step_views(job("completed", step("Pull", T1, T2)))
    assert view.seconds(view.started) == 2.5  # not the client's clock


def test_a_jobs_error_is_its_state_error_or_else_its_tasks():
    assert job_error(job("error", error="the registry refused it")) == "the registry refused it"
    task_failed = job("error")
    task_failed["tasks"][0]["error"] = {"message": "from the task"}
    assert job_error(task_failed) == "from the task"
    assert job_error(job("completed")) == ""


@pytest.mark.parametrize(("kind", "options", "origin"), [
    ("docker-registry", {"url": "http://127.0.0.1:5000", "target": "library/busybox:latest"},
     {"type": "docker-registry", "details": {"url": "http://127.0.0.1:5000",
                                             "target": "library/busybox:latest"}}),
    ("docker-registry", {"url": "r.example", "target": "a:1", "username": "u", "secret": "p"},
     {"type": "docker-registry", "details": {"url": "r.example", "target": "a:1",
                                             "username": "u", "password": "p"}}),
    ("docker-hub", {"target": "library/busybox", "username": "u", "secret": "t"},
     {"type": "docker-hub", "details": {"target": "library/busybox", "username": "u",
                                        "token": "t"}}),
    ("oci-registry", {"url": "r.example", "target": "a:1", "username": "u", "secret": "t"},
     {"type": "oci-registry", "details": {"url": "r.example", "target": "a:1", "auth": {
         "type": "user", "details": {"username": "u", "token": "t"}}}}),
    ("docker-file", {"git": "https://git.example/app.git", "branch": "main",
                     "context_dir": "web", "dockerfile": "Dockerfile.prod"},
     {"type": "docker-file", "details": {"repo": {"url": "https://git.example/app.git",
                                                  "branch": "main"},
                                         "context_dir": "web", "build_file": "Dockerfile.prod"}}),
    ("docker-file", {"targz": "https://files.example/ctx.tar.gz"},
     {"type": "docker-file", "details": {"targz_url": "https://files.example/ctx.tar.gz"}}),
    ("cycle-upload", {}, {"type": "cycle-upload"}),
])
def test_the_options_of_each_origin_make_the_apis_origin_document(kind, options, origin):
    assert origin_of(kind, **options) == origin


@pytest.mark.parametrize(("kind", "options", "words"), [
    ("docker-registry", {"target": "a:1"}, "needs --url"),
    ("docker-hub", {}, "needs --target"),
    ("docker-hub", {"url": "r.example", "target": "a"}, "--url does not apply"),
    ("docker-file", {}, "either --git or --targz"),
    ("docker-file", {"git": "https://g/a.git", "targz": "https://f/c.tar.gz"}, "either"),
    ("docker-file", {"targz": "https://f/c.tar.gz", "branch": "main"}, "--branch goes with"),
    ("cycle-upload", {"target": "a"}, "--target does not apply"),
])
def test_options_missing_or_out_of_place_are_refused_by_name(kind, options, words):
    with pytest.raises(click.UsageError, match=words):
        origin_of(kind, **options)


def test_the_settings_file_is_written_0600_and_the_environment_wins_over_it(tmp_path):
    environ = {"XDG_CONFIG_HOME": str(tmp_path)}
    path = settings.config_path(environ)
    os.umask(0o000)  # even with nothing masked, the file is its owner's alone
    try:
        settings.write(path, ClientSettings("http://api.example:8000", "secret-key", "hub-1"))
    finally:
        os.umask(0o022)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert settings.load(environ) == ClientSettings("http://api.example:8000", "secret-key",
                                                    "hub-1")
    assert settings.load({**environ, "IMAGEJOBS_KEY": "other", "IMAGEJOBS_API": "http://x/"}
                         ) == ClientSettings("http://x", "other", "hub-1")
    assert [p.name for p in path.parent.iterdir()] == ["client.json"]  # no partial file left


def test_without_a_file_the_api_defaults_to_the_local_one(tmp_path):
    loaded = settings.load({"XDG_CONFIG_HOME": str(tmp_path)})
    assert loaded == ClientSettings(settings.DEFAULT_API, "", "")
    assert loaded.missing() == ["IMAGEJOBS_KEY", "IMAGEJOBS_HUB"]


def test_a_settings_file_that_is_not_json_says_to_log_in_again(tmp_path):
    path = settings.config_path({"XDG_CONFIG_HOME": str(tmp_path)})
    path.parent.mkdir()
    path.write_text("{not json")
    with pytest.raises(settings.SettingsError, match="imagejobs login"):
        settings.load({"XDG_CONFIG_HOME": str(tmp_path)})
