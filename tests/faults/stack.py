"""The processes under test: one API and N workers, each in its own process group, all stopped at
the end whatever happened (orphaned pool children included)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.processes import children

ROOT = Path(__file__).resolve().parents[2]
LOGS = ROOT / ".test-logs"


@dataclass
class Managed:
    """One `imagejobs` process; `expected_exit` once the harness has killed or stopped it."""

    name: str
    popen: subprocess.Popen
    log_path: Path
    expected_exit: bool = False

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getpgid(int(entry.name)) == pgid:
                    members.append(int(entry.name))
            except OSError:
                continue
    return members


@dataclass
class Stack:
    worker_count: int
    log_prefix: str = "faults"  # logs go to .test-logs/<prefix>-<process>.log
    concurrency: int = 2
    api: Managed | None = None
    base: str = ""
    workers: list[Managed] = field(default_factory=list)  # every worker ever started
    started: int = 0

    def _spawn(self, name: str, *args: str) -> Managed:
        LOGS.mkdir(exist_ok=True)
        log_path = LOGS / f"{self.log_prefix}-{name}.log"
        with open(log_path, "w") as log:
            popen = subprocess.Popen([sys.executable, "-m", "app.cli", *args], stdout=log,
                                     stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ,
                                     start_new_session=True)  # Ctrl-C reaches only the harness
        return Managed(name, popen, log_path)

    def start_api(self) -> str:
        port = free_port()
        self.api = self._spawn("api", "api", "--port", str(port), "--workers", "2")
        self.base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while not _healthy(self.base):
            if not self.api.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the API did not start:\n{self.api.log_path.read_text()[-3000:]}")
            time.sleep(0.3)
        return self.base

    def start_worker(self, wait: bool = True) -> Managed:
        self.started += 1
        worker = self._spawn(f"worker-{self.started}", "worker", "--concurrency",
                             str(self.concurrency))
        self.workers.append(worker)
        if wait:
            wait_ready(worker)
        return worker

    def start_workers(self) -> None:
        for worker in [self.start_worker(wait=False) for _ in range(self.worker_count)]:
            wait_ready(worker)

    def running(self) -> list[Managed]:
        return [w for w in self.workers if w.alive() and not w.expected_exit]

    def crashed(self) -> list[Managed]:
        """Workers that exited although the harness never touched them."""
        return [w for w in self.workers if not w.alive() and not w.expected_exit]

    def replace_crashed(self) -> list[Managed]:
        crashed = [w for w in self.crashed() if not getattr(w, "replaced", False)]
        for worker in crashed:
            worker.replaced = True  # type: ignore[attr-defined]
            self.start_worker()
        return crashed

    def signal_worker(self, worker: Managed, sig: signal.Signals, with_children: bool = False
                      ) -> None:
        pids = [worker.pid, *(children(worker.pid) if with_children else [])]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop_workers(self, timeout: float = 40) -> None:
        """SIGTERM (Celery's cold shutdown, see `imagejobs worker`) every running worker."""
        stopping = self.running()
        for worker in stopping:
            worker.expected_exit = True
            worker.popen.terminate()
        deadline = time.monotonic() + timeout
        for worker in stopping:
            try:
                worker.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.popen.wait()

    def orphans(self) -> list[int]:
        """Processes still alive in the group of a worker whose main process is gone."""
        return [pid for w in self.workers if not w.alive() for pid in group_members(w.pid)]

    def close(self) -> None:
        """Stop everything this stack started: politely, then by force, group by group."""
        everyone = [*self.workers, *([self.api] if self.api else [])]
        for process in everyone:
            process.expected_exit = True
            if process.alive():
                _signal_group(process.pid, signal.SIGCONT)  # a frozen worker cannot stop
                _signal_group(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        for process in everyone:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
        for process in everyone:
            _signal_group(process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=5)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def wait_ready(worker: Managed, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while "ready." not in worker.log_path.read_text(errors="replace"):
        if not worker.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"worker {worker.name} did not start:\n"
                               f"{worker.log_path.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def _healthy(base: str) -> bool:
    try:
        return requests.get(f"{base}/v1/health", timeout=5).ok
    except requests.RequestException:
        return False
