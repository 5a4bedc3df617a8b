"""A build context cannot cost a worker memory, disk or its pool slot, nor lead outside itself.

Tar headers that claim a gigabyte, repositories whose few megabytes unpack to a gigabyte, servers
that send a byte now and then, chains of links that each look harmless alone, and `..` in the
paths a source names: each is refused with a message saying why, before it costs anything.
Most of these run the worker's own functions in this process, on loopback servers; the figures a
user would notice (the job's end, a worker's memory) are checked through the API or in a process
of their own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import subprocess
import sys
import tarfile
import time
import zlib
from pathlib import Path

import pytest

from app.archives import ArchiveRefused, open_tar
from app.config import get_settings
from tests.api_calls import assert_error, assert_failed, get_image, image_from, import_and_wait
from tests.servers import DripServer, GitServer, Revision, git
from tests.services import ROOT
from workers import context
from workers.context import (
    ContextError,
    Packer,
    RepoSpec,
    clone,
    download,
    pack_archive,
    pack_directory,
)

MIB = 1024 * 1024


def limited(monkeypatch, **limits: int) -> None:
    """The worker's settings with `limits` changed, for this test only (settings, not a mock)."""
    changed = dataclasses.replace(get_settings(), **limits)
    monkeypatch.setattr(context, "get_settings", lambda: changed)


# Tar header bombs --------------------------------------------------------------------------------

GIB = 1024 * MIB
BOMBS = {"gnu-long-name": (b"L", GIB), "pax-header": (b"x", 600 * MIB)}


