"""Builds from Dockerfiles end to end: contexts from a loopback file server or git server, a real
worker building on the real engine, and the build log read through the API while it grows.

The `Packer` tests at the end need no worker and no Docker: they check the archive refusals fast.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.api_calls import (
    assert_error,
    assert_failed,
    assert_live_in_engine,
    create_image,
    create_source,
    get_image,
    image_from,
    import_image,
    parse_time,
)
from tests.servers import FileServer, GitServer, Revision
from tests.services import AUTH_PASSWORD, AUTH_REGISTRY, AUTH_USER, BASE_IMAGE, ROOT, TEST_DATABASE
from workers.context import ContextError, Packer, pack_archive

BUILD_STEPS = ["Fetch context", "Build", "Verify", "Save"]
LOG_LIMIT = 200_000  # IMAGEJOBS_BUILD_LOG_MAX_CHARS in conftest
TRUNCATION_MARKER = (f"\n[imagejobs: the build log is cut here, at its limit of {LOG_LIMIT} "
                     "characters; the build went on]\n")
WORKER_LOG = ROOT / ".test-logs" / f"worker-{TEST_DATABASE}.log"
# A name no other run uses, so finding it anywhere means this run's archive put it there.
EVIL = f"evil-{uuid.uuid4().hex[:12]}"


# Archives ---------------------------------------------------------------------------------------

Member = tuple[tarfile.TarInfo, bytes | None]


def member(name: str, text: str = "", kind: bytes = tarfile.REGTYPE, linkname: str = "") -> Member:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    data = text.encode() if kind == tarfile.REGTYPE else None
    info.size = len(data or b"")
    return info, data


def targz(files: dict[str, str], *extra: Member) -> bytes:
    """A tar.gz of `files` (path → text), then the `extra` members as they are."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in [*(member(path, text) for path, text in files.items()), *extra]:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def dockerfile(*lines: str) -> str:
    return "\n".join([f"FROM {BASE_IMAGE}", *lines]) + "\n"


def unique() -> str:
    """A word that makes a Dockerfile new to the engine, so no cached step skips its output."""
    return uuid.uuid4().hex


# Bad members, by what is wrong with them: each is refused with a message saying so.
BAD_MEMBERS: dict[str, tuple[Member, str]] = {
    "parent-path": (member(f"../{EVIL}", "pwned"), "would land outside the context"),
    "absolute-path": (member(f"/etc/{EVIL}", "pwned"), "has an absolute path"),
    "symlink-out": (member("link", kind=tarfile.SYMTYPE, linkname="../../etc/passwd"),
                    "points outside the context"),
    "device": (member("console", kind=tarfile.CHRTYPE), "is a device or special file"),
}


# Servers and the build helper -------------------------------------------------------------------

def revision(name: str) -> dict[str, str]:
    """The files of one revision of the test repository: its Dockerfile and text say `name`."""
    return {"service/docker/Dockerfile.prod": dockerfile("COPY revision.txt /revision.txt",
                                                         f"LABEL org.example.revision={name}"),
            "service/revision.txt": f"{name}\n",
            "README": "outside the context directory\n"}


REPO_DETAILS = {"context_dir": "service", "build_file": "docker/Dockerfile.prod"}


@dataclass
class Servers:
    files: FileServer
    git: GitServer
    commits: dict[str, str] = field(default_factory=dict)  # of public/app.git, by revision name

    def archive(self, files: dict[str, str], *extra: Member) -> str:
        """Serve a new tar.gz; returns its URL."""
        return self.files.add(f"/{uuid.uuid4().hex}.tar.gz", targz(files, *extra))

    def repo(self, name: str, **fields: Any) -> dict[str, Any]:
        return {"url": self.git.url(f"/{name}"), **fields}


