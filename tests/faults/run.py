"""Fault injection run: a mixed load on one API and N workers while faults land, then the verdict.

    python -m tests.faults.run [--seed N] [--jobs N] [--workers N] [--faults LIST]

Exits 1 when a job was lost, an effect was done twice (or the engine disagrees with Postgres),
or an image was left in between states; errored jobs are fine when their message says why.

The run starts its own Redis (reached through a proxy the broker faults cut) and its own Postgres
(`tests.faults.services`), and stops them at the end. The environment pointing there (short
leases, a short visibility timeout) is set by the package `tests.faults`, which Python imports
before this module, so before any `app` module reads it.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from app import migrations
from app.db import transaction
from app.hubs.services import create_hub, create_key
from app.images.services import import_image
from tests.faults import DATABASE, VISIBILITY_TIMEOUT
from tests.faults.checks import (
    Report,
    check_effects,
    check_long_builds,
    check_stuck,
    count_jobs,
    grep_logs,
    scan_crashes,
    wait_terminal,
)
from tests.faults.faults import CUT_SECONDS, KINDS, Injector, plan_faults
from tests.faults.load import (
    Api,
    ContextServer,
    HarnessImage,
    Load,
    plan_load,
    wait_plan_seconds,
)
from tests.faults.services import Services
from tests.faults.stack import Stack


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument("--jobs", type=int, default=40, help="job-creating API calls to make")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--faults", default=",".join(KINDS),
                        help=f"comma-separated kinds (default: all): {', '.join(KINDS)}")
    parser.add_argument("--settle-timeout", type=float, default=180,
                        help="seconds after the last fault for every job to end")
    parser.add_argument("--log-prefix", default=None,
                        help="logs go to .test-logs/PREFIX-<process>.log (default: faults-SEED)")
    parser.add_argument("--cut-seconds", default=",".join(f"{s:g}" for s in CUT_SECONDS),
                        help="MIN,MAX: how long cut-broker keeps the broker away (default "
                             "%(default)s)")
    args = parser.parse_args(argv)
    try:
        low, high = (float(s) for s in args.cut_seconds.split(","))
    except ValueError:
        parser.error("--cut-seconds takes MIN,MAX in seconds")
    args.cut_seconds = (low, high)
    args.faults = [k.strip() for k in args.faults.split(",") if k.strip()]
    unknown = sorted(set(args.faults) - set(KINDS))
    if unknown:
        parser.error(f"unknown fault kind(s) {', '.join(unknown)}; choose from {', '.join(KINDS)}")
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1_000_000)
    return args


def fresh_database(services: Services) -> None:
    services.postgres.create_database(DATABASE)
    migrations.upgrade()


def make_tenant() -> tuple[dict[str, str], dict[str, str]]:
    """Headers for the API, and the creator a job made behind the API's back names."""
    with transaction() as session:
        hub = create_hub(session, "faults")
        key, secret = create_key(session, hub.id, "faults")
        return ({"Authorization": f"Bearer {secret}", "X-Hub-Id": hub.id},
                {"hub_id": hub.id, "id": key.id, "type": "api-key"})


def orphan_maker(load: Load, tenant: dict[str, str]):
    """'The API died between commit and publish': a committed import nobody ever publishes."""

    def make() -> str:
        source_id = load.sources["import"][0]
        image = load.api.data("POST", "/v1/images", json={"source_id": source_id})
        with transaction() as session:
            job = import_image(session, tenant["hub_id"],
                               {"id": tenant["id"], "type": tenant["type"]}, image["id"])
            job_id = job.id
        load.images.append(HarnessImage(image["id"], "import", source_id, import_requests=1))
        return job_id

    return make


def print_plan(load: Load, injector: Injector) -> None:
    print("The seed fixes the sequence of actions and faults below; their timing (and so what a "
          "delete hits, which worker a fault lands on, how jobs interleave) differs run to run.")
    kinds = {}
    for action in load.plan:
        kinds[action.kind] = kinds.get(action.kind, 0) + 1
    print(f"load plan: {len(load.plan)} calls {kinds}, over about "
          f"{wait_plan_seconds(load.plan):.0f} s")
    for fault in injector.schedule:
        print(f"  fault plan: {fault.describe()}")
    sys.stdout.flush()


