"""The load: a seeded plan of API calls (imports, builds, deletes, prunes) and the thread that
plays it. The plan is fixed by the seed; what a delete hits depends on what is live by then."""

from __future__ import annotations

import functools
import http.server
import random
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import requests

from tests.faults import VISIBILITY_TIMEOUT
from tests.image_builds import dockerfile_context

REGISTRY_ORIGIN = {"type": "docker-registry",
                   "details": {"url": "http://127.0.0.1:5000", "target": "library/busybox:latest"}}
SOURCES_PER_KIND = 3
KINDS = ("import", "build", "delete", "prune")
WEIGHTS = (40, 35, 15, 10)
# A build this long outlives the broker's visibility timeout: its message is handed out again
# while it runs. The first build of every plan is one; after it, about one build in six.
LONG_BUILD = (VISIBILITY_TIMEOUT + 3, VISIBILITY_TIMEOUT + 8)


@dataclass(frozen=True)
class Action:
    number: int
    kind: str  # import | build | delete | prune
    gap: float  # seconds to wait before it
    source: int  # which of the kind's sources (prune: which source of all)
    sleep: int = 0  # builds: seconds of `RUN sleep` (0: none)
    pick: float = 0.0  # deletes: which of the live images, as a fraction of their list
    dry_run: bool = False  # prunes

    def describe(self) -> str:
        extra = {"build": f" sleep={self.sleep}", "delete": f" pick={self.pick:.3f}",
                 "prune": f" dry_run={self.dry_run}"}.get(self.kind, "")
        return f"#{self.number} {self.kind} source={self.source}{extra} after {self.gap:.2f}s"


def plan_load(rng: random.Random, jobs: int) -> list[Action]:
    plan = []
    for number in range(jobs):
        kind = rng.choices(KINDS, WEIGHTS)[0] if number >= 4 else ("import", "build")[number % 2]
        sleep = rng.choice((0, 2, 3, 4, 5, -1)) if kind == "build" else 0
        if sleep == -1 or number == 1:
            sleep = rng.randint(*LONG_BUILD)
        plan.append(Action(
            number=number, kind=kind, gap=round(rng.uniform(0.3, 2.0), 2),
            source=rng.randrange(SOURCES_PER_KIND * (2 if kind == "prune" else 1)),
            sleep=sleep,
            pick=rng.random() if kind == "delete" else 0.0,
            dry_run=rng.random() < 0.3 if kind == "prune" else False))
    return plan


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class ContextServer:
    """Build contexts as tar.gz files on a loopback http.server; each build gets its own."""

    def __init__(self, directory: Path):
        self.directory = directory
        handler = functools.partial(QuietHandler, directory=str(directory))
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.nonce = uuid.uuid4().hex  # unique per run, so the engine's cache cannot skip a build

    def context(self, name: str, sleep: int) -> str:
        dockerfile = (f"FROM imagejobs/busybox:latest\nRUN echo {self.nonce}-{name} > /id\n"
                      + (f"RUN sleep {sleep}\n" if sleep else ""))
        (self.directory / f"{name}.tar.gz").write_bytes(dockerfile_context(dockerfile))
        return f"{self.base}/{name}.tar.gz"

    def close(self) -> None:
        self.server.shutdown()


class ApiUnavailable(RuntimeError):
    """A 5xx answer: the database or broker is away (a fault); not the harness's failure."""

    def __init__(self, method: str, path: str, status: int, body: dict):
        super().__init__(f"{method} {path} answered {status}: {body}")
        self.status = status


class Api:
    def __init__(self, base: str, headers: dict[str, str]):
        self.base = base
        self.session = requests.Session()
        self.session.headers.update(headers)

    def call(self, method: str, path: str, **kwargs) -> tuple[int, dict]:
        response = self.session.request(method, f"{self.base}{path}", timeout=30, **kwargs)
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text[:200]}
        return response.status_code, body

    def data(self, method: str, path: str, **kwargs) -> dict:
        status, body = self.call(method, path, **kwargs)
        if status >= 500:
            raise ApiUnavailable(method, path, status, body)
        if status >= 300:
            raise RuntimeError(f"{method} {path} answered {status}: {body}")
        return body["data"]