@pytest.fixture(scope="module")
def servers(tmp_path_factory) -> Iterator[Servers]:
    files, git = FileServer(), GitServer(tmp_path_factory.mktemp("git"))
    servers = Servers(files, git)
    names = ["one", "two", "three", "four"]  # main: one (tag v1), two, three; feature: four
    servers.commits = dict(zip(names, git.create_repo("public/app.git", [
        Revision(revision("one"), tag="v1"), Revision(revision("two")),
        Revision(revision("three")), Revision(revision("four"), branch="feature")]), strict=True))
    git.create_repo("private/app.git", [Revision(revision("private"))])
    yield servers
    files.close()
    git.close()


class Builder:
    """Makes docker-file images through the API, builds them and reads their build logs."""

    def __init__(self, api, docker_client):
        self.api = api
        self.docker_client = docker_client
        self.image_ids: list[str] = []

    def image(self, details: dict[str, Any], **fields: Any) -> dict[str, Any]:
        image = image_from(self.api, {"type": "docker-file", "details": details}, **fields)
        self.image_ids.append(image["id"])
        return image

    def build(self, details: dict[str, Any], **fields: Any) -> tuple[dict, dict]:
        """Build a new image of a source with `details`; returns the ended job and the image."""
        image = self.image(details, **fields)
        job = self.api.wait_for_job(import_image(self.api, image["id"])["job"]["id"])
        return job, get_image(self.api, image["id"])

    def log(self, image_id: str, offset: int = 0) -> dict[str, Any]:
        response = self.api.get(f"/v1/images/{image_id}/build-log?offset={offset}")
        assert response.status_code == 200, response.get_json()
        return response.get_json()["data"]

    def run(self, image: dict[str, Any], command: str) -> str:
        """What `command` prints in a container of the image.

        Make it end with a newline: the engine may lose an unfinished last line of a container
        that exits at once.
        """
        return self.docker_client.containers.run(image["backend"]["file_name"], command,
                                                 remove=True, network_mode="none").decode()

    def untag(self) -> None:
        """Leave the shared engine as found: drop the images these builds tagged."""
        for image_id in self.image_ids:
            file_name = get_image(self.api, image_id)["backend"]["file_name"]
            if file_name:
                self.docker_client.images.remove(file_name)


@pytest.fixture
def builder(api, docker_client, worker) -> Iterator[Builder]:
    builder = Builder(api, docker_client)
    yield builder
    builder.untag()


def assert_log_ends_with_the_cause(log: str, job: dict) -> None:
    """The log's last line names the cause; the job's message says it, and whether it was retried."""
    last = log.rstrip("\n").rsplit("\n", 1)[-1]
    assert last.startswith("ERROR: "), log[-500:]
    assert job["state"]["error"]["message"].startswith(last[len("ERROR: "):])


def assert_built(job: dict, image: dict, docker_client) -> None:
    """The job completed through the four build steps, in order, and the image is live."""
    assert job["state"]["current"] == "completed", job["state"]
    [task] = job["tasks"]
    assert [step["caption"] for step in task["steps"]] == BUILD_STEPS
    times = [parse_time(step[event]) for step in task["steps"] for event in ("started", "completed")]
    assert times == sorted(times) and times[0] < times[-1]
    assert_live_in_engine(image, docker_client)


def found_anywhere(name: str) -> list[str]:
    """Where a file `name` lies in /tmp (the worker's scratch space), its cwd or the folders above."""
    places = [Path("/tmp", name), ROOT / name, ROOT.parent / name, Path("/etc", name)]
    hits = [str(p) for p in places if p.exists() or p.is_symlink()]
    for directory, _, files in os.walk("/tmp"):
        hits += [os.path.join(directory, name)] if name in files else []
    return hits


# 1, 2: archives -----------------------------------------------------------------------------------

