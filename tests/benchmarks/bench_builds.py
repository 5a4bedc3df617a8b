"""The benchmarks (`make bench`): build rows here, worker and HTTP rows beside them.

It starts its own API and worker (`imagejobs dev`) on a fresh database and prints figures, each
beside a baseline measured in the same run; it asserts nothing about speed. BENCH_ONLY=poll,jobs
runs some rows only (harness.ROWS), BENCH_RUNS sets the number of builds.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import statistics
import subprocess
import tarfile
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import text

from app.db import transaction
from app.hubs.services import create_hub
from app.jobs.execution import Claim
from tests.benchmarks import bench_follow, bench_http, bench_workers, harness
from tests.benchmarks.bare_insert import INSERT_JOB
from tests.benchmarks.harness import Api

RUNS = int(os.environ.get("BENCH_RUNS", "5"))

DOCKERFILE = """\
FROM imagejobs/busybox:latest
ARG RUN_ID
RUN echo "$RUN_ID" > /run-id
RUN mkdir -p /srv && for i in $(seq 1 200); do echo "file $i" > /srv/f$i; done
COPY app.txt /srv/app.txt
"""
LOUD_DOCKERFILE = """\
FROM imagejobs/busybox:latest
ARG RUN_ID
RUN echo "$RUN_ID" && seq 1 100000
"""


def context_tar_gz(dockerfile: str) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in (("Dockerfile", dockerfile), ("app.txt", "hello\n" * 1000)):
            info = tarfile.TarInfo(name)
            info.size = len(data.encode())
            tar.addfile(info, io.BytesIO(data.encode()))
    return buffer.getvalue()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve(directory: Path) -> str:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


@contextmanager
def build_contexts() -> Iterator[tuple[str, Path]]:
    """The small and the loud build's contexts: as folders for `docker build`, and as .tar.gz
    files served over HTTP for imports (the base URL)."""
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        for name, dockerfile in (("small", DOCKERFILE), ("loud", LOUD_DOCKERFILE)):
            folder = scratch_path / name
            folder.mkdir()
            (folder / "Dockerfile").write_text(dockerfile)
            (folder / "app.txt").write_text("hello\n" * 1000)
            (scratch_path / f"{name}.tar.gz").write_bytes(context_tar_gz(dockerfile))
        yield serve(scratch_path), scratch_path


def build(api: Api, url: str, run_id: str) -> tuple[float, str]:
    """Seconds from the import call to the image being live, and the image's id."""
    image_id = api.image({"type": "docker-file", "details": {"targz_url": url}},
                         build={"args": {"RUN_ID": run_id}})
    started = time.perf_counter()
    job_id = api.import_image(image_id)
    while True:
        state = api.call("GET", f"/v1/jobs/{job_id}")["state"]
        if state["current"] in ("completed", "error", "expired"):
            break
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    if state["current"] != "completed":
        raise RuntimeError(f"the build failed: {state}")
    return elapsed, image_id


def docker_build(directory: Path, run_id: str) -> float:
    started = time.perf_counter()
    subprocess.run(["docker", "build", "-q", "--build-arg", f"RUN_ID={run_id}", "-t",
                    f"imagejobs-bench/{run_id}", str(directory)], check=True,
                   capture_output=True)
    return time.perf_counter() - started


def log_writes() -> int:
    with transaction() as session:
        return session.scalar(text("SELECT n_tup_ins FROM pg_stat_user_tables "
                                   "WHERE relname = 'image_build_log_chunks'")) or 0


def compare(api: Api, url: str, directory: Path, label: str) -> str:
    """Prints the row; returns the last image built."""
    ours, plain = [], []
    for _ in range(RUNS):
        plain.append(docker_build(directory, uuid.uuid4().hex))
        elapsed, image_id = build(api, url, uuid.uuid4().hex)
        ours.append(elapsed)
    ours_median, plain_median = statistics.median(ours), statistics.median(plain)
    print(f"{label}: import call to live {ours_median:.2f} s (median of {RUNS}), "
          f"plain docker build {plain_median:.2f} s, ratio {ours_median / plain_median:.2f}")
    return image_id


def building_images(count: int) -> tuple[Claim, list[str]]:
    """A running job and `count` images with empty build logs, for the writer to write to."""
    from app.db import new_id
    from app.images.models import BuildLog

    with transaction() as session:
        job_id = new_id()
        session.execute(text(INSERT_JOB), {"id": job_id, "hub": "bench", "action": "bench",
                                           "subject": None, "input": "{}", "state": "running",
                                           "attempt": 1})
        hub = create_hub(session, "writer")
        images = []
        for _ in range(count):
            image_id = new_id()
            session.execute(text(
                "INSERT INTO image_sources (id, hub_id, name, identifier, type, origin, "
                "creator_type, creator_id, state, state_changed, created, updated) VALUES "
                "(:id, :hub, 's', 's', 'direct', '{\"type\": \"none\"}', 'api-key', 'b', 'live', "
                "now(), now(), now())"), {"id": image_id, "hub": hub.id})
            session.execute(text(
                "INSERT INTO images (id, hub_id, source_id, name, origin, config, size, "
                "backend_provider, backend_file_name, backend_file_id, creator_type, creator_id, "
                "state, state_changed, created, updated) VALUES (:id, :hub, :id, 'i', "
                "'{\"type\": \"none\"}', '{}', 0, '', '', '', 'api-key', 'b', 'building', now(), "
                "now(), now())"), {"id": image_id, "hub": hub.id})
            session.add(BuildLog(hub_id=hub.id, image_id=image_id, length=0))
            images.append(image_id)
    return Claim(job_id=job_id, attempt=1, action="bench"), images


