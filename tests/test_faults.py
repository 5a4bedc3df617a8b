"""A short fault-injection run (tests/faults) inside the suite: every fault kind at least once,
on the harness's own Redis and Postgres, then its verdict.

`make faults` runs longer ones; this one keeps the broker cut short so the suite stays quick.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.services import ROOT

# Not imported from tests.faults: importing that package points this process's environment (and
# so every later test's child processes) at the harness's private services.
KINDS = ("kill-worker", "kill-pool-child", "freeze-worker", "stop-all-workers", "flush-redis",
         "commit-without-publish", "restart-redis", "restart-postgres", "cut-broker")

pytestmark = pytest.mark.docker

SEED = 20261128
LOG = ROOT / ".test-logs" / "faults-suite-run.log"


def harness_environment() -> dict[str, str]:
    """The suite's own settings left out: the harness sets its own, for its private services."""
    return {name: value for name, value in os.environ.items()
            if not name.startswith("IMAGEJOBS_") and name not in ("DATABASE_URL", "REDIS_URL")}


def test_every_fault_kind_loses_no_job_and_does_nothing_twice():
    LOG.parent.mkdir(exist_ok=True)
    with open(LOG, "w") as log:
        # The timeout only stops a hung run; it asserts nothing about speed.
        result = subprocess.run(
            [sys.executable, "-m", "tests.faults.run", "--seed", str(SEED), "--jobs", "12",
             "--workers", "2", "--cut-seconds", "10,12", "--log-prefix", "faults-suite"],
            cwd=ROOT, env=harness_environment(), stdout=log, stderr=subprocess.STDOUT,
            timeout=900)
    output = LOG.read_text(errors="replace")
    tail = f"\n--- {LOG} (end) ---\n{output[-6000:]}"
    assert result.returncode == 0, tail
    summary = re.search(r"^jobs created (\d+), .*$", output, re.MULTILINE)
    assert summary, tail
    assert "lost 0, done twice 0, stuck images 0," in summary.group(0), tail
    assert int(summary.group(1)) > 0, tail
    planned = set(re.findall(r"fault plan: (\S+) at", output))
    assert planned >= set(KINDS), tail
    for kind in planned:
        assert re.search(rf"fault {kind} +injected [1-9]", output), f"{kind} never landed{tail}"
    assert "verdict: ok" in output, tail