@dataclass
class HarnessImage:
    id: str
    kind: str  # import | build
    source_id: str
    import_requests: int = 0  # import calls answered 202
    # Import calls with no answer or a 5xx: the job may have been committed all the same.
    uncertain_imports: int = 0
    sleep: int = 0  # builds: seconds of `RUN sleep`


@dataclass
class Load:
    """Plays the plan; remembers the images it made and what the API answered."""

    api: Api
    contexts: ContextServer
    plan: list[Action]
    sources: dict[str, list[str]] = field(default_factory=dict)  # kind -> source ids
    images: list[HarnessImage] = field(default_factory=list)
    answers: Counter = field(default_factory=Counter)
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    def make_sources(self) -> None:
        build_origin = {"type": "docker-file",
                        "details": {"targz_url": self.contexts.context("source-default", 0)}}
        for kind, origin in (("import", REGISTRY_ORIGIN), ("build", build_origin)):
            self.sources[kind] = [
                self.api.data("POST", "/v1/images/sources", json={
                    "name": f"faults-{kind}-{n}", "type": "direct", "origin": origin})["id"]
                for n in range(SOURCES_PER_KIND)]

    def run(self, stop: threading.Event) -> None:
        try:
            for action in self.plan:
                if stop.wait(action.gap):
                    return
                self.play(action)
        except BaseException as exc:  # reported by the runner, which stops the run
            self.error = exc
        finally:
            self.done.set()

    def play(self, action: Action) -> None:
        try:
            outcome = getattr(self, f"_{action.kind}")(action)
        except requests.RequestException as exc:
            outcome = f"request failed ({type(exc).__name__})"
        except ApiUnavailable as exc:
            outcome = f"a call before it answered {exc.status}"
        self.answers[f"{action.kind}: {outcome}"] += 1

    def _create_and_import(self, kind: str, source_id: str, body: dict, sleep: int = 0) -> str:
        image = self.api.data("POST", "/v1/images", json={"source_id": source_id, **body})
        record = HarnessImage(image["id"], kind, source_id, sleep=sleep)
        self.images.append(record)
        try:
            status, _ = self.api.call("POST", f"/v1/images/{image['id']}/tasks",
                                      json={"action": "import"})
        except requests.RequestException:
            record.uncertain_imports += 1
            raise
        if status == 202:
            record.import_requests += 1
        elif status >= 500:
            record.uncertain_imports += 1
        return str(status)

    def _import(self, action: Action) -> str:
        return self._create_and_import("import", self.sources["import"][action.source], {})

    def _build(self, action: Action) -> str:
        url = self.contexts.context(f"build-{action.number}", action.sleep)
        return self._create_and_import("build", self.sources["build"][action.source],
                                       {"override": {"targz_url": url}}, action.sleep)

    def _delete(self, action: Action) -> str:
        live = [i for i in self.images if self._state(i.id) == "live"]
        if not live:
            return "skipped (nothing live)"
        target = live[int(action.pick * len(live))]
        status, _ = self.api.call("DELETE", f"/v1/images/{target.id}")
        return str(status)

    def _prune(self, action: Action) -> str:
        every = [*self.sources["import"], *self.sources["build"]]
        status, _ = self.api.call("POST", "/v1/images/tasks", json={
            "action": "prune",
            "contents": {"source_ids": [every[action.source]], "dry_run": action.dry_run}})
        return f"{status}{' (dry run)' if action.dry_run else ''}"

    def _state(self, image_id: str) -> str:
        return self.api.data("GET", f"/v1/images/{image_id}")["state"]["current"]


def wait_plan_seconds(plan: list[Action]) -> float:
    return sum(a.gap for a in plan)


def sleep_until(moment: float, stop: threading.Event) -> bool:
    """Wait until time.monotonic() reaches `moment`; True if stopped first."""
    return stop.wait(max(0.0, moment - time.monotonic()))
