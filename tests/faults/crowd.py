"""A few hundred clients at once: each creates import jobs and polls them until they end, while the
workers are saturated; the API must answer every call (no 5xx, no refused or dropped connection)
and every job must end.

    python -m tests.faults.crowd [--clients 300] [--seconds 60] [--seed N] [--workers 2]

(or `make load LOAD_ARGS="--clients 300"`). It first measures poll latency with a few clients
and idle workers, then prints the same figures under the crowd as ratios against that baseline;
it asserts nothing about speed. Exits 1 on any 5xx, connection error or lost job.

Its environment (database imagejobs_crowd on the shared Postgres, Redis db 4) is set below,
before any `app` module is imported: the package `tests.faults`, which Python imports first, puts
the fault harness's own in place (its services, short leases, a short visibility timeout), and the
app reads its settings once, at first use. So every IMAGEJOBS_* setting is dropped first and only
the crowd's are set: the app's defaults otherwise, as in production; short leases would lapse on
two saturated cores.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import redis
import requests

DATABASE = "imagejobs_crowd"
REDIS_URL = "redis://127.0.0.1:6379/4"
for _name in [n for n in os.environ if n.startswith("IMAGEJOBS_")]:
    del os.environ[_name]
os.environ.update({
    "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}",
    "REDIS_URL": REDIS_URL,
    "IMAGEJOBS_SECRET_KEY": "crowd-secret-not-for-production",
    "IMAGEJOBS_NODE_ID": "crowd-node",
    "IMAGEJOBS_ALLOWED_NETWORKS": "127.0.0.1/32",
    "IMAGEJOBS_RETRY_SECONDS": "2",
    "IMAGEJOBS_SHUTDOWN_SECONDS": "5",
})

from sqlalchemy import func, select, text  # noqa: E402

from app import migrations  # noqa: E402
from app.db import transaction  # noqa: E402
from app.hubs.services import create_hub, create_key  # noqa: E402
from app.jobs.models import Job, JobState  # noqa: E402
from tests.faults.checks import (  # noqa: E402
    Report,
    check_effects,
    check_stuck,
    count_jobs,
    wait_terminal,
)
from tests.faults.load import REGISTRY_ORIGIN, Api, ContextServer, HarnessImage  # noqa: E402
from tests.faults.stack import Stack, group_members  # noqa: E402
from tests.services import recreate_database  # noqa: E402

TERMINAL = {JobState.COMPLETED.value, JobState.ERROR.value, JobState.EXPIRED.value}
BASELINE_CLIENTS = 4
BASELINE_SECONDS = 5.0
TIMEOUT = 30.0  # seconds a client waits for one answer; past it the call counts as failed


@dataclass
class Tally:
    """What one client saw; merged after the run, so no lock is needed while it plays."""

    answers: Counter = field(default_factory=Counter)  # "2xx", "4xx"...
    codes: Counter = field(default_factory=Counter)  # "GET /v1/jobs/{id} 404 404.job"...
    failures: Counter = field(default_factory=Counter)  # connection errors and timeouts, by kind
    polls: list[tuple[float, float]] = field(default_factory=list)  # (moment, seconds)
    moments: list[float] = field(default_factory=list)  # when each answer came
    jobs: set[str] = field(default_factory=set)  # job ids answered in a 202
    accepted: int = 0  # 202s to job-creating calls (a duplicate returns the job already queued)
    vanished: set[str] = field(default_factory=set)  # jobs a poll answered 404 for

    def merge(self, other: Tally) -> None:
        for mine, theirs in ((self.answers, other.answers), (self.codes, other.codes),
                             (self.failures, other.failures)):
            mine.update(theirs)
        self.polls += other.polls
        self.moments += other.moments
        self.jobs |= other.jobs
        self.vanished |= other.vanished
        self.accepted += other.accepted

    @property
    def requests(self) -> int:
        return sum(self.answers.values()) + sum(self.failures.values())


class Client:
    """One API user: its own connection, its own seeded choices, its own tally."""

    def __init__(self, base: str, headers: dict[str, str], rng: random.Random):
        self.api = Api(base, headers)
        self.rng = rng
        self.tally = Tally()

    def call(self, method: str, path: str, route: str, **kwargs) -> tuple[int, dict] | None:
        started = time.perf_counter()
        try:
            response = self.api.session.request(method, f"{self.api.base}{path}",
                                                timeout=TIMEOUT, **kwargs)
        except requests.RequestException as exc:
            self.tally.failures[f"{method} {route}: {type(exc).__name__}"] += 1
            return None
        took = time.perf_counter() - started
        status = response.status_code
        self.tally.moments.append(time.monotonic())
        self.tally.answers[f"{status // 100}xx"] += 1
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text[:200]}
        if status >= 300:
            code = (body.get("error") or {}).get("code", "-") if isinstance(body, dict) else "-"
            self.tally.codes[f"{method} {route} {status} {code}"] += 1
        elif method == "GET" and route == "/v1/jobs/{id}":
            self.tally.polls.append((time.monotonic(), took))
        return status, body

    def poll(self, job_id: str, interval: tuple[float, float], until: Callable[[], float]
             ) -> str | None:
        """Poll the job until it is terminal (its state), or the moment `until()` says passes."""
        while time.monotonic() < until():
            answer = self.call("GET", f"/v1/jobs/{job_id}", "/v1/jobs/{id}")
            if answer is not None and answer[0] == 200:
                state = answer[1]["data"]["state"]["current"]
                if state in TERMINAL:
                    return state
            elif answer is not None and answer[0] == 404:
                self.tally.vanished.add(job_id)
                return None
            time.sleep(self.rng.uniform(*interval))
        return None


@dataclass
class Crowd:
    """The images the clients share, and what makes a job: mostly re-imports of a shared image
    (so duplicates of jobs still queued are common), sometimes a new image imported or built."""

    base: str
    headers: dict[str, str]
    contexts: ContextServer
    sources: dict[str, str]  # kind -> source id
    images: list[HarnessImage] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop_creating: threading.Event = field(default_factory=threading.Event)
    drain_until: float = float("inf")  # set once creating stops: the last polls end by then
    new_image_share: float = 0.15
    build_share: float = 0.2  # of new images

    def make_image(self, client: Client, kind: str, label: str) -> HarnessImage | None:
        body: dict = {"source_id": self.sources[kind]}
        if kind == "build":
            body["override"] = {"targz_url": self.contexts.context(label, 0)}
        answer = client.call("POST", "/v1/images", "/v1/images", json=body)
        if answer is None or answer[0] != 201:
            return None
        image = HarnessImage(answer[1]["data"]["id"], kind, self.sources[kind])
        with self.lock:
            self.images.append(image)
        return image

    def import_job(self, client: Client, image: HarnessImage) -> str | None:
        answer = client.call("POST", f"/v1/images/{image.id}/tasks", "/v1/images/{id}/tasks",
                             json={"action": "import"})
        if answer is None or answer[0] != 202:
            return None
        with self.lock:
            image.import_requests += 1
        client.tally.accepted += 1
        job_id = answer[1]["data"]["job"]["id"]
        client.tally.jobs.add(job_id)
        return job_id

    def play(self, number: int, client: Client) -> None:
        try:
            self._play(number, client)
        except Exception as exc:  # an answer the client could not read fails the run, loudly
            client.tally.failures[f"the client itself: {exc!r}"[:200]] += 1

    def _play(self, number: int, client: Client) -> None:
        """Create a job, poll it to its end, again, until told to stop; then finish the last."""
        rng = client.rng
        time.sleep(rng.uniform(0, 1.0))  # everyone at once, within a second
        made = 0
        while not self.stop_creating.is_set():
            if rng.random() < self.new_image_share:
                made += 1
                kind = "build" if rng.random() < self.build_share else "import"
                image = self.make_image(client, kind, f"crowd-{number}-{made}")
            else:
                with self.lock:
                    image = rng.choice(self.images)
            job_id = self.import_job(client, image) if image else None
            if job_id is None:
                time.sleep(rng.uniform(0.5, 1.5))
                continue
            client.poll(job_id, (0.5, 1.5), lambda: self.drain_until)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=60, help="how long clients create jobs")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes (concurrency 2)")
    parser.add_argument("--drain-timeout", type=float, default=600,
                        help="seconds after the load for every job to end")
    args = parser.parse_args(argv)
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


def fresh_database() -> dict[str, str]:
    """An empty imagejobs_crowd and Redis db 4; the headers of a new hub's key."""
    recreate_database(DATABASE)
    migrations.upgrade()
    client = redis.Redis.from_url(REDIS_URL)  # this harness's own db only
    client.flushdb()
    client.close()
    with transaction() as session:
        hub = create_hub(session, "crowd")
        _, secret = create_key(session, hub.id, "crowd")
        return {"Authorization": f"Bearer {secret}", "X-Hub-Id": hub.id}


