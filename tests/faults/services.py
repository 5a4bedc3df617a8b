"""The harness's own Redis and Postgres, and a TCP proxy in front of that Redis, so faults can
restart them or cut the broker without touching the shared services other tests use.

    with Services() as services:        # ports from tests.faults (its environment points there)
        services.postgres.create_database("imagejobs_faults")
        services.redis.restart()             # empty again: nothing is persisted
        services.postgres.restart(down=2)    # `pg_ctl stop -m fast`, 2 s down, start
        services.proxy.cut()                 # every proxied connection closed, new ones refused
        services.proxy.resume()

Each runs in a temporary directory removed at the end; Postgres runs as the `postgres` OS user
when the harness runs as root (initdb refuses root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import selectors
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import redis
from sqlalchemy import create_engine, text

from tests.faults import BROKER_PORT, POSTGRES_PORT, REDIS_PORT

PG_BIN = Path(os.environ.get("IMAGEJOBS_FAULTS_PG_BIN", "/usr/lib/postgresql/15/bin"))
READY_SECONDS = 60


def _wait(ready, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + READY_SECONDS
    while not ready():
        if time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-2000:] if log and log.exists() else ""
            raise RuntimeError(f"{what} did not become ready in {READY_SECONDS} s\n{tail}")
        time.sleep(0.1)


class PrivateRedis:
    """A redis-server child process without persistence: a restart comes back empty."""

    def __init__(self, directory: Path, port: int = REDIS_PORT):
        self.directory = directory
        self.port = port
        self.log = directory / "redis.log"
        self.process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.directory), "--logfile", str(self.log),
             "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        _wait(self._pings, f"redis-server on port {self.port}", self.log)

    def stop(self) -> None:
        """SIGKILL: a crash, not a shutdown; nothing is saved either way."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def restart(self, down: float = 0.0) -> None:
        self.stop()
        time.sleep(down)
        self.start()

    def _pings(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError(f"redis-server exited:\n{self.log.read_text(errors='replace')}")
        client = redis.Redis(port=self.port, socket_connect_timeout=1, socket_timeout=1)
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()


class PrivatePostgres:
    """A Postgres cluster of its own (initdb, pg_ctl), trust auth for `postgres` on 127.0.0.1."""

    def __init__(self, directory: Path, port: int = POSTGRES_PORT):
        self.directory = directory
        self.port = port
        self.data = directory / "data"
        self.log = directory / "postgres.log"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        if not self.data.exists():
            self._init()
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._ctl("stop", "-m", mode)

    def restart(self, down: float = 0.0) -> None:
        """`pg_ctl restart -m fast`, or stop, `down` seconds without a server, then start."""
        if down <= 0:
            self._ctl("restart", "-m", "fast")
        else:
            self.stop()
            time.sleep(down)
            self._ctl("start")

    def create_database(self, name: str) -> None:
        admin = create_engine(self.url(), isolation_level="AUTOCOMMIT")
        try:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                connection.execute(text(f'CREATE DATABASE "{name}"'))
        finally:
            admin.dispose()

    def _init(self) -> None:
        self._as_owner([str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U",
                        "postgres", "-E", "UTF8", "--no-sync"])
        # Kept in the file, not on pg_ctl's command line, so every restart keeps them. Durability
        # is off: a restart here is a fast shutdown or start, never a lost disk.
        with open(self.data / "postgresql.conf", "a") as conf:
            conf.write(f"\nport = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                       f"unix_socket_directories = '{self.directory}'\nmax_connections = 400\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n")

    def _ctl(self, *args: str) -> None:
        self._as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
                        "-t", str(READY_SECONDS), *args])

    def _as_owner(self, command: list[str]) -> None:
        if os.geteuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.directory)
        if result.returncode != 0:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n"
                               f"{result.stdout}{result.stderr}\n{tail}")


class BrokerProxy:
    """A TCP proxy on `port` forwarding to Redis on `upstream`: a thread that accepts, and a
    thread per connection pumping both ways. `cut()` closes every connection and stops listening
    (so new ones are refused) until `resume()`."""

    def __init__(self, upstream: int, port: int = BROKER_PORT):
        self.upstream = upstream
        self.port = port
        self._listener: socket.socket | None = None
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self.accepted = 0
        self.cuts = 0

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(128)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="broker-proxy",
                         daemon=True).start()

    resume = start

    def cut(self) -> int:
        """Close every proxied connection and refuse new ones; how many were open."""
        with self._lock:
            listener, self._listener = self._listener, None
            victims = list(self._open)
            self._open.clear()
            self.cuts += 1
        if listener is not None:
            _close(listener)
        for sock in victims:
            _close(sock)
        return len(victims) // 2

    stop = cut

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by cut()
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=3)
            except OSError:  # Redis itself is down: the client sees its connection closed
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while connecting
                    _close(client)
                    _close(server)
                    return
                self._open.update((client, server))
                self.accepted += 1
            threading.Thread(target=self._pump, args=(client, server), name="broker-pipe",
                             daemon=True).start()

    def _pump(self, client: socket.socket, server: socket.socket) -> None:
        peer = {client: server, server: client}
        with selectors.DefaultSelector() as selector:
            for sock in peer:
                selector.register(sock, selectors.EVENT_READ)
            try:
                while True:
                    for key, _ in selector.select(timeout=1):
                        data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                        if not data:
                            return
                        peer[key.fileobj].sendall(data)  # type: ignore[index]
            except (OSError, ValueError):  # closed by cut(), or by either end
                return
            finally:
                with self._lock:
                    self._open.discard(client)
                    self._open.discard(server)
                _close(client)
                _close(server)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


class Services:
    """Redis, the proxy in front of it, and Postgres, in one temporary directory; `stop()` (or
    leaving the `with`) stops them all and removes it, whatever state they are in."""

    def __init__(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="imagejobs-faults-services-"))
        if os.geteuid() == 0:  # Postgres runs as its own user and needs the directory
            owner = pwd.getpwnam("postgres")
            os.chown(self.directory, owner.pw_uid, owner.pw_gid)
        self.redis = PrivateRedis(self.directory)
        self.proxy = BrokerProxy(self.redis.port)
        self.postgres = PrivatePostgres(self.directory)

    def start(self) -> Services:
        try:
            self.redis.start()
            self.proxy.start()
            self.postgres.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        self.proxy.stop()
        self.redis.stop()
        with contextlib.suppress(RuntimeError):
            self.postgres.stop("immediate")
        if (self.postgres.data / "postmaster.pid").exists():  # pg_ctl failed: the server's pid
            with contextlib.suppress(ValueError, OSError):
                pid = int((self.postgres.data / "postmaster.pid").read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> Services:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