def test_a_targz_context_dir_builds_into_a_live_image_with_its_args(builder, servers, docker_client):
    content = unique() + "\n"
    url = servers.archive({
        "app/Dockerfile": dockerfile("ARG FLAVOUR=plain", "LABEL org.example.flavour=$FLAVOUR",
                                     "COPY x /x", "COPY . /context/"),
        "app/x": content,
        "app/sub/y": "beside the Dockerfile\n",
        "secret.txt": "outside the context directory\n",
    })

    job, image = builder.build({"targz_url": url, "context_dir": "app"},
                               build={"args": {"FLAVOUR": "spicy"}})

    assert_built(job, image, docker_client)
    assert image["build"] == {"args": {"FLAVOUR": "spicy"}}
    assert image["config"]["labels"]["org.example.flavour"] == "spicy"
    assert image["factory"]["node_id"] == "test-node"
    assert builder.run(image, "cat /x") == content
    assert builder.run(image, "ls -a /context").split() == [".", "..", "Dockerfile", "sub", "x"]
    log = builder.log(image["id"])["log"]
    assert "Build context ready: " in log and "Successfully built" in log


def test_an_archive_packed_from_its_own_folder_builds(builder, servers, docker_client):
    """`tar czf ctx.tar.gz -C dir .` names every member `./…`, the folder itself `./`."""
    url = servers.archive({"./Dockerfile": dockerfile("COPY x /x"), "./x": "dotted\n"},
                          member("./", kind=tarfile.DIRTYPE))

    job, image = builder.build({"targz_url": url})

    assert_built(job, image, docker_client)
    assert builder.run(image, "cat /x") == "dotted\n"


def test_override_targz_url_wins_over_the_sources_targz_url(builder, servers, docker_client):
    def labelled(word: str) -> str:
        return servers.archive({"Dockerfile": dockerfile(f"LABEL org.example.from={word}")})

    job, image = builder.build({"targz_url": labelled("source")},
                               override={"targz_url": labelled("override")})

    assert_built(job, image, docker_client)
    assert image["config"]["labels"]["org.example.from"] == "override"


# 3, 4: git ----------------------------------------------------------------------------------------

# How a repo names a revision → the revision it builds.
REVISIONS: dict[str, tuple[Callable[[Servers], dict[str, Any]], str]] = {
    "default-branch": (lambda s: {}, "three"),
    "branch": (lambda s: {"branch": "feature"}, "four"),
    "tag": (lambda s: {"ref": {"type": "tag", "value": "v1"}}, "one"),
    "commit": (lambda s: {"ref": {"type": "hash", "value": s.commits["two"]}}, "two"),
}


@pytest.mark.parametrize("way", list(REVISIONS))
def test_a_git_build_takes_the_content_of_its_revision(builder, servers, docker_client, way):
    where, expected = REVISIONS[way]

    job, image = builder.build({"repo": servers.repo("public/app.git", **where(servers)),
                                **REPO_DETAILS})

    assert_built(job, image, docker_client)
    assert image["config"]["labels"]["org.example.revision"] == expected
    assert builder.run(image, "cat /revision.txt") == f"{expected}\n"


def http_auth(password: str) -> dict[str, Any]:
    return {"type": "http", "credentials": {"username": GitServer.USER, "password": password}}


def test_a_private_repo_builds_with_its_credentials_and_never_shows_them(builder, servers,
                                                                        docker_client):
    wrong = f"wrong-{uuid.uuid4().hex}"
    results = [builder.build({"repo": servers.repo("private/app.git", auth=http_auth(password)),
                              **REPO_DETAILS}) for password in (GitServer.PASSWORD, wrong)]

    (good_job, good_image), (bad_job, bad_image) = results
    assert_built(good_job, good_image, docker_client)
    assert good_image["config"]["labels"]["org.example.revision"] == "private"
    assert_failed(bad_job, bad_image, "refused the credentials")
    shown = json.dumps([*results, *(builder.log(image["id"]) for _, image in results)])
    logged = WORKER_LOG.read_text()
    for password in (GitServer.PASSWORD, wrong):
        assert password not in shown
        assert password not in logged


