"""The `follow` row's followers: long polls of jobs and Server-Sent Event streams of hubs, each a
greenlet on a raw socket, all in this one process, so that 500 of them cost the shared machine
little next to the API they follow.

`python -m tests.benchmarks.followers PLAN SEEN` reads PLAN (JSON: `base`, and `followers`, each
`{"kind": "poll" or "sse", "hub_id", "secret", "job_id" (poll)}`), prints `ready N` once all N
are waiting, and on SIGTERM writes to SEEN every change they saw, `[kind, follower, job id, wall
time]`, with the count of answers that were not 200, then exits.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from urllib.parse import urlsplit

import gevent
from gevent import socket
from gevent.event import Event

WAIT_SECONDS = 30


class Connection:
    """One HTTP/1.1 connection, read just enough for these answers."""

    def __init__(self, host: str, port: int):
        self.socket = socket.create_connection((host, port))
        self.buffer = b""

    def _fill(self) -> None:
        data = self.socket.recv(65536)
        if not data:
            raise ConnectionError("the API closed the connection")
        self.buffer += data

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def ask(self, request: bytes) -> tuple[int, dict[str, str]]:
        self.socket.sendall(request)
        return self.answer()

    def answer(self) -> tuple[int, dict[str, str]]:
        """The answer's status and headers (names in lower case)."""
        status = int(self.line().split()[1])
        headers = {}
        while line := self.line():
            name, _, value = line.decode("latin-1").partition(":")
            headers[name.strip().lower()] = value.strip()
        return status, headers

    def body(self, headers: dict[str, str]) -> bytes:
        return self.exactly(int(headers.get("content-length", "0")))

    def chunks(self):
        """A chunked body, chunk by chunk, as it arrives."""
        while size := int(self.line().split(b";")[0], 16):
            yield self.exactly(size)
            self.line()


class Followers:
    def __init__(self, plan: dict):
        base = urlsplit(plan["base"])
        self.address = (base.hostname, base.port)
        self.plan = plan["followers"]
        self.seen: list[tuple[str, int, str, float]] = []
        self.errors = 0
        self.waiting: set[int] = set()
        self.all_waiting = Event()

    def _request(self, follower: dict, target: str, *headers: str) -> bytes:
        lines = [f"GET {target} HTTP/1.1", "Host: bench", f"X-Hub-Id: {follower['hub_id']}",
                 f"Authorization: Bearer {follower['secret']}", *headers]
        return ("\r\n".join(lines) + "\r\n\r\n").encode()

    def _waits(self, index: int) -> None:
        self.waiting.add(index)
        if len(self.waiting) == len(self.plan):
            self.all_waiting.set()

    def long_poll(self, index: int, follower: dict) -> None:
        """GET the job, then `?wait=` with its ETag again and again; a new ETag is a change."""
        path = f"/v1/jobs/{follower['job_id']}"
        tag = None
        # The first wait is of any length, as for clients that came at different times: waits
        # that all end at once would come back together, every WAIT_SECONDS.
        wait = random.uniform(1, WAIT_SECONDS)
        while True:
            try:
                connection = Connection(*self.address)
                while True:
                    if tag is None:
                        connection.socket.sendall(self._request(follower, path))
                    else:
                        connection.socket.sendall(self._request(
                            follower, f"{path}?wait={wait:.1f}", f"If-None-Match: {tag}"))
                        wait = WAIT_SECONDS
                        self._waits(index)
                    status, headers = connection.answer()
                    connection.body(headers)
                    seen = time.time()
                    if status != 200:
                        self.errors += 1
                        gevent.sleep(1)
                        continue
                    if tag is not None and headers["etag"] != tag:
                        self.seen.append(("poll", index, follower["job_id"], seen))
                    tag = headers["etag"]
            except (ConnectionError, OSError):
                self.errors += 1
                gevent.sleep(1)

    def event_stream(self, index: int, follower: dict) -> None:
        """The hub's Server-Sent Events; each `job.state.changed` is a change of its job."""
        while True:
            try:
                connection = Connection(*self.address)
                status, headers = connection.ask(self._request(
                    follower, "/v1/hubs/current/notifications", "Accept: text/event-stream"))
                if status != 200:
                    connection.body(headers)
                    self.errors += 1
                    gevent.sleep(1)
                    continue
                pending = ""
                for chunk in connection.chunks():
                    seen = time.time()
                    pending += chunk.decode()
                    while "\n\n" in pending:
                        event, pending = pending.split("\n\n", 1)
                        if event.startswith("retry:"):
                            self._waits(index)
                        for line in event.splitlines():
                            message = json.loads(line[6:]) if line.startswith("data: ") else {}
                            if message.get("topic") == "job.state.changed":
                                self.seen.append(("sse", index, message["object"]["id"], seen))
            except (ConnectionError, OSError):
                self.errors += 1
                gevent.sleep(1)

    def start(self) -> None:
        for index, follower in enumerate(self.plan):
            run = self.long_poll if follower["kind"] == "poll" else self.event_stream
            gevent.spawn(run, index, follower)
            gevent.sleep(0.002)  # a steady opening, not 500 connections in one instant


def main(plan_path: str, seen_path: str) -> None:
    with open(plan_path) as file:
        followers = Followers(json.load(file))
    stop = Event()
    gevent.signal_handler(signal.SIGTERM, stop.set)
    followers.start()
    gevent.wait([followers.all_waiting, stop], count=1)
    print(f"ready {len(followers.waiting)}", flush=True)
    stop.wait()
    with open(seen_path, "w") as file:
        json.dump({"seen": followers.seen, "errors": followers.errors}, file)


if __name__ == "__main__":
    main(*sys.argv[1:])
