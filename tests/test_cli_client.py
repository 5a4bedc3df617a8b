"""The client commands of `imagejobs` run as a person runs them: the real command as a
subprocess against a real API (gunicorn's gevent worker) and the suite's worker, with
IMAGEJOBS_API, IMAGEJOBS_KEY and IMAGEJOBS_HUB in its environment, or the file `login` wrote.

Progress bars and Ctrl-C are checked in a pseudo-terminal the test holds.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import signal
import stat
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import requests
from sqlalchemy import update

from app.db import transaction, utcnow
from app.jobs import queueing
from app.models import Job
from tests.api_calls import Api, Tenant, create_image, create_source, import_image, make_tenant
from tests.image_builds import dockerfile_context
from tests.processes import api_server, free_port
from tests.servers import FileServer
from tests.services import BASE_IMAGE, REGISTRY, ROOT, TEST_ENVIRONMENT

pytestmark = pytest.mark.docker

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
ID = r"[0-9a-f]{24}"


@pytest.fixture(scope="module")
def base(worker) -> Iterator[str]:
    with api_server("cli-client-api", env={**os.environ, **TEST_ENVIRONMENT}) as url:
        yield url


@pytest.fixture(scope="module")
def files() -> Iterator[FileServer]:
    server = FileServer()
    yield server
    server.close()


@pytest.fixture
def person(base, tmp_path) -> Person:
    return Person(base, make_tenant(), tmp_path / "config")


class Person:
    """Someone running `imagejobs` with a hub's key in the environment, and a config folder of
    their own (so that no file of this machine's user is read)."""

    def __init__(self, base: str, tenant: Tenant, config_home: Path):
        self.base, self.tenant = base, tenant
        self.env = {**os.environ, "IMAGEJOBS_API": base, "IMAGEJOBS_KEY": tenant.secret,
                    "IMAGEJOBS_HUB": tenant.hub_id, "XDG_CONFIG_HOME": str(config_home)}

    def run(self, *args: str, env: dict[str, str] | None = None, ok: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True,
                                text=True, cwd=ROOT, env=env or self.env, timeout=timeout,
                                stdin=subprocess.DEVNULL)
        assert "Traceback" not in result.stderr, result.stderr
        if ok:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def get(self, path: str) -> dict[str, Any]:
        response = requests.get(self.base + path, headers=self.tenant.headers, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()["data"]


def found(pattern: str, text: str) -> str:
    match = re.search(pattern, text)
    assert match, f"no {pattern!r} in:\n{text}"
    return match.group(1)


def registry_image(person: Person, pushed_image) -> str:
    """An image of a docker-registry source of the pushed image, both made with the CLI."""
    host, _, target = pushed_image.public.partition("/")
    source = person.run("sources", "create", "--name", "configured", "--origin",
                        "docker-registry", "--url", f"http://{host}", "--target", target
                        ).stdout.strip()
    return person.run("images", "create", "--source", source).stdout.strip()


# --- following a build ---------------------------------------------------------------------------


def test_a_followed_build_prints_every_line_of_its_log_in_order_and_exits_0(person, files):
    url = files.add("/cli-build.tar.gz", dockerfile_context(
        f"FROM {BASE_IMAGE}\nRUN echo first-line && sleep 1\n"
        "RUN for i in 1 2 3; do echo counted-$i; sleep 0.4; done\nRUN echo last-line\n"))
    result = person.run("build", "--targz", url, "--follow")

    image_id = found(rf"image ({ID})", result.stderr)
    log = person.get(f"/v1/images/{image_id}/build-log")["log"]
    assert result.stdout == log  # every line, in order, nothing else on standard output
    assert log.index("first-line") < log.index("counted-3") < log.index("last-line")
    assert "\x1b[" not in result.stdout + result.stderr  # not a terminal: no bars, no colours
    assert re.search(r"step 2/4 Build: done in", result.stderr), result.stderr
    job_id = found(rf"job ({ID}) completed", result.stderr)
    assert person.get(f"/v1/jobs/{job_id}")["state"]["current"] == "completed"
    assert person.get(f"/v1/images/{image_id}")["state"]["current"] == "live"
    assert person.run("logs", image_id).stdout == log
    assert person.run("logs", image_id, "--follow").stdout == log  # ended: the log, then its end


def test_a_failing_run_step_exits_non_zero_with_the_engines_words(person, files):
    url = files.add("/cli-fails.tar.gz", dockerfile_context(
        f"FROM {BASE_IMAGE}\nRUN echo about-to-fail\nRUN false\n"))
    result = person.run("build", "--targz", url, ok=False)

    assert result.returncode == 1
    job_id = found(rf"job ({ID}) ended in error", result.stderr)
    message = person.get(f"/v1/jobs/{job_id}")["state"]["error"]["message"]
    assert "returned a non-zero code" in message
    assert message in result.stderr
    assert "about-to-fail" in result.stdout  # the log as it was printed


# --- scripts -------------------------------------------------------------------------------------


def test_json_output_is_the_apis_documents(person, pushed_image):
    image_id = registry_image(person, pushed_image)

    descriptor = json.loads(person.run("import", image_id, "--json").stdout)
    job_id = descriptor["data"]["job"]["id"]
    followed = [json.loads(line) for line in person.run(
        "jobs", "watch", job_id, "--json").stdout.splitlines()]
    assert followed[-1]["data"]["state"]["current"] == "completed"
    assert all(document["data"]["id"] == job_id for document in followed)

    jobs = json.loads(person.run("jobs", "list", "--json").stdout)
    assert job_id in [job["id"] for job in jobs["data"]]
    images = json.loads(person.run("images", "list", "--json").stdout)
    assert [(i["id"], i["state"]["current"]) for i in images["data"]] == [(image_id, "live")]
    again = [json.loads(line) for line in person.run(
        "import", image_id, "--follow", "--json").stdout.splitlines()]
    assert again[0]["data"]["action"] == "import"  # the descriptor, then the job as it changes
    assert again[-1]["data"]["state"]["current"] == "completed"

    source_id = images["data"][0]["source"]["details"]["id"]
    dry_run = person.run("prune", "--source", source_id, "--dry-run")
    assert f"{image_id}: would be removed" in dry_run.stdout.splitlines()
    person.run("delete", image_id, "--follow")
    assert person.get(f"/v1/images/{image_id}")["state"]["current"] == "deleted"


def test_the_apis_errors_are_one_line_in_its_own_words(person):
    wrong_key = person.run("jobs", "list", env={**person.env, "IMAGEJOBS_KEY": "wrong"},
                           ok=False)
    assert wrong_key.returncode == 1
    assert wrong_key.stderr == "401.auth-invalid: The API key is not valid.\n"

    missing = person.run("import", "0" * 24, ok=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith("404.image: ") and missing.stderr.count("\n") == 1

    away = f"http://127.0.0.1:{free_port()}"
    unreachable = person.run("images", "list", env={**person.env, "IMAGEJOBS_API": away},
                             ok=False)
    assert unreachable.returncode == 1
    assert unreachable.stderr == f"could not reach the API at {away}: connection refused\n"


# --- uploads -------------------------------------------------------------------------------------


def test_an_uploaded_image_tar_lands_and_its_bytes_sent_are_shown(person, docker_client, tmp_path):
    tar = tmp_path / "busybox.tar"
    with open(tar, "wb") as out:
        for chunk in docker_client.images.get(BASE_IMAGE).save():
            out.write(chunk)
    result = person.run("images", "create", "--upload", str(tar), "--name", "uploaded")

    image_id = found(rf"image ({ID})", result.stderr)
    assert f"upload: sent {tar.stat().st_size / 1e6:.1f} MB of" in result.stderr
    assert "(100%)" in result.stderr
    image = person.get(f"/v1/images/{image_id}")
    assert image["state"]["current"] == "live"
    assert image["name"] == "uploaded"


# --- login ---------------------------------------------------------------------------------------


def test_login_writes_its_file_0600_and_later_commands_use_it(person, tmp_path):
    bare = {name: value for name, value in person.env.items()
            if name not in ("IMAGEJOBS_API", "IMAGEJOBS_KEY", "IMAGEJOBS_HUB")}
    path = Path(bare["XDG_CONFIG_HOME"]) / "imagejobs" / "client.json"

    refused = person.run("login", "--api", person.base, "--hub", person.tenant.hub_id,
                         "--key", "wrong", env=bare, ok=False)
    assert refused.stderr == "401.auth-invalid: The API key is not valid.\n"
    assert not path.exists()

    logged_in = person.run("login", "--api", person.base, "--hub", person.tenant.hub_id,
                           "--key", person.tenant.secret, env=bare)
    assert person.tenant.secret not in logged_in.stdout + logged_in.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert json.loads(path.read_text()) == {"api": person.base, "key": person.tenant.secret,
                                            "hub": person.tenant.hub_id}
    listed = person.run("jobs", "list", "--json", env=bare)
    assert json.loads(listed.stdout)["data"] == []
    # The environment wins over the file.
    overridden = person.run("jobs", "list", env={**bare, "IMAGEJOBS_KEY": "wrong"}, ok=False)
    assert overridden.stderr.startswith("401.auth-invalid")


# --- in a terminal -------------------------------------------------------------------------------


class Terminal:
    """`imagejobs ARGS` with a pseudo-terminal as its controlling terminal, 120 columns wide."""

    def __init__(self, env: dict[str, str], *args: str):
        env = {**env, "TERM": "xterm-256color", "COLUMNS": "120", "LINES": "40"}
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # the child: never returns into pytest
            try:
                fcntl.ioctl(0, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
                os.chdir(ROOT)
                os.execve(sys.executable, [sys.executable, "-m", "app.cli", *args], env)
            finally:
                os._exit(127)
        self.raw = ""
        self.status: int | None = None

    @property
    def text(self) -> str:
        """What was shown, without the terminal's control sequences."""
        return ANSI.sub("", self.raw).replace("\r", "")

    def expect(self, pattern: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.text):
            if not self._read(deadline - time.monotonic()):
                raise AssertionError(f"no {pattern!r} on the terminal:\n{self.text[-3000:]}")

    def send(self, keys: str) -> None:
        os.write(self.fd, keys.encode())

    def wait(self, timeout: float = 60) -> int:
        deadline = time.monotonic() + timeout
        while self._read(deadline - time.monotonic()):
            pass
        _, status = os.waitpid(self.pid, 0)
        self.status = os.waitstatus_to_exitcode(status)
        return self.status

    def _read(self, seconds: float) -> bool:
        """Read what came within `seconds`; False at its end or once nothing came."""
        if seconds <= 0 or not select.select([self.fd], [], [], seconds)[0]:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            return False
        self.raw += data.decode(errors="replace")
        return bool(data)

    def close(self) -> None:
        if self.status is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except ProcessLookupError:
                pass
        os.close(self.fd)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for terminal in opened:
        terminal.close()


def test_a_followed_import_shows_each_step_with_a_bar(person, pushed_image, terminals):
    image_id = registry_image(person, pushed_image)
    terminal = Terminal(person.env, "import", image_id, "--follow")
    terminals.append(terminal)

    assert terminal.wait() == 0, terminal.text
    shown = terminal.text
    for caption in ("Pull", "Verify", "Save"):
        assert re.search(rf"✓ {caption}\s+━+ 100%", shown), shown
    assert "completed" in shown
    assert "\x1b[" in terminal.raw  # drawn, not printed as plain lines


@pytest.fixture
def queued_job(person, client, monkeypatch) -> str:
    """An import queued and never claimed: its message is not sent, and its schedule is an hour
    away, so neither a worker nor the sweeper starts it before the test cancels it."""
    monkeypatch.setattr(queueing, "publish", lambda action, job_id, queue: False)
    api = Api(client, person.tenant)
    image = create_image(api, create_source(api, {"type": "docker-registry", "details": {
        "url": f"http://{REGISTRY}", "target": "tests/absent:v1"}})["id"])
    job_id = import_image(api, image["id"])["job"]["id"]
    with transaction() as session:
        session.execute(update(Job).where(Job.id == job_id).values(
            schedule=utcnow() + timedelta(hours=1)))
    return job_id


def interrupted(person: Person, job_id: str, answer: str, terminals: list[Terminal]
                ) -> Terminal:
    """`jobs watch JOB` in a terminal, Ctrl-C once the job is shown, `answer` to the question."""
    terminal = Terminal(person.env, "jobs", "watch", job_id)
    terminals.append(terminal)
    terminal.expect(r"queued")
    terminal.send("\x03")
    terminal.expect(rf"Cancel job {job_id}\?")
    terminal.send(f"{answer}\r")
    return terminal


def test_ctrl_c_while_following_asks_and_yes_cancels_the_job(person, queued_job, terminals):
    terminal = interrupted(person, queued_job, "y", terminals)

    assert terminal.wait() == 1
    message = person.get(f"/v1/jobs/{queued_job}")["state"]["error"]["message"]
    assert person.tenant.key_id in message
    assert f"job {queued_job} ended in error: {message}" in terminal.text


def test_ctrl_c_answered_no_stops_following_and_leaves_the_job(person, queued_job, terminals):
    terminal = interrupted(person, queued_job, "n", terminals)

    assert terminal.wait() == 130
    assert f"stopped following job {queued_job}; it goes on" in terminal.text
    assert person.get(f"/v1/jobs/{queued_job}")["state"]["current"] == "queued"


def test_without_a_terminal_ctrl_c_just_stops_following(person, queued_job):
    child = subprocess.Popen([sys.executable, "-m", "app.cli", "jobs", "watch", queued_job],
                             cwd=ROOT, env=person.env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        shown = ""
        while "queued" not in shown and time.monotonic() < deadline:
            shown += child.stderr.readline()
        child.send_signal(signal.SIGINT)
        _, rest = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 130, shown + rest
    assert "Cancel job" not in shown + rest
    assert f"stopped following job {queued_job}" in rest
    assert person.get(f"/v1/jobs/{queued_job}")["state"]["current"] == "queued"
