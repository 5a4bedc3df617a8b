"""Loopback servers the build tests fetch contexts from: plain files over HTTP, and git over HTTP;
and registries that misbehave in front of (or instead of) the real ones.

All listen on 127.0.0.1 on a free port (or on the address, port and TLS context given) and serve
from a thread of the test process, so a real worker process reaches them the way it would reach
any server.
"""

from __future__ import annotations

import base64
import http.client
import shutil
import ssl
import subprocess
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class _Server:
    """A ThreadingHTTPServer on loopback running in a daemon thread; `url(path)` addresses it."""

    def __init__(self, handler: type[BaseHTTPRequestHandler], host: str = "127.0.0.1",
                 port: int = 0, tls: ssl.SSLContext | None = None):
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]  (handlers reach their server's state)
        self.host, self.scheme = host, "https" if tls else "http"
        if tls:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"{self.scheme}://{self.host}:{self.httpd.server_port}{path}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(BaseHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the base's name)
        pass


class FileServer(_Server):
    """Serves bytes registered with `add`; 404 for anything else; `SILENT_PATH` never answers.

    `requests` counts the requests for each served path, `hosts` keeps their last Host header.
    """

    SILENT_PATH = "/never-answers.tar.gz"
    SILENCE_SECONDS = 10  # well past the worker's fetch timeout of 3 s

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 tls: ssl.SSLContext | None = None) -> None:
        self.files: dict[str, bytes] = {}
        self.failures: dict[str, int] = {}
        self.requests: dict[str, int] = {}
        self.hosts: dict[str, str | None] = {}
        self.redirects: dict[str, str] = {}
        self.stopping = threading.Event()
        super().__init__(_FileHandler, host, port, tls)

    def add(self, path: str, data: bytes, failures: int = 0) -> str:
        """Serve `data` at `path`, after answering 503 to its first `failures` requests."""
        self.files[path] = data
        self.failures[path] = failures
        return self.url(path)

    def redirect(self, path: str, location: str) -> str:
        """Answer `path` with a 302 to `location`; returns its URL."""
        self.redirects[path] = location
        return self.url(path)

    def close(self) -> None:
        self.stopping.set()  # wakes the silent handler
        super().close()