def make_sources(client: Client, contexts: ContextServer) -> dict[str, str]:
    build_origin = {"type": "docker-file",
                    "details": {"targz_url": contexts.context("crowd-default", 0)}}
    return {kind: client.api.data("POST", "/v1/images/sources", json={
        "name": f"crowd-{kind}", "type": "direct", "origin": origin})["id"]
        for kind, origin in (("import", REGISTRY_ORIGIN), ("build", build_origin))}


def baseline(crowd: Crowd, rng: random.Random) -> Tally:
    """Poll latency with a few clients and idle workers, on a job that already ended."""
    warm = Client(crowd.base, crowd.headers, random.Random(rng.random()))
    image = crowd.make_image(warm, "import", "warm")
    job_id = crowd.import_job(warm, image) if image else None
    deadline = time.monotonic() + 120
    if job_id is None or warm.poll(job_id, (0.1, 0.1), lambda: deadline) is None:
        raise RuntimeError(f"the first import did not end: {warm.tally}")
    clients = [Client(crowd.base, crowd.headers, random.Random(rng.random()))
               for _ in range(BASELINE_CLIENTS)]
    until = time.monotonic() + BASELINE_SECONDS

    def keep_polling(client: Client) -> None:
        while time.monotonic() < until:
            client.call("GET", f"/v1/jobs/{job_id}", "/v1/jobs/{id}")
            time.sleep(client.rng.uniform(0.02, 0.05))

    threads = [threading.Thread(target=keep_polling, args=(c,)) for c in clients]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    total = Tally()
    for client in clients:
        total.merge(client.tally)
    return total


