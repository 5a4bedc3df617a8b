"""A real API (`imagejobs api`, two processes, a database of its own) with clients that send slowly,
stall, or send what gunicorn refuses by itself: others are still answered, and every refusal comes
in the error envelope.

Every connection here is to 127.0.0.1, and every dripping client stops within a minute.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import requests

from app.serve import server_error
from tests.processes import ApiClient, api_server, own_database
from tests.services import ROOT, TEST_DATABASE

CROWD = 64  # slow connections at once: eight took the old API (2 x 4 threads) down
SLOW_UPLOADS = 40  # more than the database connections of both API processes (2 x 15)
CLIENT_TIMEOUT = 15  # seconds the well-behaved client waits for each answer
DRIP_SECONDS_MAX = 60
BODY_LIMIT = 4096  # IMAGEJOBS_MAX_BODY_BYTES of these APIs
UPLOAD_LIMIT = 256 * 1024  # and their IMAGEJOBS_UPLOAD_MAX_BYTES


@dataclass
class Api:
    base: str
    port: int
    client: ApiClient
    env: dict[str, str]

    @property
    def auth(self) -> bytes:
        return "".join(f"{k}: {v}\r\n" for k, v in self.client.http.headers.items()
                       if k in ("Authorization", "X-Hub-Id")).encode()


@contextmanager
def started_api(name: str, *options: str) -> Iterator[Api]:
    env, headers = own_database(f"{TEST_DATABASE}_{name.replace('-', '_')}", {
        **os.environ, "IMAGEJOBS_MAX_BODY_BYTES": str(BODY_LIMIT),
        "IMAGEJOBS_UPLOAD_MAX_BYTES": str(UPLOAD_LIMIT)})
    with api_server(name, "api", "--workers", "2", *options, env=env) as base:
        yield Api(base, int(base.rsplit(":", 1)[1]), ApiClient(base, headers), env)


@pytest.fixture(scope="module")
def api() -> Iterator[Api]:
    with started_api("slow-clients") as started:
        yield started


@pytest.fixture(scope="module")
def impatient_api() -> Iterator[Api]:
    """An API that gives a client 2 s to send its headers or its body."""
    with started_api("slow-clients-impatient", "--keep-alive", "2") as started:
        yield started


@contextmanager
def dripping(port: int, start: bytes, count: int = CROWD) -> Iterator[list[socket.socket]]:
    """`count` connections that send `start`, then one more byte a second until the block ends."""
    conns = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]
    stop = threading.Event()

    def drip() -> None:
        deadline = time.monotonic() + DRIP_SECONDS_MAX
        while not stop.wait(1.0) and time.monotonic() < deadline:
            for conn in conns:
                with contextlib.suppress(OSError):  # closed by the server: see still_open()
                    conn.send(b"a")

    for conn in conns:
        conn.sendall(start)
    dripper = threading.Thread(target=drip, daemon=True)
    dripper.start()
    try:
        time.sleep(2.5)  # every connection accepted and a couple of bytes into its drip
        yield conns
    finally:
        stop.set()
        dripper.join()
        for conn in conns:
            conn.close()


def still_open(conns: list[socket.socket]) -> int:
    """How many of `conns` the server has neither answered nor closed."""
    waiting = 0
    for conn in conns:
        timeout = conn.gettimeout()
        conn.settimeout(0)  # a socket with a timeout would wait that long for something to read
        try:
            conn.recv(1, socket.MSG_PEEK)
        except BlockingIOError:
            waiting += 1
        except OSError:
            pass
        finally:
            conn.settimeout(timeout)
    return waiting


def assert_others_answered(api: Api) -> None:
    health = requests.get(f"{api.base}/v1/health", timeout=CLIENT_TIMEOUT)
    assert health.status_code == 200, health.text
    jobs = api.client.http.get(f"{api.base}/v1/jobs", timeout=CLIENT_TIMEOUT)
    assert jobs.status_code == 200, jobs.text


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the server said `Connection: close`, and closed it after the answer

    def envelope(self, status: int, code: str) -> dict:
        assert self.status == status, (self.status, self.body)
        assert self.headers["content-type"] == "application/json", self.headers
        document = json.loads(self.body)
        assert set(document) == {"error", "data"} and document["data"] is None
        error = document["error"]
        assert error["status"] == status and error["code"] == code and error["title"], error
        return error


def exchange(port: int, data: bytes, conn: socket.socket | None = None,
             timeout: float = CLIENT_TIMEOUT) -> Answer:
    """Send `data` as it is and read one answer (and whether the connection closed after it)."""
    conn = conn or socket.create_connection(("127.0.0.1", port), timeout=timeout)
    conn.settimeout(timeout)
    conn.sendall(data)
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = conn.recv(65536)
        assert chunk, f"closed without an answer after {received!r}"
        received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        chunk = conn.recv(65536)
        assert chunk, "closed in the middle of the answer"
        body += chunk
    # A kept-alive connection is shown open by the next request sent on it.
    closed = headers.get("connection") == "close" and _closes(conn)
    return Answer(int(status_line.split()[1]), headers, body, closed)


def _closes(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except TimeoutError:  # still open after all
        return False
    except ConnectionResetError:
        return True


def test_many_clients_dripping_their_headers_leave_the_api_answering(api):
    with dripping(api.port, b"GET /v1/health HTTP/1.1\r\nHost: slow\r\nX-Slow: ") as conns:
        assert_others_answered(api)
        assert still_open(conns) == CROWD


def test_many_clients_dripping_their_bodies_leave_the_api_answering(api):
    """Authenticated JSON bodies at a byte a second, and uploads that stall: none holds what others
    need (a thread, or a database connection taken to check the key or the token)."""
    json_start = (b"POST /v1/images/sources HTTP/1.1\r\nHost: slow\r\n" + api.auth
                  + b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
    uploads = [_start_upload(api, _upload_image(api)) for _ in range(SLOW_UPLOADS)]
    try:
        with dripping(api.port, json_start) as bodies:
            assert_others_answered(api)
            assert still_open(bodies) == CROWD
            assert still_open(uploads) == SLOW_UPLOADS
    finally:
        for conn in uploads:
            conn.close()


def _upload_image(api: Api) -> str:
    """A new cycle-upload image: its upload path, with its token."""
    source = api.client.call("POST", "/v1/images/sources",
                             json={"type": "direct", "origin": {"type": "cycle-upload"}})
    image = api.client.call("POST", "/v1/images", json={"source_id": source["id"]})
    return f"/v1/images/{image['id']}/upload?token=" + image["source"]["details"]["origin"][
        "details"]["token"]


def _start_upload(api: Api, path: str) -> socket.socket:
    """An upload (larger than a JSON body may be) that sends its first 512 bytes and stops."""
    conn = socket.create_connection(("127.0.0.1", api.port), timeout=5)
    conn.sendall(f"POST {path} HTTP/1.1\r\nHost: slow\r\nContent-Type: application/x-tar\r\n"
                 f"Content-Length: {UPLOAD_LIMIT}\r\n\r\n".encode() + b"\0" * 512)
    return conn


def test_a_slow_body_that_arrives_in_time_is_served(api):
    body = json.dumps({"type": "direct", "origin": {"type": "cycle-upload"}}).encode()
    conn = socket.create_connection(("127.0.0.1", api.port), timeout=CLIENT_TIMEOUT)
    conn.sendall(b"POST /v1/images/sources HTTP/1.1\r\nHost: slow\r\n" + api.auth
                 + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body))
    for piece in (body[:10], body[10:20]):
        conn.sendall(piece)
        time.sleep(1)
    answer = exchange(api.port, body[20:], conn)
    assert answer.status == 201, answer.body
    # and the connection serves the next request
    assert exchange(api.port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", conn).status == 200


def test_a_body_that_stalls_is_answered_408_and_closed(impatient_api):
    api = impatient_api
    answer = exchange(api.port, b"POST /v1/images/sources HTTP/1.1\r\nHost: slow\r\n" + api.auth
                      + b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"ty")
    answer.envelope(408, "408.request-timeout")
    assert answer.closed


def test_headers_that_stall_are_cut_off(impatient_api):
    with dripping(impatient_api.port, b"GET /v1/health HTTP/1.1\r\nHost: slow\r\nX-Slow: ",
                  count=4) as conns:
        deadline = time.monotonic() + 30
        while still_open(conns) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert still_open(conns) == 0
        assert_others_answered(impatient_api)


def _many_headers(count: int) -> bytes:
    return b"".join(b"X-H%d: y\r\n" % n for n in range(count))


@pytest.mark.parametrize("request_bytes, status, code", [
    (b"GARBAGE\r\n\r\n", 400, "400.invalid-syntax"),
    (b"GET /v1/health HTTP/9.9\r\n\r\n", 400, "400.invalid-syntax"),
    (b"GET /v1/health HTTP/1.1\r\nBad Header: x\r\n\r\n", 400, "400.invalid-syntax"),
    (b"GET /v1/health HTTP/1.1\r\nHost: x\r\n folded\r\n\r\n", 400, "400.invalid-syntax"),
    (b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
     400, "400.invalid-syntax"),
    (b"POST /v1/images HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400, "400.invalid-syntax"),
    (b"POST /v1/images HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
     "400.invalid-syntax"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "414.uri-too-long"),
    (b"GET /v1/health?" + b"q=%C3%A9" * 1200 + b" HTTP/1.1\r\n\r\n", 414, "414.uri-too-long"),
    (b"GET /v1/health HTTP/1.1\r\n" + _many_headers(150) + b"\r\n", 431, "431.header-too-large"),
    (b"GET /v1/health HTTP/1.1\r\nX-Big: " + b"b" * 9000 + b"\r\n\r\n", 431,
     "431.header-too-large"),
    (b"POST /v1/images HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n", 501,
     "501.not-implemented"),
], ids=["request-line", "version", "header-name", "folding", "two-lengths", "length-and-chunked",
        "chunk-size",
        "long-path", "long-query", "many-headers", "long-header", "transfer-coding"])
def test_what_gunicorn_refuses_is_answered_in_the_envelope(api, request_bytes, status, code):
    answer = exchange(api.port, request_bytes)
    error = answer.envelope(status, code)
    assert error.get("detail")
    assert answer.closed


def test_a_json_body_over_the_limit_is_answered_413_and_closed(api):
    body = b"{" + b" " * (BODY_LIMIT + 100) + b"}"
    answer = exchange(api.port, b"POST /v1/images/sources HTTP/1.1\r\nHost: x\r\n" + api.auth
                      + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                      % (len(body), body))
    answer.envelope(413, "413.too-large")
    assert answer.closed


def test_a_chunked_json_body_over_the_limit_is_answered_413_not_cut_short(api):
    body = b"{" + b" " * (BODY_LIMIT + 100) + b"}"
    chunked = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    answer = exchange(api.port, b"POST /v1/images/sources HTTP/1.1\r\nHost: x\r\n" + api.auth
                      + b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + chunked)
    answer.envelope(413, "413.too-large")


def test_an_upload_over_the_limit_is_answered_413_and_closed(api):
    body = b"\0" * (UPLOAD_LIMIT + 1024)
    for framing, data in [(b"Content-Length: %d\r\n" % len(body), body),
                          (b"Transfer-Encoding: chunked\r\n", b"%x\r\n%s\r\n0\r\n\r\n"
                           % (len(body), body))]:
        answer = exchange(api.port, b"POST %s HTTP/1.1\r\nHost: x\r\n" % _upload_image(api).encode()
                          + b"Content-Type: application/x-tar\r\n" + framing + b"\r\n" + data)
        answer.envelope(413, "413.too-large")
        assert answer.closed


def test_an_answer_given_before_the_body_was_read_closes_the_connection(api):
    """A refused upload token: the rest of the upload is not read and thrown away first."""
    answer = exchange(api.port, b"POST /v1/images/" + b"0" * 24 + b"/upload?token=wrong "
                      b"HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-tar\r\n"
                      b"Content-Length: 100000000\r\n\r\n" + b"\0" * 1024)
    answer.envelope(401, "401.auth-invalid")
    assert answer.closed


def test_a_kept_alive_connection_serves_request_after_request(api):
    conn = socket.create_connection(("127.0.0.1", api.port), timeout=CLIENT_TIMEOUT)
    refused = exchange(api.port, b"POST /v1/images/sources HTTP/1.1\r\nHost: x\r\n" + api.auth
                       + b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}", conn)
    refused.envelope(422, "422.missing-argument")
    assert exchange(api.port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", conn).status == 200


class _Limits:
    limit_request_line, limit_request_fields, limit_request_field_size = 8190, 100, 8190


@pytest.mark.parametrize("picked, status, code", [
    (400, 400, "400.invalid-syntax"), (403, 403, "403.forbidden"),
    (414, 414, "414.uri-too-long"), (417, 417, "417.expectation-failed"),
    (431, 431, "431.header-too-large"), (501, 501, "501.not-implemented"),
    (500, 500, "500.unknown"), (502, 500, "500.unknown"),
])
def test_each_status_gunicorn_picks_has_its_code(picked, status, code):
    error = server_error(picked, ValueError("words of ours"), _Limits())
    assert (error.status, error.code) == (status, code)
    # gunicorn's words about a request it refused help its client; about its own fault, they stay
    # in the log.
    assert ("words of ours" in json.dumps(error.envelope())) == (picked in (400, 403, 417, 501))


def test_a_stopping_api_lets_go_of_kept_alive_connections(api):
    """SIGTERM: connections between requests are closed, so the stop needs no graceful timeout."""
    with api_server("slow-clients-stop", "api", "--workers", "2", env=api.env) as base:
        port = int(base.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port), timeout=CLIENT_TIMEOUT)
                for _ in range(6)]
        for conn in idle:
            assert exchange(port, b"GET /v1/health HTTP/1.1\r\nHost: x\r\n\r\n", conn).status == 200
    log = (ROOT / ".test-logs" / "slow-clients-stop.log").read_text()
    # Each worker exited by itself: none was killed when the graceful timeout ran out.
    assert log.count("Worker exiting") == log.count("Booting worker") == 2, log[-2000:]
    assert all(_closes(conn) for conn in idle)


def _in_gevent(code: str) -> str:
    """`code` run by a Python whose standard library gevent patched first, as in a worker."""
    result = subprocess.run([sys.executable, "-c", "from gevent import monkey; monkey.patch_all()\n"
                             + code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_blocking_work_off_the_hub_leaves_other_greenlets_running():
    # The function waits on a pipe that only another greenlet writes to: called on the hub's
    # own thread, it would wait for ever (here: until the timeout).
    assert _in_gevent("""
import os, gevent
from app.serve import off_the_hub
read, write = os.pipe()
gevent.spawn(os.write, write, b"x")
with gevent.Timeout(20):
    print(off_the_hub(os.read, read, 1).decode())
""") == "x"


def test_an_error_raised_off_the_hub_reaches_the_caller_and_prints_no_trace():
    result = subprocess.run([sys.executable, "-c", """from gevent import monkey; monkey.patch_all()
from app import errors
from app.serve import off_the_hub
def refuse():
    raise errors.InvalidInput("refused")
try:
    off_the_hub(refuse)
except errors.InvalidInput as exc:
    print(exc.detail)
"""], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert (result.returncode, result.stdout.strip(), result.stderr) == (0, "refused", "")


def test_the_worker_refuses_psycopg_imported_before_the_patch():
    """psycopg picks its wait function on import: after gevent's patch, one that cooperates."""
    check = "from app.serve import psycopg_waits_cooperatively; print(psycopg_waits_cooperatively())"
    assert _in_gevent(check) == "True"
    result = subprocess.run([sys.executable, "-c", "import psycopg\nfrom gevent import monkey; "
                             "monkey.patch_all()\n" + check], capture_output=True, text=True,
                            cwd=ROOT, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