def writer_rate() -> None:
    """The log writer alone against one write per line, in this run."""
    from workers.buildlog import BuildLogWriter

    claim, images = building_images(1)
    lines = [f"step output line {i} of the benchmark build\n" for i in range(100_000)]

    started = time.perf_counter()
    with BuildLogWriter(claim, images[0]) as writer:
        for line in lines:
            writer.append(line)
    batched = time.perf_counter() - started

    sample = 2_000
    started = time.perf_counter()
    for number, line in enumerate(lines[:sample]):
        with transaction() as session:
            session.execute(text("INSERT INTO image_build_log_chunks (image_id, start, text) "
                                 "VALUES (:i, :n, :l)"), {"l": line, "i": images[0],
                                                          "n": 10**9 + number})
    per_line = (time.perf_counter() - started) / sample
    print(f"build-log writer: 100,000 lines in {batched:.2f} s "
          f"({100_000 / batched:,.0f} lines/s) in {writer.flushes} database writes; "
          f"one INSERT per line: {1 / per_line:,.0f} lines/s (on {sample:,} lines); "
          f"ratio {(100_000 / batched) * per_line:.0f}x")


def wal_bytes(write) -> int:
    """Bytes of WAL Postgres wrote while `write()` ran (the whole cluster: run it alone)."""
    with transaction() as session:
        before = session.scalar(text("SELECT pg_current_wal_lsn()"))
    write()
    with transaction() as session:
        return int(session.scalar(text("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), :lsn)"),
                                  {"lsn": before}))


def write_chunked(claim: Claim, image_id: str, pieces: list[str]) -> None:
    """Through the build-log writer, one flush per piece."""
    from workers.buildlog import BuildLogWriter

    writer = BuildLogWriter(claim, image_id)
    writer.limit = sum(map(len, pieces)) + 1
    for piece in pieces:
        writer.append(piece)
        writer.flush()


def write_rewritten(pieces: list[str]) -> None:
    """The way build logs were kept before chunks: one text value that every flush rewrites."""
    with transaction() as session:
        session.execute(text("DROP TABLE IF EXISTS rewritten_logs"))
        session.execute(text("CREATE TABLE rewritten_logs (id int PRIMARY KEY, log text)"))
        session.execute(text("INSERT INTO rewritten_logs VALUES (1, '')"))
    for piece in pieces:
        with transaction() as session:
            session.execute(text("UPDATE rewritten_logs SET log = log || :p WHERE id = 1"),
                            {"p": piece})


def wal_per_log_byte() -> None:
    """WAL per build-log byte for a build printing steadily (a flush each 50 KB, as a build
    printing 100 KB/s gets), against the one rewritten text value logs used to be."""
    import base64
    import random

    flush_every = 50_000
    rng = random.Random(7)
    for size in (100_000, 1_000_000, 4_000_000):
        # Lines that compress poorly, as a build's output of hashes and timings does.
        log = "".join(base64.b64encode(rng.randbytes(60)).decode() + "\n"
                      for _ in range(size // 81))
        pieces = [log[i:i + flush_every] for i in range(0, len(log), flush_every)]
        claim, images = building_images(1)
        ours = wal_bytes(functools.partial(write_chunked, claim, images[0], pieces)) / len(log)
        theirs = wal_bytes(functools.partial(write_rewritten, pieces)) / len(log)
        print(f"WAL per build-log byte, {len(log) / 1e6:.1f} MB log in {len(pieces)} flushes: "
              f"{ours:.2f} bytes; rewriting one text value: {theirs:.2f} bytes; "
              f"ratio {theirs / ours:.1f}x")


def builds(api: Api, base: str, scratch: Path) -> None:
    compare(api, f"{base}/small.tar.gz", scratch / "small", "small build")
    before = log_writes()
    image_id = compare(api, f"{base}/loud.tar.gz", scratch / "loud", "build printing 100,000 lines")
    log = api.call("GET", f"/v1/images/{image_id}/build-log")
    kept = sum(1 for line in log["log"].splitlines() if line.strip().isdigit())
    print(f"  its stored log kept {kept:,} of 100,000 numbered lines "
          f"({len(log['log']):,} characters); {(log_writes() - before) / RUNS:.0f} "
          "database writes per build")


def main() -> None:
    rows = harness.selected_rows()
    harness.fresh_database()
    if "writer" in rows:
        writer_rate()
    if "wal" in rows:
        wal_per_log_byte()
    if rows & {"rss", "builds"}:
        with build_contexts() as (base, scratch), harness.dev_server() as (api, dev):
            if "rss" in rows:
                bench_workers.worker_rss(dev, lambda: build(api, f"{base}/loud.tar.gz",
                                                         uuid.uuid4().hex))
            if "builds" in rows:
                builds(api, base, scratch)
    if "jobs" in rows:
        bench_workers.jobs_row()
    if rows & {"poll", "accept"}:
        bench_http.main(rows)
    if "follow" in rows:
        bench_follow.main()


if __name__ == "__main__":
    main()