@dataclass
class Saturation:
    """Jobs queued and running, sampled from Postgres once a second while the crowd plays."""

    samples: list[tuple[int, int]] = field(default_factory=list)  # (queued, running)

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(1.0):
            with transaction() as session:
                states = dict(session.execute(select(Job.state, func.count()).where(
                    Job.state.in_((JobState.QUEUED, JobState.RUNNING))).group_by(Job.state)).all())
            self.samples.append((states.get(JobState.QUEUED, 0), states.get(JobState.RUNNING, 0)))

    def describe(self, slots: int) -> str:
        if not self.samples:
            return "no samples"
        full = sum(1 for _, running in self.samples if running >= slots)
        backlog = sum(1 for queued, _ in self.samples if queued > 0)
        return (f"{len(self.samples)} samples: all {slots} worker slots busy in {full} "
                f"({100 * full / len(self.samples):.0f}%), jobs waiting in {backlog} "
                f"({100 * backlog / len(self.samples):.0f}%), most queued "
                f"{max(q for q, _ in self.samples)}, median queued "
                f"{statistics.median(q for q, _ in self.samples):.0f}")


@dataclass
class Meter:
    """CPU seconds spent by the harness, the API, the workers, this database's Postgres backends
    and the whole machine, and where the API's access log stood: read at the start and the end of
    the load, then compared process by process (one that ended in between is not counted)."""

    stack: Stack
    start: dict[str, dict[int, float]] = field(default_factory=dict)
    end: dict[str, dict[int, float]] = field(default_factory=dict)
    log_span: list[int] = field(default_factory=list)  # bytes of the API log at start, end

    def read(self) -> dict[str, dict[int, float]]:
        assert self.stack.api is not None
        self.log_span.append(self.stack.api.log_path.stat().st_size)
        harness = os.times()
        with open("/proc/stat") as stat:  # cpu user nice system idle iowait irq softirq steal
            ticks = [int(t) for t in stat.readline().split()[1:9]]
        with transaction() as session:
            backends = list(session.scalars(text(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database()")))
        return {"harness": {0: harness.user + harness.system},
                "api": _cpu_seconds(group_members(self.stack.api.pid)),
                "workers": _cpu_seconds([p for w in self.stack.running()
                                         for p in group_members(w.pid)]),
                "postgres": _cpu_seconds(backends),
                "machine": {0: (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")}}

    def describe(self, seconds: float) -> str:
        used = {name: sum(cpu - self.start[name].get(pid, 0.0) for pid, cpu in pids.items())
                / seconds for name, pids in self.end.items()}
        rest = used.pop("machine") - sum(used.values())
        return (f"CPU during the load, in cores of {os.cpu_count()}: harness (the clients) "
                f"{used['harness']:.2f}, API {used['api']:.2f}, workers {used['workers']:.2f}, "
                f"Postgres for them {used['postgres']:.2f}, the rest (dockerd, registry, "
                f"other work on the machine) {rest:.2f}")

    def handler_seconds(self) -> list[float]:
        """How long the API itself took on each poll during the load (gunicorn's %(L)s), which
        leaves out the wait for a free thread and the clients' own."""
        assert self.stack.api is not None
        with open(self.stack.api.log_path, "rb") as log:
            log.seek(self.log_span[0])
            lines = log.read(self.log_span[1] - self.log_span[0]).decode(errors="replace")
        return [float(line.rsplit(" ", 1)[1].rstrip("s")) for line in lines.splitlines()
                if '"GET /v1/jobs/' in line and line.endswith("s")]


def _cpu_seconds(pids: list[int]) -> dict[int, float]:
    found = {}
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as stat:
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[pid] = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime
    return found


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    if not ordered:
        return {}

    def at(share: float) -> float:
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]

    return {"p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": ordered[-1]}


def play(crowd: Crowd, meter: Meter, clients: int, seconds: float, seed: int,
         drain_timeout: float) -> tuple[Tally, float, Saturation]:
    """The crowd: `clients` threads for `seconds`, then until their last jobs end."""
    players = [Client(crowd.base, crowd.headers, random.Random(f"{seed}-{n}"))
               for n in range(clients)]
    saturation, stop_sampling = Saturation(), threading.Event()
    sampler = threading.Thread(target=saturation.run, args=(stop_sampling,), daemon=True)
    threads = [threading.Thread(target=crowd.play, args=(n, c), daemon=True)
               for n, c in enumerate(players)]
    meter.start = meter.read()
    started = time.monotonic()
    sampler.start()
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, started + seconds - time.monotonic()))
    loaded = time.monotonic() - started
    meter.end = meter.read()
    crowd.drain_until = time.monotonic() + drain_timeout
    crowd.stop_creating.set()
    stop_sampling.set()
    for thread in threads:
        thread.join(max(0.1, crowd.drain_until + TIMEOUT - time.monotonic()))
    total = Tally()
    for client in players:
        total.merge(client.tally)
    # Only answers given while jobs were still being created count as "under load".
    total.polls = [(moment, took) for moment, took in total.polls if moment <= started + loaded]
    total.moments = [moment for moment in total.moments if moment <= started + loaded]
    return total, loaded, saturation


def print_figures(args: argparse.Namespace, base: Tally, load: Tally, loaded: float,
                  saturation: Saturation, meter: Meter, report: Report, missing: set[str],
                  all_ended: float) -> list[str]:
    """Print the run's figures; return what failed (empty: the run passed)."""
    before = percentiles([took for _, took in base.polls])
    under = percentiles([took for _, took in load.polls])
    print(f"\nbaseline ({BASELINE_CLIENTS} clients, idle workers): {len(base.polls)} polls, "
          + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in before.items()))
    print(f"\n=== seed {args.seed} ===")
    print(f"clients {args.clients}, workers {args.workers} (x2), load {loaded:.1f} s")
    print(f"workers saturated: {saturation.describe(args.workers * 2)}")
    print(meter.describe(loaded))
    print(f"requests made {load.requests}: " + ", ".join(
        f"{k} {v}" for k, v in sorted(load.answers.items())))
    for what, count in sorted(load.codes.items()):
        print(f"  {count:6d}  {what}")
    fivexx = load.answers.get("5xx", 0)
    failures = sum(load.failures.values())
    print(f"5xx {fivexx}, connection errors and timeouts {failures}")
    for what, count in sorted(load.failures.items()):
        print(f"  {count:6d}  {what}")
    print(f"jobs created {report.created}, {len(load.jobs)} of them by the crowd, whose "
          f"{load.accepted} answers 202 named them (the rest were duplicates of a job still "
          f"unfinished)")
    terminal = report.completed + report.errored + report.expired
    print(f"jobs terminal at the end {terminal}: completed {report.completed}, errored "
          f"{report.errored}, expired {report.expired}")
    for message, count in report.errors.most_common(8):
        print(f"  {count:6d}  {message}")
    lost = len(report.lost) + len(missing)
    print(f"lost {lost} (unfinished in Postgres {len(report.lost)}, answered in a 202 but unknown "
          f"or 404 {len(missing)}); stuck images {len(report.stuck)}; done twice "
          f"{len(report.twice)}")
    for line in [*report.lost, *sorted(missing), *report.stuck, *report.twice][:20]:
        print(f"  {line}")
    ratios = ", ".join(f"{k} {v * 1000:.1f} ms ({v / before[k]:.1f}x)" for k, v in under.items()
                       if before.get(k))
    print(f"poll latency under load ({len(load.polls)} polls): {ratios}")
    print("  of which in the API's handler: " + ", ".join(
        f"{k} {v * 1000:.1f} ms" for k, v in percentiles(meter.handler_seconds()).items()))
    print(f"throughput under load: {len(load.moments) / loaded:.0f} answers/s, "
          f"{len(load.polls) / loaded:.0f} polls/s; jobs: every one ended {all_ended:.0f} s after "
          f"the crowd started, {report.completed / all_ended:.1f} completed/s")
    problems = [f"{fivexx} answers 5xx"] * bool(fivexx)
    problems += [f"{failures} connection errors or timeouts"] * bool(failures)
    problems += [f"{lost} jobs lost"] * bool(lost)
    problems += [f"{len(report.stuck)} images stuck"] * bool(report.stuck)
    problems += [f"{len(report.twice)} effects done twice"] * bool(report.twice)
    print("verdict:", "FAIL: " + "; ".join(problems) if problems else "ok")
    return problems


def missing_jobs(load: Tally) -> set[str]:
    """Jobs answered in a 202 that Postgres does not hold, or that a poll answered 404 for."""
    with transaction() as session:
        known = set(session.scalars(select(Job.id).where(Job.id.in_(load.jobs))))
    return {f"job {j}: answered in a 202, not in Postgres" for j in load.jobs - known} | {
        f"job {j}: a poll answered 404" for j in load.vanished}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"seed {args.seed}", flush=True)
    rng = random.Random(args.seed)
    headers = fresh_database()
    stack = Stack(args.workers, log_prefix=f"crowd-{args.seed}")
    with tempfile.TemporaryDirectory(prefix="imagejobs-crowd-") as scratch:
        contexts = ContextServer(Path(scratch))
        try:
            base = stack.start_api()
            stack.start_workers()
            setup = Client(base, headers, random.Random(rng.random()))
            crowd = Crowd(base, headers, contexts, make_sources(setup, contexts))
            for number in range(max(8, args.clients // 4)):
                kind = "build" if number % 8 == 7 else "import"
                if crowd.make_image(setup, kind, f"crowd-pool-{number}") is None:
                    raise RuntimeError(f"could not make the shared images: {setup.tally}")
            before = baseline(crowd, rng)
            print(f"baseline measured; {args.clients} clients start, creating jobs for "
                  f"{args.seconds:g} s", flush=True)
            meter = Meter(stack)
            began = time.monotonic()
            load, loaded, saturation = play(crowd, meter, args.clients, args.seconds, args.seed,
                                            args.drain_timeout)
            print(f"load done after {loaded:.1f} s; waiting for every job to end", flush=True)
            report = Report(args.seed)
            report.settle_seconds = wait_terminal(time.monotonic(), args.drain_timeout)
            all_ended = time.monotonic() - began
            count_jobs(report)
            check_stuck(report)
            check_effects(report, crowd.images)
            problems = print_figures(args, before, load, loaded, saturation, meter, report,
                                     missing_jobs(load), all_ended)
        finally:
            stack.close()
            contexts.close()
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
