"""The faults: a seeded schedule of kinds and moments, and the thread that injects them."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import redis

from tests.faults import LEASE_SECONDS
from tests.faults.services import Services
from tests.faults.stack import Stack, children

log = logging.getLogger("faults")

KINDS = ("kill-worker", "kill-pool-child", "freeze-worker", "stop-all-workers", "flush-redis",
         "commit-without-publish", "restart-redis", "restart-postgres", "cut-broker")
CUT_SECONDS = (10.0, 30.0)  # how long the broker stays cut off, at random in this range


@dataclass(frozen=True)
class Fault:
    kind: str
    at: float  # seconds after the load started
    target: int  # which worker / child, modulo how many there are then
    seconds: float  # how long a freeze or a stop lasts

    def describe(self) -> str:
        return f"{self.kind} at +{self.at:.1f}s target={self.target} for={self.seconds:.1f}s"


def plan_faults(rng: random.Random, kinds: list[str], count: int, span: float,
                cut_seconds: tuple[float, float] = CUT_SECONDS) -> list[Fault]:
    """Every chosen kind at least once, then random ones, at sorted random moments in the span."""
    chosen = list(kinds)
    rng.shuffle(chosen)
    chosen += [rng.choice(kinds) for _ in range(max(0, count - len(chosen)))]
    moments = sorted(round(rng.uniform(2.0, max(3.0, span)), 1) for _ in chosen)
    return [Fault(kind, at, rng.randrange(1000), _duration(rng, kind, cut_seconds))
            for kind, at in zip(chosen, moments, strict=True)]


def _duration(rng: random.Random, kind: str, cut_seconds: tuple[float, float]) -> float:
    if kind == "freeze-worker":  # longer than the lease, so another worker takes over
        return round(rng.uniform(LEASE_SECONDS + 2, LEASE_SECONDS + 8), 1)
    if kind == "stop-all-workers":
        return round(rng.uniform(3, 10), 1)
    if kind == "restart-redis":
        return round(rng.uniform(0, 2), 1)
    if kind == "restart-postgres":  # half of them a plain `pg_ctl restart`, half down a while
        return 0.0 if rng.random() < 0.5 else round(rng.uniform(1, LEASE_SECONDS / 2), 1)
    if kind == "cut-broker":
        return round(rng.uniform(*cut_seconds), 1)
    return 0.0


@dataclass
class Injector:
    stack: Stack
    schedule: list[Fault]
    orphan_jobs: list[str]  # filled by commit-without-publish: job ids the API never published
    make_orphan: object  # () -> job id
    services: Services | None = None  # the private Redis, proxy and Postgres faults restart
    injected: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    journal: list[str] = field(default_factory=list)
    last_fault_end: float = 0.0
    error: BaseException | None = None

    def run(self, started: float, stop: threading.Event) -> None:
        try:
            for fault in self.schedule:
                while not stop.wait(min(0.5, max(0.0, started + fault.at - time.monotonic()))):
                    self._replace_crashed()
                    if time.monotonic() >= started + fault.at:
                        break
                if stop.is_set():
                    return
                self.inject(fault, started)
        except BaseException as exc:
            self.error = exc

    def inject(self, fault: Fault, started: float) -> None:
        began = time.monotonic() - started
        note = getattr(self, "_" + fault.kind.replace("-", "_"))(fault)
        if note.startswith("skipped"):
            self.skipped[fault.kind] += 1
        else:
            self.injected[fault.kind] += 1
        self.last_fault_end = time.monotonic()
        self.journal.append(f"+{began:6.1f}s..+{time.monotonic() - started:.1f}s {fault.kind}: "
                            f"{note}")

    def _replace_crashed(self) -> None:
        for worker in self.stack.replace_crashed():
            self.journal.append(f"worker {worker.name} (pid {worker.pid}) exited by itself "
                                f"with {worker.popen.returncode}; started another")

    def _pick(self, fault: Fault):
        running = self.stack.running()
        return running[fault.target % len(running)] if running else None

    def _kill_worker(self, fault: Fault) -> str:
        worker = self._pick(fault)
        if worker is None:
            return "skipped (no worker running)"
        worker.expected_exit = True
        os.kill(worker.pid, signal.SIGKILL)
        worker.popen.wait()
        self.stack.start_worker()
        return f"SIGKILL {worker.name} pid {worker.pid}; started another"

    def _kill_pool_child(self, fault: Fault) -> str:
        worker = self._pick(fault)
        pool = children(worker.pid) if worker else []
        if not pool:
            return "skipped (no pool child)"
        pid = pool[fault.target % len(pool)]
        os.kill(pid, signal.SIGKILL)
        return f"SIGKILL pool child {pid} of {worker.name}"

    def _freeze_worker(self, fault: Fault) -> str:
        worker = self._pick(fault)
        if worker is None:
            return "skipped (no worker running)"
        os.killpg(worker.pid, signal.SIGSTOP)  # its group: the main process and its pool
        try:
            time.sleep(fault.seconds)
        finally:
            os.killpg(worker.pid, signal.SIGCONT)
        return f"SIGSTOP {worker.name} (and its pool) for {fault.seconds:.1f}s, then SIGCONT"

    def _stop_all_workers(self, fault: Fault) -> str:
        stopped = self.stack.running()
        stopping = time.monotonic()
        self.stack.stop_workers()
        stopped_in = time.monotonic() - stopping
        # stop_workers SIGKILLs a worker that outlives its timeout: a shutdown that hung.
        hung = [w.name for w in stopped if w.popen.returncode == -signal.SIGKILL]
        time.sleep(fault.seconds)
        self.stack.start_workers()
        return (f"SIGTERM {', '.join(w.name for w in stopped)} (all exited in {stopped_in:.1f}s"
                + (f"; {', '.join(hung)} only to SIGKILL" if hung else "") + "), "
                f"{fault.seconds:.1f}s without workers, started {self.stack.worker_count}")

    def _services(self) -> Services:
        if self.services is None:
            raise RuntimeError("this fault needs the harness's private services")
        return self.services

    def _flush_redis(self, fault: Fault) -> str:
        url = self._services().redis.url()
        client = redis.Redis.from_url(url)
        try:
            keys = client.dbsize()
            client.flushdb()
        finally:
            client.close()
        return f"FLUSHDB on {url} ({keys} keys)"

    def _restart_redis(self, fault: Fault) -> str:
        private = self._services().redis
        client = redis.Redis.from_url(private.url())
        try:
            keys = client.dbsize()
        finally:
            client.close()
        private.restart(down=fault.seconds)
        return (f"SIGKILL redis-server ({keys} keys: queues, unacked messages), "
                f"{fault.seconds:.1f}s down, started again empty")

    def _restart_postgres(self, fault: Fault) -> str:
        began = time.monotonic()
        self._services().postgres.restart(down=fault.seconds)
        how = (f"pg_ctl stop -m fast, {fault.seconds:.1f}s down, pg_ctl start" if fault.seconds
               else "pg_ctl restart -m fast")
        return f"{how} ({time.monotonic() - began:.1f}s in all)"

    def _cut_broker(self, fault: Fault) -> str:
        proxy = self._services().proxy
        closed = proxy.cut()
        try:
            time.sleep(fault.seconds)
        finally:
            proxy.resume()
        return (f"closed {closed} broker connections, refused new ones for "
                f"{fault.seconds:.1f}s, then accepted again")

    def _commit_without_publish(self, fault: Fault) -> str:
        job_id = self.make_orphan()  # type: ignore[operator]
        self.orphan_jobs.append(job_id)
        return f"job {job_id} committed, never published"
