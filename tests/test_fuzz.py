"""The API fuzzed from its own OpenAPI document (schemathesis), with a real API and worker.

Every operation gets made-up requests, valid and invalid by its schema, half of them aimed at
real resources (ids the fuzzer could not guess: sources, images and jobs made before the run or
by earlier requests). Every answer must be no 5xx and match what the document declares for its
operation: status, content type and body. After the run the worker must still consume from the
broker, have logged no traceback, and every job the requests made must have ended.

The API and worker run on a database and Redis db of their own (IMAGEJOBS_FUZZ_REDIS), so no
other worker of the suite takes their jobs. The worker runs with tests/loopback_only on its path:
the hosts the fuzzer invents go nowhere but loopback (see there).

`make test` runs a short, seeded run; `make fuzz` a longer one (FUZZ_EXAMPLES, FUZZ_SEED).
"""

from __future__ import annotations

import os
import random
import subprocess
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from werkzeug.exceptions import HTTPException

from app.jobs.queueing import node_queue
from tests.api_calls import registry_origin
from tests.processes import api_server, cli, imagejobs, own_database
from tests.services import TEST_DATABASE

DATABASE = f"{TEST_DATABASE}_fuzz"
REDIS_URL = os.environ.get("IMAGEJOBS_FUZZ_REDIS", "redis://127.0.0.1:6379/8")
NODE = "fuzz-node"
# Per operation and generation mode. `make test`: a short run with a fixed seed, repeatable.
EXAMPLES = int(os.environ.get("IMAGEJOBS_FUZZ_EXAMPLES") or 10)
SEED = os.environ.get("IMAGEJOBS_FUZZ_SEED") or "1729"
LOOPBACK_ONLY = Path(__file__).parent / "loopback_only"
FINAL_JOB_STATES = {"completed", "error", "expired"}


@dataclass
class Pools:
    """Real resources of the fuzzed hub, to aim requests at; the run adds what it makes."""

    source_ids: list[str] = field(default_factory=list)
    image_ids: list[str] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    upload_tokens: dict[str, str] = field(default_factory=dict)  # cycle-upload image id → token

    def learn(self, response: requests.Response) -> None:
        if response.status_code not in (201, 202):
            return
        data = response.json()["data"]
        if response.status_code == 202:
            self.job_ids.append(data["job"]["id"])
        elif "origin" in data:
            self.source_ids.append(data["id"])
        else:
            self.image_ids.append(data["id"])
            origin = data["source"]["details"]["origin"]
            if origin["type"] == "cycle-upload":
                self.upload_tokens[data["id"]] = origin["details"]["token"]


@dataclass
class Stack:
    base: str
    headers: dict[str, str] = field(repr=False)
    env: dict[str, str]
    worker: subprocess.Popen
    logs: list[Path]
    pools: Pools


@pytest.fixture(scope="module")
def stack(docker_client, tmp_path_factory) -> Iterator[Stack]:
    redis.Redis.from_url(REDIS_URL).flushdb()
    env, headers = own_database(DATABASE, {
        **os.environ, "REDIS_URL": REDIS_URL, "IMAGEJOBS_NODE_ID": NODE,
        "IMAGEJOBS_GIT_TIMEOUT": "10",
        "IMAGEJOBS_UPLOAD_DIR": str(tmp_path_factory.mktemp("fuzz-uploads"))})
    worker_env = {**env, "PYTHONPATH": os.pathsep.join(
        p for p in (str(LOOPBACK_ONLY), env.get("PYTHONPATH")) if p)}
    with imagejobs(f"fuzz-worker-{TEST_DATABASE}", "worker", "--concurrency", "4",
                   env=worker_env) as (worker, worker_log), \
            api_server(f"fuzz-api-{TEST_DATABASE}", env=env) as base:
        cli(env, "health", "--timeout", "60")  # the worker consumes
        yield Stack(base, headers, env, worker, [worker_log, worker_log.with_name(
            f"fuzz-api-{TEST_DATABASE}.log")], real_resources(base, headers))


def real_resources(base: str, headers: dict[str, str]) -> Pools:
    """A source of each kind the worker acts on, an image of some, and an import of one."""
    pools = Pools()
    for origin in (registry_origin("library/busybox:latest"),
                   # Nothing listens on port 9: the build's fetch fails, as it should.
                   {"type": "docker-file",
                    "details": {"targz_url": "http://127.0.0.1:9/context.tar.gz"}},
                   {"type": "cycle-upload"}, {"type": "none"}):
        pools.learn(requests.post(f"{base}/v1/images/sources", headers=headers,
                                  json={"type": "direct", "origin": origin}))
    for source_id in pools.source_ids[:3]:
        pools.learn(requests.post(f"{base}/v1/images", headers=headers,
                                  json={"source_id": source_id}))
    pools.learn(requests.post(f"{base}/v1/images/{pools.image_ids[0]}/tasks", headers=headers,
                              json={"action": "import"}))
    assert len(pools.job_ids) == 1 and len(pools.upload_tokens) == 1, pools
    return pools