# 5, 6: the build log ------------------------------------------------------------------------------

def test_the_build_log_grows_while_the_build_runs(api, builder, servers):
    url = servers.archive({"Dockerfile": dockerfile(
        f"RUN echo {unique()} && for i in $(seq 1 12); do echo \"tick $i\"; sleep 0.5; done")})
    image = builder.image({"targz_url": url})
    job_id = import_image(api, image["id"])["job"]["id"]

    pieces, offsets, ticks_while_running = [], [0], set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.3)
        # The log first, then the job: a piece read while the job still runs was shown mid-build.
        response = api.get(f"/v1/images/{image['id']}/build-log?offset={offsets[-1]}")
        job_state = api.get(f"/v1/jobs/{job_id}").get_json()["data"]["state"]["current"]
        if response.status_code == 404:  # the worker has not opened the log yet
            assert job_state in ("new", "queued", "running"), job_state
            continue
        data = response.get_json()["data"]
        assert data["meta"]["offset"] == offsets[-1]
        assert data["meta"]["next_offset"] == offsets[-1] + len(data["log"])
        pieces.append(data["log"])
        if data["meta"]["next_offset"] != offsets[-1]:
            offsets.append(data["meta"]["next_offset"])
        if job_state != "running":
            break
        ticks_while_running |= {line for line in data["log"].splitlines() if line.startswith("tick")}

    assert job_state == "completed"
    assert len(offsets) >= 5, offsets
    assert len(ticks_while_running) >= 3, ticks_while_running
    full = builder.log(image["id"])
    assert "".join(pieces) == full["log"]
    assert full["meta"] == {"offset": 0, "next_offset": len(full["log"]), "truncated": False}
    assert [f"tick {i}" for i in range(1, 13)] == [
        line for line in full["log"].splitlines() if line.startswith("tick")]


def test_a_build_log_past_its_limit_ends_with_the_truncation_marker(builder, servers, docker_client):
    url = servers.archive({"Dockerfile": dockerfile(f"RUN echo {unique()} && seq 1 60000")})

    job, image = builder.build({"targz_url": url})

    assert_built(job, image, docker_client)
    data = builder.log(image["id"])
    log = data["log"]
    assert data["meta"]["truncated"] is True
    assert log.endswith(TRUNCATION_MARKER)
    assert LOG_LIMIT <= len(log) <= LOG_LIMIT + len(TRUNCATION_MARKER)
    assert "\n1\n2\n3\n" in log and "\n60000\n" not in log


# 7: refusals --------------------------------------------------------------------------------------

def failing_run(servers: Servers) -> dict[str, Any]:
    return {"targz_url": servers.archive({"Dockerfile": dockerfile(
        f"RUN echo 'about to fail {unique()}' && exit 3")})}


MISSING_COMMIT = "4010403404" + "0" * 30  # its digits look like HTTP statuses, in case of guesswork

# What is wrong → the source details of a build that cannot work, and what the message names.
BROKEN_BUILDS: dict[str, tuple[Callable[[Servers], dict[str, Any]], list[str]]] = {
    "failing-run": (failing_run, ["build failed", "returned a non-zero code: 3", "about to fail"]),
    "missing-dockerfile": (lambda s: {"targz_url": s.archive({"README": "no Dockerfile here"})},
                           ["The Dockerfile `/Dockerfile` is not in the build context"]),
    "missing-context-dir": (lambda s: {"targz_url": s.archive({"Dockerfile": dockerfile()}),
                                       "context_dir": "nope"},
                            ["context directory `/nope` is not in the build context"]),
    "url-not-found": (lambda s: {"targz_url": s.files.url("/nowhere.tar.gz")},
                      ["answered 404", "/nowhere.tar.gz", "not retried"]),
    "url-never-answers": (lambda s: {"targz_url": s.files.url(FileServer.SILENT_PATH)},
                          ["did not answer within 3 seconds", "a temporary fault",
                           "given up after 3 attempts"]),
    "repo-not-found": (lambda s: {"repo": s.repo("public/nope.git")}, ["does not exist"]),
    "branch-not-found": (lambda s: {"repo": s.repo("public/app.git", branch="nope"),
                                    **REPO_DETAILS}, ["has no branch `nope`"]),
    "commit-not-found": (lambda s: {"repo": s.repo("public/app.git", ref={
        "type": "hash", "value": MISSING_COMMIT}), **REPO_DETAILS},
        [f"has no commit `{MISSING_COMMIT}`"]),
    "private-repo-without-credentials": (lambda s: {"repo": s.repo("private/app.git")},
                                         ["requires credentials", "has none"]),
}