def raw_header(kind: bytes, size_field: bytes, name: bytes = b"././@LongLink") -> bytes:
    """A raw 512-byte tar header of type `kind` (`0` a file, `L` a GNU long name, `x` PAX)
    with its 12-byte size field as given."""
    block = bytearray(512)
    for offset, value in ((0, name), (100, b"0000644"), (108, b"0000000"), (116, b"0000000"),
                          (124, size_field), (136, b"00000000000"), (156, kind),
                          (257, b"ustar  ")):
        block[offset:offset + len(value)] = value
    block[148:156] = b" " * 8  # the checksum is summed with its own field as spaces
    block[148:155] = b"%06o\0" % sum(block)
    return bytes(block)


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    """Each bomb as a .tar.gz on disk: its header, then the zeros it claims (about 1 MB gzipped)."""
    made = {}
    for name, (kind, claimed) in BOMBS.items():
        gzip = zlib.compressobj(6, zlib.DEFLATED, 31)
        path = made[name] = tmp_path_factory.mktemp("bombs") / f"{name}.tar.gz"
        with open(path, "wb") as out:
            out.write(gzip.compress(raw_header(kind, b"%011o" % claimed)))
            zeros = bytes(16 * MIB)
            for _ in range(claimed // len(zeros) + 1):
                out.write(gzip.compress(zeros))
            out.write(gzip.flush())
    return made


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_a_context_whose_tar_header_claims_a_gigabyte_is_refused(api, worker, files, bombs, bomb):
    url = files.add(f"/{bomb}.tar.gz", bombs[bomb].read_bytes())
    image = image_from(api, {"type": "docker-file", "details": {"targz_url": url}})

    job = import_and_wait(api, image["id"])

    assert_failed(job, get_image(api, image["id"]),
                  f"an extended header of {BOMBS[bomb][1]} bytes", "not retried")


MEASURE = """
import json, resource, sys, tempfile
from workers.context import ContextError, Packer, pack_archive

start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(sys.argv[1], "rb") as archive, tempfile.TemporaryFile() as out:
    try:
        pack_archive(archive, Packer(out, "", "Dockerfile"))
        message = None
    except ContextError as exc:
        message = exc.message
    packed = out.tell()
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start
print(json.dumps({"grown_kib": grown, "message": message, "packed": packed}))
"""


def packed_in_a_process(archive: Path) -> dict:
    """Pack `archive` as a worker does, in a fresh process: its peak memory growth (KiB), the
    refusal's message and the bytes packed."""
    result = subprocess.run([sys.executable, "-c", MEASURE, str(archive)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, env=os.environ)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("bomb", list(BOMBS))
def test_refusing_a_tar_header_bomb_does_not_grow_the_workers_memory(bombs, bomb):
    measured = packed_in_a_process(bombs[bomb])

    assert "extended header" in measured["message"]
    assert measured["grown_kib"] < 100 * 1024, measured  # the header claims 600-1024 MiB


def test_pax_records_on_every_member_are_neither_kept_nor_packed(tmp_path):
    # 3,000 members with a 60 KB PAX comment each: 180 MB held, or written to the context, if
    # every header were kept or copied; a 2 MB download.
    archive = tmp_path / "comments.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1, format=tarfile.PAX_FORMAT) as tar:
        for number in range(3000):
            info = tarfile.TarInfo(f"f{number}")
            info.pax_headers = {"comment": f"{number:05}" + "c" * 60_000}
            tar.addfile(info, io.BytesIO())
        info = tarfile.TarInfo("Dockerfile")
        info.size = 11
        tar.addfile(info, io.BytesIO(b"FROM x\nRUN\n"))

    measured = packed_in_a_process(archive)

    assert measured["message"] is None
    assert measured["grown_kib"] < 100 * 1024, measured
    assert measured["packed"] < 10 * MIB, measured


def test_a_pax_header_crafted_to_be_slow_to_parse_is_refused_at_once():
    # 60 KB of digits: this Python's own PAX parsing backtracks over it for seconds, per member.
    body = b"1" * 60_000
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        info = tarfile.TarInfo("././@PaxHeader")
        info.type, info.size = tarfile.XHDTYPE, len(body)
        tar.addfile(info, io.BytesIO(body))
    buffer.seek(0)

    with pytest.raises(ContextError) as refused:
        pack_archive(buffer, Packer(io.BytesIO(), "", "Dockerfile"))

    assert "malformed PAX header" in refused.value.message


def test_a_member_with_a_negative_size_is_refused_not_read_again_for_ever():
    negative = b"\xff" + (256 ** 11 - 512).to_bytes(11, "big")  # base-256 for -512
    archive = io.BytesIO(raw_header(b"0", b"00000000000", b"first")
                         + raw_header(b"0", negative, b"again") + bytes(1024))

    with pytest.raises(ArchiveRefused, match="negative size"), open_tar(archive, "r:") as tar:
        for seen, _member in enumerate(tar):
            assert seen < 3, "the same header is read again and again"


# Repositories within the limits ------------------------------------------------------------------

@pytest.fixture(scope="module")
def repos(tmp_path_factory):
    """`zeros.git`: 64 MiB of zeros (a pack of a few hundred KB), tagged `v1`; `noise.git`: 3 MB
    that do not compress; `many.git`: 50 small files."""
    server = GitServer(tmp_path_factory.mktemp("git"))
    zeros = server.create_repo("zeros.git", [Revision({"Dockerfile": "FROM scratch\n",
                                                       "zeros.bin": "\0" * (64 * MIB)},
                                                      tag="v1")])
    server.create_repo("noise.git", [Revision({"Dockerfile": "FROM scratch\n",
                                               "noise.txt": os.urandom(1536 * 1024).hex()})])
    server.create_repo("many.git", [Revision({f"f{n}": "x" for n in range(50)})])
    server.zeros_commit = zeros[0]  # type: ignore[attr-defined]
    yield server
    server.close()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.parametrize("ref", ["branch", "tag", "hash"])
def test_a_clone_past_the_expanded_limit_is_refused_before_anything_is_checked_out(
        monkeypatch, tmp_path, repos, ref):
    limited(monkeypatch, context_max_expanded_bytes=16 * MIB)
    spec = RepoSpec(url=repos.url("/zeros.git"), **{
        "branch": {"branch": "main"}, "tag": {"ref_type": "tag", "ref_value": "v1"},
        "hash": {"ref_type": "hash", "ref_value": repos.zeros_commit}}[ref])

    with pytest.raises(ContextError) as refused:
        clone(spec, tmp_path)

    assert refused.value.message == f"The build context is larger than {16 * MIB} bytes expanded."
    assert not refused.value.transient
    assert [p.name for p in (tmp_path / "checkout").iterdir()] == [".git"]  # nothing checked out
    assert folder_bytes(tmp_path) < 16 * MIB


def test_a_clone_past_the_file_count_is_refused_before_anything_is_checked_out(
        monkeypatch, tmp_path, repos):
    limited(monkeypatch, context_max_members=10)

    with pytest.raises(ContextError) as refused:
        clone(RepoSpec(url=repos.url("/many.git")), tmp_path)

    assert refused.value.message == "The build context has more than 10 files."
    assert [p.name for p in (tmp_path / "checkout").iterdir()] == [".git"]


def test_a_clone_is_stopped_at_the_download_limit(monkeypatch, tmp_path, repos):
    limited(monkeypatch, context_max_download_bytes=MIB)

    with pytest.raises(ContextError) as refused:
        clone(RepoSpec(url=repos.url("/noise.git")), tmp_path)

    assert refused.value.message == (f"The repository {repos.url('/noise.git')} is larger than "
                                     f"the limit of {MIB} bytes to download.")
    assert folder_bytes(tmp_path) <= MIB


def test_a_clone_within_the_limits_is_checked_out_whole(monkeypatch, tmp_path, repos):
    limited(monkeypatch, context_max_expanded_bytes=65 * MIB, context_max_members=3)

    checkout = clone(RepoSpec(url=repos.url("/zeros.git"), ref_type="tag", ref_value="v1"),
                     tmp_path)

    assert sorted(p.name for p in checkout.iterdir()) == ["Dockerfile", "zeros.bin"]
    assert (checkout / "zeros.bin").stat().st_size == 64 * MIB


@pytest.mark.parametrize("value", ["0" * 40, "--orphan=x"])
def test_a_commit_that_is_not_there_is_named(tmp_path, repos, value):
    with pytest.raises(ContextError) as refused:
        clone(RepoSpec(url=repos.url("/many.git"), ref_type="hash", ref_value=value), tmp_path)

    assert refused.value.message == (f"The repository {repos.url('/many.git')} has no commit "
                                     f"`{value}`.")


# Time --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def drip():
    server = DripServer()
    yield server
    server.close()


def test_a_context_server_dripping_bytes_ends_the_import_once_and_for_all(api, worker, drip):
    image = image_from(api, {"type": "docker-file",
                             "details": {"targz_url": drip.url("/body.tar.gz")}})

    job = import_and_wait(api, image["id"])

    assert_failed(job, get_image(api, image["id"]), "took longer than 6 seconds",
                  "IMAGEJOBS_FETCH_MAX_SECONDS", "not retried")
    assert drip.requests["/body.tar.gz"] == 1


@pytest.mark.parametrize("path", ["/headers.tar.gz", "/hop/0"], ids=["dripped-headers",
                                                                     "slow-redirect-hops"])
def test_a_download_is_bounded_in_time_in_its_headers_and_across_its_hops(drip, tmp_path, path):
    # Every hop answers in 2 s, under the 3 s read timeout; six of them take 12 s.
    with open(tmp_path / "context.tar.gz", "w+b") as into, pytest.raises(ContextError) as refused:
        download(drip.url(path), into)

    assert "took longer than 6 seconds" in refused.value.message
    assert not refused.value.transient


def processes_naming(text: str) -> list[str]:
    """The command lines of this machine's processes that hold `text`, within 15 s (a process
    killed a moment ago may still be on its way out)."""
    for _ in range(75):
        found = []
        for entry in Path("/proc").iterdir():
            with contextlib.suppress(OSError):
                command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                if entry.name.isdigit() and text in command:
                    found.append(command)
        if not found:
            break
        time.sleep(0.2)
    return found


def test_the_git_timeout_bounds_a_clone_and_ends_gits_helpers_too(monkeypatch, tmp_path, drip):
    limited(monkeypatch, git_timeout_seconds=2)
    url = drip.url("/slow.git")

    with pytest.raises(ContextError) as refused:
        clone(RepoSpec(url=url), tmp_path)

    assert refused.value.message == f"Cloning {url} took longer than 2 seconds."
    assert refused.value.transient
    assert processes_naming(url) == []  # git-remote-http too, not only git


# Links -------------------------------------------------------------------------------------------

def link(name: str, target: str, hard: bool = False) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = (tarfile.LNKTYPE if hard else tarfile.SYMTYPE), target
    return info


def folder(name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    return info


def packed(*members: tarfile.TarInfo, context_dir: str = "") -> list[str]:
    """Pack `members` and a Dockerfile as the worker does; returns the names packed."""
    dockerfile = tarfile.TarInfo(f"{context_dir}/Dockerfile" if context_dir else "Dockerfile")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info in [*members, dockerfile]:
            tar.addfile(info, io.BytesIO())
    buffer.seek(0)
    out = io.BytesIO()
    pack_archive(buffer, Packer(out, context_dir, "Dockerfile"))
    out.seek(0)
    with tarfile.open(fileobj=out) as tar:
        return tar.getnames()


OUTSIDE, LOOP, TWICE = "points outside the context", "loop of links", "twice"
# Each link alone stays inside; followed through the others, one leaves.
ESCAPING_LINKS = {
    "chain": ([folder("d"), link("d/l", ".."), link("x", "d/l/..")], OUTSIDE),
    "chain-reversed": ([link("x", "d/l/.."), folder("d"), link("d/l", "..")], OUTSIDE),
    "through-several-links": ([link("a", "b"), link("b", "c"), folder("c"), link("c/up", ".."),
                               link("x", "a/up/..")], OUTSIDE),
    "down-then-up": ([folder("d"), folder("d/e"), link("d/e/l", "../.."), link("x", "d/e/l/..")],
                     OUTSIDE),
    "absolute": ([folder("d"), link("d/l", "/")], "points outside the context (to `/`)"),
    "hard-link-to-a-link": ([folder("d"), link("d/l", ".."), link("h", "d/l", hard=True)],
                            OUTSIDE),
    "hard-link-to-a-hard-link-to-a-link": ([folder("d"), folder("d/e"), link("d/e/l", ".."),
                                            link("d/h", "d/e/l", hard=True),
                                            link("x", "d/h", hard=True)], OUTSIDE),
    "link-written-through-a-link": ([folder("d"), link("d/l", ".."), link("d/l/x", "..")],
                                    OUTSIDE),
    "file-written-through-the-chain": ([folder("d"), link("d/l", ".."), link("x", "d/l/.."),
                                        tarfile.TarInfo("x/evil")], OUTSIDE),
    "loop": ([link("a", "b/x"), link("b", "a/y"), link("x", "a")], LOOP),
    "link-then-folder": ([link("l", "."), folder("l")], TWICE),
    "folder-then-link": ([folder("d"), folder("d/e"), link("d", "d/e/..")], TWICE),
}


@pytest.mark.parametrize("case", list(ESCAPING_LINKS))
def test_links_are_followed_through_the_contexts_own_links(case):
    members, words = ESCAPING_LINKS[case]

    with pytest.raises(ContextError) as refused:
        packed(*members)

    assert words in refused.value.message


def test_a_chain_leaving_the_context_dir_is_refused_there_too():
    with pytest.raises(ContextError, match=OUTSIDE):
        packed(folder("app"), folder("app/d"), link("app/d/l", ".."), link("app/x", "d/l/.."),
               context_dir="app")


INSIDE_LINKS = {
    "chain-inside": [folder("d"), folder("d/e"), link("d/e/l", ".."), link("x", "d/e/l/..")],
    "link-to-a-folder-then-through-it": [folder("real"), link("alias", "real"),
                                         link("alias/up", "..")],
    "hard-link-to-a-link-inside": [folder("d"), link("d/l", "../Dockerfile"),
                                   link("d/h", "d/l", hard=True)],
    "dangling": [link("x", "nowhere/at/all")],
}


@pytest.mark.parametrize("case", list(INSIDE_LINKS))
def test_links_that_stay_inside_are_packed(case):
    members = INSIDE_LINKS[case]

    assert packed(*members) == [m.name for m in members] + ["Dockerfile"]


def test_a_checkouts_link_chain_is_refused_like_an_archives(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "Dockerfile").write_text("FROM x\n")
    (tmp_path / "d" / "l").symlink_to("..")
    (tmp_path / "x").symlink_to("d/l/..")

    with pytest.raises(ContextError, match=OUTSIDE):
        pack_directory(tmp_path, Packer(io.BytesIO(), "", "Dockerfile"))


def test_a_repository_with_a_link_chain_is_refused(tmp_path, repos):
    work = tmp_path / "work"
    work.mkdir()
    git("init", "--quiet", "--initial-branch=main", cwd=work)
    (work / "d").mkdir()
    (work / "Dockerfile").write_text("FROM x\n")
    (work / "d" / "l").symlink_to("..")
    (work / "x").symlink_to("d/l/..")
    git("add", "--all", cwd=work)
    git("commit", "--quiet", "-m", "links", cwd=work)
    git("clone", "--quiet", "--bare", str(work), str(repos.repos / "links.git"), cwd=work)
    (tmp_path / "scratch").mkdir()

    checkout = clone(RepoSpec(url=repos.url("/links.git")), tmp_path / "scratch")
    with pytest.raises(ContextError, match=OUTSIDE):
        pack_directory(checkout, Packer(io.BytesIO(), "", "Dockerfile"))


# Paths a source names ----------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["context_dir", "build_file"])
@pytest.mark.parametrize("value", ["../etc", "/../Dockerfile", "app/../../x"])
def test_the_api_refuses_dot_dot_in_context_paths(api, field, value):
    response = api.post("/v1/images/sources", json={
        "type": "direct", "origin": {"type": "docker-file", "details": {
            "targz_url": "https://files.example.com/app.tar.gz", field: value}}})

    error = assert_error(response, 422, "422.invalid-input", f"/origin/details/{field}")
    assert "`..`" in error["detail"]