def aim(case: schemathesis.Case, stack: Stack, pick: int) -> None:
    """Point the case's ids (path, `source_id` in bodies, an upload's token) at real resources."""
    pools = stack.pools
    by_name = {"image_id": pools.image_ids, "source_id": pools.source_ids,
               "job_id": pools.job_ids}
    for name in case.path_parameters or {}:
        case.path_parameters[name] = by_name[name][pick % len(by_name[name])]
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("source_id"), str):
        body["source_id"] = pools.source_ids[pick % len(pools.source_ids)]
    contents = body.get("contents") if isinstance(body, dict) else None
    if isinstance(contents, dict) and isinstance(contents.get("source_ids"), list):
        contents["source_ids"] = [pools.source_ids[(pick + i) % len(pools.source_ids)]
                                  for i, _ in enumerate(contents["source_ids"])]
    if case.operation.path.endswith("/upload"):
        image_id, token = sorted(pools.upload_tokens.items())[pick % len(pools.upload_tokens)]
        case.path_parameters["image_id"] = image_id
        case.query = {**(case.query or {}), "token": token}
        case.headers = {**(case.headers or {}), "X-Hub-Id": stack.headers["X-Hub-Id"]}


def shorten_waits(case: schemathesis.Case) -> None:
    """A long poll answers after its `wait` at the latest, up to 60 s: cut to a fraction of a
    second, so the run stays short and within each call's timeout."""
    wait = (case.query or {}).get("wait")
    if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait > 0:
        case.query["wait"] = min(wait, 0.2)


def reached(case: schemathesis.Case, response: requests.Response, urls: Any) -> bool:
    """Whether the request got to the view its operation describes: a made-up path parameter
    can lead elsewhere (`sources` as an image id) or nowhere (a `/` in it)."""
    if response.headers.get("Content-Type", "").startswith("application/json") and \
            (response.json().get("error") or {}).get("code") in ("404.uri", "405.method-not-allowed"):
        return False
    try:
        endpoint, _ = urls.match(case.formatted_path, method=case.method)
    except HTTPException:
        return False
    return endpoint == case.operation.definition.raw["operationId"]


def in_order(operation: Any) -> int:
    """Sources are made first and images next, so that later requests can aim at them (and
    imports run on made-up origins); deletes and prunes go last, so the resources live till then."""
    method, path = operation.method.upper(), operation.path
    if method == "DELETE" or path == "/v1/images/tasks":
        return 3
    return {("POST", "/v1/images/sources"): 0, ("POST", "/v1/images"): 1}.get((method, path), 2)


SCHEMA_CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def fuzz(operation: Any, mode: GenerationMode, stack: Stack, session: requests.Session,
         urls: Any, seed: int) -> None:
    secured = bool(operation.definition.raw.get("security"))

    @hypothesis_seed(seed)
    @settings(max_examples=EXAMPLES, deadline=None, database=None, print_blob=False,
              suppress_health_check=list(HealthCheck),
              phases=(Phase.explicit, Phase.generate, Phase.shrink))
    @given(case=operation.as_strategy(generation_mode=mode), real=st.booleans(),
           pick=st.integers(min_value=0, max_value=2**16))
    def run(case: schemathesis.Case, real: bool, pick: int) -> None:
        if real:
            aim(case, stack, pick)
        shorten_waits(case)
        response = case.call(base_url=stack.base, session=session,
                             headers=stack.headers if secured else None, timeout=30)
        stack.pools.learn(response)
        checks = [not_a_server_error]
        if reached(case, response, urls):
            checks += SCHEMA_CHECKS
        case.validate_response(response, checks=checks)

    run()


def test_fuzzing_the_api_breaks_neither_its_answers_nor_its_worker(stack, app, capsys):
    seed = random.randrange(2**32) if SEED == "random" else int(SEED)
    schema = schemathesis.openapi.from_url(f"{stack.base}/v1/openapi.json")
    urls = app.url_map.bind("127.0.0.1")
    statuses: Counter[int] = Counter()
    session = requests.Session()
    session.hooks["response"].append(lambda r, *_, **__: statuses.update([r.status_code]))
    failures = []
    for operation in sorted((r.ok() for r in schema.get_all_operations()), key=in_order):
        raw = operation.definition.raw
        # Invalid requests need something to be invalid: a parameter or a body.
        modes = [GenerationMode.POSITIVE] + (
            [GenerationMode.NEGATIVE] if raw.get("parameters") or raw.get("requestBody") else [])
        for mode in modes:
            try:
                fuzz(operation, mode, stack, session, urls, seed)
            except Exception as exc:  # every operation is fuzzed; all failures are reported
                failures.append(f"{operation.label} ({mode.value}): {exc}")
    with capsys.disabled():
        print(f"\nfuzz: {sum(statuses.values())} requests (seed {seed}, {EXAMPLES} examples per "
              f"operation and mode), by status: {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures)

    unfinished = wait_for_jobs(stack)
    assert not unfinished, f"jobs the fuzz run made that did not end: {unfinished}"
    assert stack.worker.poll() is None, "the worker died"
    cli(stack.env, "health", "--queue", node_queue(NODE), "--timeout", "30")
    for log in stack.logs:
        text = log.read_text()
        assert "Traceback" not in text, f"{log.name}:\n{text[text.index('Traceback') - 2000:]}"


def wait_for_jobs(stack: Stack, timeout: float = 120) -> list[str]:
    """Wait until every job of the hub has ended; returns those that did not, with their state."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        jobs, page = [], 1
        while batch := requests.get(f"{stack.base}/v1/jobs", headers=stack.headers, params={
                "page[size]": 100, "page[number]": page}).json()["data"]:
            jobs += batch
            page += 1
        unfinished = [f"{j['id']} {j['caption']}: {j['state']['current']}" for j in jobs
                      if j["state"]["current"] not in FINAL_JOB_STATES]
        if not unfinished or time.monotonic() > deadline:
            return unfinished
        time.sleep(0.5)