@pytest.mark.parametrize("broken", list(BROKEN_BUILDS))
def test_a_build_that_cannot_work_ends_in_error_and_keeps_its_log(builder, servers, broken):
    details, words = BROKEN_BUILDS[broken]

    job, image = builder.build(details(servers))

    assert_failed(job, image, *words)
    log = builder.log(image["id"])["log"]
    assert log.startswith("[imagejobs: build attempt 1 on node test-node]\n")
    if broken == "failing-run":
        assert "about to fail" in log and "returned a non-zero code: 3" in log
    else:
        assert_log_ends_with_the_cause(log, job)


def test_a_temporary_fault_is_retried_with_backoff_until_the_build_works(builder, servers):
    url = servers.files.add(f"/{uuid.uuid4().hex}.tar.gz",
                            targz({"Dockerfile": dockerfile()}), failures=2)

    job, image = builder.build({"targz_url": url})

    assert job["state"]["current"] == "completed", job["state"]
    # The plan was started over by each attempt: the steps are the last one's, each once.
    assert_built(job, image, builder.docker_client)
    fetched = parse_time(job["tasks"][0]["steps"][0]["started"])
    assert (fetched - parse_time(job["events"]["started"])).total_seconds() >= 1 + 3
    assert job["state"]["error"] is None and job["tasks"][0]["error"] is None
    log = builder.log(image["id"])["log"]
    assert [line for line in log.splitlines() if line.startswith("[imagejobs: build attempt")] == [
        f"[imagejobs: build attempt {n} on node test-node]" for n in (1, 2, 3)]
    assert log.count("answered 503") == 2


@pytest.mark.parametrize("bad", list(BAD_MEMBERS))
def test_an_archive_with_a_bad_member_is_refused_and_writes_nothing_outside(builder, servers, bad):
    bad_member, words = BAD_MEMBERS[bad]
    url = servers.archive({"Dockerfile": dockerfile("COPY . /context/")}, bad_member)

    job, image = builder.build({"targz_url": url})

    assert_failed(job, image, words)
    assert_log_ends_with_the_cause(builder.log(image["id"])["log"], job)
    assert found_anywhere(EVIL) == []


# 8, 9: registry credentials, nothing to build ------------------------------------------------------

@pytest.fixture
def private_base(docker_client, pushed_image) -> str:
    """The private reference of the pushed image, absent from the engine so a FROM must pull it."""
    with contextlib.suppress(docker.errors.ImageNotFound):
        docker_client.images.remove(pushed_image.private, force=True)
    return pushed_image.private


def test_registry_credentials_of_the_source_pull_a_private_base_image(builder, servers, docker_client,
                                                                     private_base):
    wrong = f"wrong-{uuid.uuid4().hex}"
    url = servers.archive({"Dockerfile": f"FROM {private_base}\nLABEL org.example.built=yes\n"})

    (good_job, good_image), (bad_job, bad_image) = [builder.build({
        "targz_url": url,
        "credentials": [{"url": AUTH_REGISTRY, "username": AUTH_USER, "token": token}],
    }) for token in (AUTH_PASSWORD, wrong)]

    assert_built(good_job, good_image, docker_client)
    assert good_image["config"]["labels"] == {"org.example.team": "images",
                                              "org.example.tier": "test", "org.example.built": "yes"}
    assert_failed(bad_job, bad_image, f"registry {AUTH_REGISTRY} refused the credentials")
    bad_log = builder.log(bad_image["id"])
    assert_log_ends_with_the_cause(bad_log["log"], bad_job)
    assert wrong not in json.dumps([bad_job, bad_image, bad_log])