def play(stack: Stack, load: Load, injector: Injector) -> None:
    stop = threading.Event()
    started = time.monotonic()
    threads = [threading.Thread(target=load.run, args=(stop,), name="load"),
               threading.Thread(target=injector.run, args=(started, stop), name="faults")]
    for thread in threads:
        thread.start()
    try:
        for thread in threads:
            while thread.is_alive():
                thread.join(0.5)
                if load.error or injector.error:
                    stop.set()
    except BaseException:
        stop.set()
        for thread in threads:
            thread.join(60)
        raise
    for failure in (load.error, injector.error):
        if failure is not None:
            raise RuntimeError(f"the harness itself failed: {failure!r}") from failure
    injector._replace_crashed()
    print(f"load and faults done after {time.monotonic() - started:.1f} s")


def judge(seed: int, stack: Stack, load: Load, injector: Injector, timeout: float) -> Report:
    report = Report(seed)
    since = injector.last_fault_end or time.monotonic()
    report.settle_seconds = wait_terminal(since, timeout)
    count_jobs(report)
    check_stuck(report)
    check_effects(report, load.images)
    logs = [w.log_path for w in stack.workers]
    check_long_builds(report, load.images, logs, VISIBILITY_TIMEOUT)
    report.crashes = [f"worker {w.name} exited by itself ({w.popen.returncode})"
                      for w in stack.crashed()] + scan_crashes(logs)
    orphans = stack.orphans()
    if orphans:
        report.notes.append(f"{len(orphans)} pool children of killed workers still alive at the "
                            f"end: {orphans}")
    return report


def print_report(report: Report, load: Load, injector: Injector, stack: Stack) -> None:
    print("\nfaults injected (journal):")
    for line in injector.journal:
        print(f"  {line}")
    print("\napi answers:")
    for key, count in sorted(load.answers.items()):
        print(f"  {count:4d}  {key}")
    print(f"\n=== seed {report.seed} ===")
    print(report.summary())
    for kind in KINDS:
        if injector.injected[kind] or injector.skipped[kind]:
            print(f"  fault {kind:24s} injected {injector.injected[kind]}"
                  + (f" (skipped {injector.skipped[kind]})" if injector.skipped[kind] else ""))
    print("jobs by attempts (claims): " + ", ".join(
        f"{n} attempt(s): {c}" for n, c in sorted(report.attempts.items())))
    print(f"builds longer than the {VISIBILITY_TIMEOUT} s visibility timeout: "
          f"{len(report.long_builds)}; broker messages run twice or more: "
          f"{report.redelivered}; a long build's claimed message delivered again and refused: "
          f"{report.redelivered_refused}")
    for line in report.long_builds:
        print(f"  {line}")
    if report.errors:
        print("error messages (first 80 characters):")
        for message, count in report.errors.most_common():
            print(f"  {count:4d}  {message}")
    logs = [w.log_path for w in stack.workers]
    for title, items in (("LOST", report.lost), ("DONE TWICE / ENGINE DISAGREES", report.twice),
                         ("STUCK", report.stuck)):
        for item in items:
            print(f"{title}: {item}")
            subject = item.split()[1]
            for line in grep_logs(logs, subject):
                print(f"    {line}")
    for line in report.crashes:
        print(f"crash: {line}")
    for note in report.notes:
        print(f"note: {note}")
    print("verdict:", "FAIL" if report.failed else "ok")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Stopped by SIGTERM (a timeout, CI): unwind like Ctrl-C, so every process and private
    # service this run started is stopped too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    print(f"seed {args.seed}", flush=True)
    rng = random.Random(args.seed)
    plan = plan_load(rng, args.jobs)
    schedule = plan_faults(rng, args.faults, max(len(args.faults), args.jobs // 5),
                           wait_plan_seconds(plan), args.cut_seconds)
    stack = Stack(args.workers, log_prefix=args.log_prefix or f"faults-{args.seed}")
    with tempfile.TemporaryDirectory(prefix="imagejobs-faults-") as scratch, Services() as services:
        print(f"private services: redis-server on :{services.redis.port} (the API and workers go "
              f"through a proxy on :{services.proxy.port}), Postgres on "
              f":{services.postgres.port}", flush=True)
        fresh_database(services)
        headers, tenant = make_tenant()
        contexts = ContextServer(Path(scratch))
        try:
            api = Api(stack.start_api(), headers)
            load = Load(api, contexts, plan)
            injector = Injector(stack, schedule, [], orphan_maker(load, tenant), services)
            print_plan(load, injector)
            stack.start_workers()
            load.make_sources()
            play(stack, load, injector)
            report = judge(args.seed, stack, load, injector, args.settle_timeout)
            print_report(report, load, injector, stack)
        finally:
            stack.close()
            contexts.close()
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
