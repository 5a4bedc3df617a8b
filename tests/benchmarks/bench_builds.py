"""Build benchmarks: import-to-live against a plain `docker build`, and the build-log write rate.

Run with `make bench`. It starts its own API and worker (`imagejobs dev`) on a fresh database and
prints figures, each beside a baseline measured in the same run; it asserts nothing about speed.
"""

from __future__ import annotations

import functools
import http.server
import io
import os
import socket
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DATABASE = "imagejobs_bench"
os.environ.update({
    "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}",
    "REDIS_URL": "redis://127.0.0.1:6379/9",
    "IMAGEJOBS_SECRET_KEY": "benchmark-secret",
    "IMAGEJOBS_NODE_ID": "bench-node",
    "IMAGEJOBS_ALLOWED_NETWORKS": "127.0.0.1/32",
    # Room for the whole 100,000-line log, so the figures cover every line.
    "IMAGEJOBS_BUILD_LOG_MAX_CHARS": str(16 * 1024 * 1024),
})

import requests  # noqa: E402
from sqlalchemy import text  # noqa: E402

from app import migrations  # noqa: E402
from app.db import transaction  # noqa: E402
from app.hubs.services import create_hub, create_key  # noqa: E402
from app.jobs.execution import Claim  # noqa: E402
from tests.services import recreate_database  # noqa: E402

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def serve(directory: Path) -> str:
    handler = functools.partial(QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def fresh_database() -> None:
    recreate_database(DATABASE)
    migrations.upgrade()


class Server:
    def __init__(self) -> None:
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.log = open(ROOT / ".test-logs" / "bench-dev.log", "w")  # noqa: SIM115
        self.process = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "dev", "--port", str(port)], cwd=ROOT,
            stdout=self.log, stderr=subprocess.STDOUT, env=os.environ)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if requests.get(f"{self.base}/v1/health", timeout=5).ok:
                    break
            except requests.RequestException:
                time.sleep(0.3)
        with transaction() as session:
            hub = create_hub(session, "bench")
            _, secret = create_key(session, hub.id, "bench")
            self.headers = {"Authorization": f"Bearer {secret}", "X-Hub-Id": hub.id}
        time.sleep(3)  # let the worker finish starting

    def call(self, method: str, path: str, **kwargs) -> dict:
        response = requests.request(method, f"{self.base}{path}", headers=self.headers,
                                    timeout=30, **kwargs)
        response.raise_for_status()
        return response.json()["data"]

    def build(self, url: str, run_id: str) -> float:
        """Seconds from the import call to the image being live."""
        source = self.call("POST", "/v1/images/sources", json={
            "type": "direct", "origin": {"type": "docker-file", "details": {"targz_url": url}}})
        image = self.call("POST", "/v1/images", json={"source_id": source["id"],
                                                     "build": {"args": {"RUN_ID": run_id}}})
        started = time.perf_counter()
        job = self.call("POST", f"/v1/images/{image['id']}/tasks", json={"action": "import"})
        while True:
            state = self.call("GET", f"/v1/jobs/{job['job']['id']}")["state"]
            if state["current"] in ("completed", "error", "expired"):
                break
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        if state["current"] != "completed":
            raise RuntimeError(f"the build failed: {state}")
        self.last_image = image["id"]
        return elapsed

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)
        self.log.close()


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


def compare(server: Server, url: str, directory: Path, label: str) -> None:
    ours, plain = [], []
    for _ in range(RUNS):
        plain.append(docker_build(directory, uuid.uuid4().hex))
        ours.append(server.build(url, uuid.uuid4().hex))
    ours_median, plain_median = statistics.median(ours), statistics.median(plain)
    print(f"{label}: import call to live {ours_median:.2f} s (median of {RUNS}), "
          f"plain docker build {plain_median:.2f} s, ratio {ours_median / plain_median:.2f}")


def building_images(count: int) -> tuple[Claim, list[str]]:
    """A running job and `count` images with empty build logs, for the writer to write to."""
    from app.db import new_id
    from app.images.models import BuildLog

    with transaction() as session:
        job_id = new_id()
        session.execute(text(
            "INSERT INTO jobs (id, hub_id, action, queue, caption, input, tasks, hash, "
            "limit_duplicates, creator_type, creator_id, state, state_changed, schedule, "
            "expires, attempt) VALUES (:id, 'bench', 'bench', 'bench', 'bench', '{}', '[]', "
            ":id, false, 'api-key', 'bench', 'running', now(), now(), now() + interval '1 day', 1)"
        ), {"id": job_id})
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


def main() -> None:
    (ROOT / ".test-logs").mkdir(exist_ok=True)
    fresh_database()
    writer_rate()
    wal_per_log_byte()
    with tempfile.TemporaryDirectory() as scratch:
        scratch_path = Path(scratch)
        for name, dockerfile in (("small", DOCKERFILE), ("loud", LOUD_DOCKERFILE)):
            folder = scratch_path / name
            folder.mkdir()
            (folder / "Dockerfile").write_text(dockerfile)
            (folder / "app.txt").write_text("hello\n" * 1000)
            (scratch_path / f"{name}.tar.gz").write_bytes(context_tar_gz(dockerfile))
        base = serve(scratch_path)
        server = Server()
        try:
            compare(server, f"{base}/small.tar.gz", scratch_path / "small", "small build")
            before = log_writes()
            compare(server, f"{base}/loud.tar.gz", scratch_path / "loud",
                    "build printing 100,000 lines")
            log = server.call("GET", f"/v1/images/{server.last_image}/build-log")
            kept = sum(1 for line in log["log"].splitlines() if line.strip().isdigit())
            print(f"  its stored log kept {kept:,} of 100,000 numbered lines "
                  f"({len(log['log']):,} characters); {(log_writes() - before) / RUNS:.0f} "
                  "database writes per build")
        finally:
            server.stop()


if __name__ == "__main__":
    main()