def test_a_docker_file_source_with_nothing_to_build_cannot_be_imported(api):
    source = create_source(api, {"type": "docker-file", "details": {"context_dir": "app"}})
    image = create_image(api, source["id"])

    response = api.post(f"/v1/images/{image['id']}/tasks", json={"action": "import"})

    error = assert_error(response, 422, "422.invalid-argument")
    assert "neither a `repo` nor a `targz_url`" in error["detail"]
    assert get_image(api, image["id"])["state"]["current"] == "new"


# The Packer, without Docker -----------------------------------------------------------------------

def packed(archive: bytes, context_dir: str = "", **limits: int) -> list[str]:
    """Pack `archive` as the worker does; returns the names that would reach the build
    (`name -> target` for a hard link)."""
    out = io.BytesIO()
    packer = Packer(out, context_dir, "Dockerfile")
    for name, value in limits.items():
        setattr(packer, name, value)
    pack_archive(io.BytesIO(archive), packer)
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        return [f"{m.name} -> {m.linkname}" if m.islnk() else m.name for m in tar]


@pytest.mark.parametrize(("context_dir", "prefix"), [("app", "app/"), ("", ""), (".docker", ".docker/"),
                                                     ("", "./")],
                         ids=["context-dir", "whole-archive", "dot-context-dir", "dot-slash-names"])
def test_the_packer_keeps_the_context_dir_relative_to_it_with_its_links(context_dir, prefix):
    archive = targz({f"{prefix}Dockerfile": "FROM scratch\n", f"{prefix}.env": "A=1\n",
                     f"{prefix}sub/x": "x", "elsewhere/secret.txt": "outside"},
                    member(f"{prefix}sub/hard", kind=tarfile.LNKTYPE, linkname=f"{prefix}.env"))

    outside = [] if context_dir else ["elsewhere/secret.txt"]
    assert packed(archive, context_dir) == ["Dockerfile", ".env", "sub/x", *outside,
                                            "sub/hard -> .env"]


# Refused as well, and quick to check without a build.
PACKER_BAD_MEMBERS: dict[str, tuple[Member, str]] = {
    **BAD_MEMBERS,
    "hardlink-out-of-context-dir": (member("app/hard", kind=tarfile.LNKTYPE, linkname="secret.txt"),
                                    "points outside the context"),
    "fifo": (member("app/pipe", kind=tarfile.FIFOTYPE), "is a device or special file"),
}


@pytest.mark.parametrize("bad", list(PACKER_BAD_MEMBERS))
def test_the_packer_refuses_a_bad_member(bad):
    bad_member, words = PACKER_BAD_MEMBERS[bad]
    archive = targz({"app/Dockerfile": "FROM scratch\n", "secret.txt": "no"}, bad_member)

    with pytest.raises(ContextError) as refused:
        packed(archive, "app")

    assert words in refused.value.message


@pytest.mark.parametrize(("limits", "words"), [
    ({"max_expanded": 1000}, "larger than 1000 bytes expanded"),
    ({"max_members": 2}, "more than 2 files"),
])
def test_the_packer_refuses_a_context_past_its_limits(limits, words):
    archive = targz({"Dockerfile": "FROM scratch\n", "a": "a" * 600, "b": "b" * 600})

    assert packed(archive, **{k: v * 10 for k, v in limits.items()}) == ["Dockerfile", "a", "b"]
    with pytest.raises(ContextError) as refused:
        packed(archive, **limits)

    assert words in refused.value.message