class _FileHandler(_QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server: FileServer = self.server.owner  # type: ignore[attr-defined]
        if self.path == server.SILENT_PATH:
            server.stopping.wait(server.SILENCE_SECONDS)
            return
        if self.path in server.redirects:
            self.send_response(302)
            self.send_header("Location", server.redirects[self.path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data = server.files.get(self.path)
        if data is None:
            self.send_error(404)
            return
        server.requests[self.path] = seen = server.requests.get(self.path, 0) + 1
        server.hosts[self.path] = self.headers.get("Host")
        if seen <= server.failures[self.path]:
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class UnavailableServer(_Server):
    """A registry that is down: 503 to every request. `requests` counts them by path.

    No real registry can be made to answer 503 on demand; this stands in for that fault only.
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: dict[str, int] = {}
        super().__init__(_UnavailableHandler, host, port)


class _UnavailableHandler(_QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server: UnavailableServer = self.server.owner  # type: ignore[attr-defined]
        server.requests[self.path] = server.requests.get(self.path, 0) + 1
        self.send_error(503)

    do_HEAD = do_GET


class DripServer(_Server):
    """A server that answers one byte at a time, `DRIP_SECONDS` apart: never silent for as long
    as a read timeout, never done. `/headers...` drips its status line and headers, `/hop/N`
    waits `HOP_SECONDS` and redirects to `/hop/N+1`, any other path (a git repository's too)
    drips a body after prompt headers. It gives up after `GIVE_UP_SECONDS`. `requests` counts
    the requests by path.

    No real server can be made to pace its answers like this; it stands in for a hostile one.
    """

    DRIP_SECONDS = 1.0
    HOP_SECONDS = 2.0  # under the worker's fetch timeout of 3 s
    GIVE_UP_SECONDS = 60

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self.requests: dict[str, int] = {}
        self.stopping = threading.Event()
        super().__init__(_DripHandler, host, port)

    def close(self) -> None:
        self.stopping.set()  # ends the drips
        super().close()


class _DripHandler(_QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server: DripServer = self.server.owner  # type: ignore[attr-defined]
        server.requests[self.path] = server.requests.get(self.path, 0) + 1
        if self.path.startswith("/hop/"):
            if not server.stopping.wait(server.HOP_SECONDS):
                self.send_response(302)
                self.send_header("Location", f"/hop/{int(self.path.split('/')[2]) + 1}")
                self.send_header("Content-Length", "0")
                self.end_headers()
            return
        if self.path.startswith("/headers"):
            self._drip(b"HTTP/1.1 200 OK\r\nContent-Type: application/gzip\r\nX-Padding: "
                       + b"." * 1000 + b"\r\n\r\n")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(1 << 20))
        self.end_headers()
        self._drip(bytes(1 << 20))

    do_POST = do_GET  # noqa: N815

    def _drip(self, data: bytes) -> None:
        server: DripServer = self.server.owner  # type: ignore[attr-defined]
        for sent in range(len(data)):
            if (sent * server.DRIP_SECONDS >= server.GIVE_UP_SECONDS
                    or server.stopping.wait(server.DRIP_SECONDS)):
                return
            try:
                self.wfile.write(data[sent:sent + 1])
            except OSError:  # the client went away
                return


class ThrottledRegistry(_Server):
    """A registry in front of a real one (`upstream`, host:port) that passes every answer on as
    it is, but sends the bytes of a blob `BYTES_PER_SECOND` at a time: a pull from it takes as
    long as a large image's would. `blobs_started` counts the blob downloads begun,
    `blobs_cut` those whose client went away before their last byte.

    No real registry can be made this slow on demand; it stands in for a large image on a slow
    link, the real registry answering everything else.
    """

    BYTES_PER_SECOND = 32 * 1024
    CHUNK = 4 * 1024

    def __init__(self, upstream: str, host: str = "127.0.0.1", port: int = 0) -> None:
        self.upstream = upstream
        self.blobs_started = 0
        self.blobs_cut = 0
        self.stopping = threading.Event()
        super().__init__(_ThrottledHandler, host, port)

    def close(self) -> None:
        self.stopping.set()  # ends the paced blobs
        super().close()


class _ThrottledHandler(_QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        server: ThrottledRegistry = self.server.owner  # type: ignore[attr-defined]
        upstream = http.client.HTTPConnection(server.upstream, timeout=30)
        try:
            upstream.request(self.command, self.path, headers={
                k: v for k, v in self.headers.items() if k.lower() in ("accept", "authorization",
                                                                      "range")})
            answer = upstream.getresponse()
            body = answer.read()
        finally:
            upstream.close()
        self.send_response(answer.status)
        for name, value in answer.getheaders():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command == "HEAD":
            return
        if "/blobs/" not in self.path or answer.status != 200:
            self.wfile.write(body)
            return
        server.blobs_started += 1
        pause = server.CHUNK / server.BYTES_PER_SECOND
        for start in range(0, len(body), server.CHUNK):
            try:
                self.wfile.write(body[start:start + server.CHUNK])
                self.wfile.flush()
            except OSError:  # the engine gave the download up
                server.blobs_cut += 1
                return
            if server.stopping.wait(pause):
                return

    do_HEAD = do_GET  # noqa: N815


def git(*args: str, cwd: Path) -> str:
    """Run the git CLI as a fixed author; returns its output."""
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          check=True, capture_output=True, text=True).stdout.strip()


@dataclass(frozen=True)
class Revision:
    """One commit holding exactly `files` (path → text), on `branch`, optionally tagged.

    A branch that does not exist yet starts at the commit before this one.
    """

    files: dict[str, str]
    branch: str = "main"
    tag: str | None = None


class GitServer(_Server):
    """`git http-backend` over HTTP for the bare repositories under `root`/repos.

    Repositories under `/private/` need HTTP basic auth as `USER` with `PASSWORD`. Request bodies
    are read by Content-Length: enough for small repositories (git sends larger ones chunked).
    """

    USER, PASSWORD = "robot", "robot-git-pass-5e2b"

    def __init__(self, root: Path, host: str = "127.0.0.1", port: int = 0):
        self.repos, self.work = root / "repos", root / "work"  # served; where commits are made
        super().__init__(_GitHandler, host, port)

    def create_repo(self, name: str, history: list[Revision]) -> list[str]:
        """A bare repository `name` (e.g. `private/app.git`) with `history`; returns the commits."""
        work = self.work / name
        work.mkdir(parents=True)
        git("init", "--quiet", "--initial-branch=main", cwd=work)
        commits = []
        for revision in history:
            branches = git("branch", "--list", revision.branch, cwd=work)
            git("checkout", "--quiet", *([] if branches else ["-b"]), revision.branch, cwd=work)
            for old in work.iterdir():
                if old.name != ".git":
                    shutil.rmtree(old) if old.is_dir() else old.unlink()
            for path, text in revision.files.items():
                (work / path).parent.mkdir(parents=True, exist_ok=True)
                (work / path).write_text(text)
            git("add", "--all", cwd=work)
            git("commit", "--quiet", "--allow-empty", "-m", f"revision {len(commits)}", cwd=work)
            if revision.tag:
                git("tag", revision.tag, cwd=work)
            commits.append(git("rev-parse", "HEAD", cwd=work))
        git("checkout", "--quiet", "main", cwd=work)
        git("clone", "--quiet", "--bare", str(work), str(self.repos / name), cwd=work)
        return commits

    def authorized(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{self.USER}:{self.PASSWORD}".encode()).decode()
        return header == f"Basic {expected}"


class _GitHandler(_QuietHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
        self._backend()

    def do_POST(self) -> None:  # noqa: N802
        self._backend()

    def _backend(self) -> None:
        server: GitServer = self.server.owner  # type: ignore[attr-defined]
        path, _, query = self.path.partition("?")
        env = {"GIT_PROJECT_ROOT": str(server.repos), "GIT_HTTP_EXPORT_ALL": "1",
               "REQUEST_METHOD": self.command, "PATH_INFO": path, "QUERY_STRING": query,
               "CONTENT_TYPE": self.headers.get("Content-Type", ""),
               "CONTENT_LENGTH": self.headers.get("Content-Length", ""),
               "PATH": "/usr/bin:/bin"}
        for name in ("Git-Protocol", "Content-Encoding"):  # protocol v2, gzipped requests
            if name in self.headers:
                env["HTTP_" + name.upper().replace("-", "_")] = self.headers[name]
        if path.startswith("/private/"):
            if not server.authorized(self.headers.get("Authorization")):
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            env["REMOTE_USER"] = server.USER
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        result = subprocess.run(["git", "http-backend"], input=body, env=env,
                                capture_output=True, check=False)
        head, _, payload = result.stdout.partition(b"\r\n\r\n")
        headers = [line.split(":", 1) for line in head.decode().split("\r\n") if ":" in line]
        status = next((value.strip() for name, value in headers if name.lower() == "status"),
                      "200 OK")
        code, _, reason = status.partition(" ")
        self.send_response(int(code), reason)
        for name, value in headers:
            if name.lower() != "status":
                self.send_header(name, value.strip())
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)
