"""The `follow` row: the poll rate of one API process under wrk, alone and with 500 followers
waiting on it (long polls of jobs and Server-Sent Event streams of hubs), and how soon after a
job's change commits in Postgres a follower of each kind sees it."""

from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

from sqlalchemy import text

from app.db import new_id, transaction
from tests.benchmarks.bare_insert import INSERT_JOB
from tests.benchmarks.bench_http import CONNECTIONS, POLL_SECONDS, need_wrk, poll_rate, serving
from tests.benchmarks.harness import ROOT, new_key, started, wait_until

# Half long polls, one per job, and half event streams, a few per hub: the two ways to follow
# cost the API differently (a request per change or timeout; a read per event of the hub).
HUBS, JOBS_PER_HUB, STREAMS_PER_HUB = 50, 5, 5
CHANGES_PER_SECOND, CHANGE_SECONDS = 20, 15
TARGET = 0.8
# A real change of the job's document (and a `job.state.changed` event of its hub), as a worker's
# claim or a lapsed lease makes; no worker runs, so nothing else changes these jobs.
TOGGLE = text("UPDATE jobs SET state = CASE state WHEN 'queued' THEN 'running' ELSE 'queued' "
              "END, state_changed = now() WHERE id = :id")


def following() -> tuple[list[dict], list[str], tuple[str, str, str]]:
    """Hubs with jobs to follow: the followers' plan, the followed jobs, and (hub id, secret,
    job id) of a job nobody follows for wrk to poll."""
    plan, job_ids = [], []
    with transaction() as session:
        def job(hub_id: str) -> str:
            job_id = new_id()
            session.execute(text(INSERT_JOB), {
                "id": job_id, "hub": hub_id, "action": "image.import", "subject": None,
                "input": "{}", "state": "queued", "attempt": 0})
            return job_id

        polled = new_key("follow-poll")
        polled_job = job(polled[0])
        for number in range(HUBS):
            hub_id, secret = new_key(f"follow-{number}")
            for _ in range(JOBS_PER_HUB):
                job_ids.append(job(hub_id))
                plan.append({"kind": "poll", "hub_id": hub_id, "secret": secret,
                             "job_id": job_ids[-1]})
            plan += [{"kind": "sse", "hub_id": hub_id, "secret": secret}] * STREAMS_PER_HUB
    return plan, job_ids, (*polled, polled_job)


def change(job_ids: list[str]) -> dict[str, list[float]]:
    """Change the jobs in turn at CHANGES_PER_SECOND; each job's commit times (wall clock, when
    the commit returned)."""
    commits: dict[str, list[float]] = defaultdict(list)
    begin = time.time() + 0.1
    for index in range(CHANGES_PER_SECOND * CHANGE_SECONDS):
        time.sleep(max(0.0, begin + index / CHANGES_PER_SECOND - time.time()))
        job_id = job_ids[index % len(job_ids)]
        with transaction() as session:
            session.execute(TOGGLE, {"id": job_id})
        commits[job_id].append(time.time())
    return commits


def delays(seen: list[list], commits: dict[str, list[float]]) -> dict[str, list[float]]:
    """Milliseconds from commit to seen, by kind of follower: a follower's Nth sighting of a job
    is the job's Nth change."""
    sightings: dict[tuple, int] = defaultdict(int)
    found: dict[str, list[float]] = defaultdict(list)
    for kind, follower, job_id, at in sorted(seen, key=lambda sighting: sighting[3]):
        nth = sightings[kind, follower, job_id]
        sightings[kind, follower, job_id] += 1
        if nth < len(commits.get(job_id, ())):
            found[kind].append((at - commits[job_id][nth]) * 1000)
    return found


def cpu_seconds(pid: int) -> float:
    """User and system time of process `pid` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def latency(kind: str, found: dict[str, list[float]], expected: int) -> str:
    values = found.get(kind, [])
    if len(values) < 2:
        return f"seen {len(values)} of {expected}"
    cuts = statistics.quantiles(values, n=100)
    return f"p50 {cuts[49]:.1f} ms, p99 {cuts[98]:.1f} ms (seen {len(values):,} of {expected:,})"


def follow_row() -> None:
    plan, job_ids, (hub_id, secret, polled_job) = following()
    headers = {"Authorization": f"Bearer {secret}", "X-Hub-Id": hub_id}
    with serving("api-follow", workers=1) as base, tempfile.TemporaryDirectory() as scratch:
        url = f"{base}/v1/jobs/{polled_job}"
        alone = poll_rate(url, headers)
        plan_path, seen_path = Path(scratch, "plan.json"), Path(scratch, "seen.json")
        plan_path.write_text(json.dumps({"base": base, "followers": plan}))
        command = [sys.executable, "-m", "tests.benchmarks.followers", str(plan_path),
                   str(seen_path)]
        with started("followers", command) as followers:
            log = ROOT / ".test-logs" / "bench-followers.log"

            def ready() -> bool:
                if followers.poll() is not None:
                    raise RuntimeError(f"the followers ended with {followers.returncode} "
                                       f"(see {log})")
                return "ready" in log.read_text()

            wait_until(ready, "the followers to wait", timeout=120, interval=0.2)
            time.sleep(2)  # the last requests sent reach their wait
            cpu = cpu_seconds(followers.pid)
            begin = time.monotonic()
            crowded = poll_rate(url, headers)
            followers_cpu = (cpu_seconds(followers.pid) - cpu) / (time.monotonic() - begin)
            commits = change(job_ids)
            time.sleep(2)  # the last changes reach their followers
            followers.terminate()
            followers.wait(timeout=30)
            result = json.loads(seen_path.read_text())
    found = delays(result["seen"], commits)
    changes = CHANGES_PER_SECOND * CHANGE_SECONDS
    ratio = crowded / alone
    print(f"GET /v1/jobs/{{id}}, wrk {CONNECTIONS} connections {POLL_SECONDS} s, one API process "
          f"(gunicorn gevent, 1 worker): {crowded:,.0f} req/s with {len(plan)} followers waiting "
          f"({len(job_ids)} long polls ?wait=30 of as many jobs, {HUBS * STREAMS_PER_HUB} "
          f"Server-Sent Event streams of {HUBS} hubs; their client used {followers_cpu:.0%} of "
          f"a core); without them: {alone:,.0f} req/s; ratio {ratio:.2f} (target {TARGET}: "
          f"{'met' if ratio >= TARGET else 'not met'})")
    print(f"  a job's change committed in Postgres to seen, {CHANGES_PER_SECOND} changes/s for "
          f"{CHANGE_SECONDS} s: long poll {latency('poll', found, changes)}; Server-Sent Events "
          f"{latency('sse', found, changes * STREAMS_PER_HUB)}"
          + (f"; {result['errors']} follower answers not 200 or connections lost"
             if result["errors"] else ""))


def main() -> None:
    need_wrk()
    follow_row()
