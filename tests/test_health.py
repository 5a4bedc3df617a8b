"""`imagejobs health`: a canary through the broker tells a working worker from a deaf one."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.processes import imagejobs
from tests.services import ROOT

NODE = "canary-node"


def health(timeout: float = 5) -> subprocess.CompletedProcess:
    env = {**os.environ, "IMAGEJOBS_NODE_ID": NODE}
    return subprocess.run([sys.executable, "-m", "app.cli", "health", "--timeout", str(timeout)],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=60)


def test_a_frozen_worker_is_unhealthy_and_healthy_again_once_it_wakes(docker_client):
    env = {**os.environ, "IMAGEJOBS_NODE_ID": NODE}
    with imagejobs("health-worker", "worker", "--queues", f"imagejobs-node-{NODE}",
                   "--concurrency", "1", env=env) as (worker, log):
        deadline = time.monotonic() + 60
        while "ready." not in log.read_text():
            assert worker.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)

        alive = health()
        assert alive.returncode == 0, alive.stderr
        assert alive.stdout.startswith("healthy:") and NODE in alive.stdout

        os.kill(worker.pid, signal.SIGSTOP)  # alive as a process, consuming nothing
        try:
            deaf = health(timeout=3)
        finally:
            os.kill(worker.pid, signal.SIGCONT)
        assert deaf.returncode == 1
        assert "unhealthy" in deaf.stderr and f"imagejobs-node-{NODE}" in deaf.stderr

        awake = health(timeout=15)
        assert awake.returncode == 0, awake.stderr


def test_no_worker_at_all_is_unhealthy():
    result = subprocess.run([sys.executable, "-m", "app.cli", "health", "--queue",
                             "imagejobs-node-nobody-here", "--timeout", "1"], capture_output=True,
                            text=True, cwd=ROOT, env=os.environ, timeout=60)
    assert result.returncode == 1 and "unhealthy" in result.stderr
