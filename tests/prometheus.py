"""Prometheus for the tests: promtool and a server of a test's own that scrapes an API and answers
queries, from Debian's `prometheus` package (deploy/local-services.sh installs it)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from tests.processes import free_port

PACKAGE_BINARIES = ("/usr/bin/promtool", "/usr/bin/prometheus")


def installed() -> None:
    missing = [path for path in PACKAGE_BINARIES if not os.access(path, os.X_OK)]
    assert not missing, (f"{', '.join(missing)} missing: `make services` installs Debian's "
                         "prometheus package for the tests")


def promtool(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    installed()
    return subprocess.run(["/usr/bin/promtool", *args], input=stdin, capture_output=True,
                          text=True, timeout=60)


@contextmanager
def prometheus_server(tmp_path: Path, target: str, rules: Path | None = None) -> Iterator[str]:
    """A Prometheus scraping `target` (host:port) every second; yields its base URL."""
    installed()
    config = tmp_path / "prometheus.yml"
    rule_files = f"rule_files: [{str(rules)!r}]\n" if rules else ""
    config.write_text("global: {scrape_interval: 1s, evaluation_interval: 1s}\n" + rule_files +
                      f"scrape_configs:\n  - job_name: imagejobs\n"
                      f"    static_configs: [{{targets: [{target!r}]}}]\n")
    address = f"127.0.0.1:{free_port()}"
    log = open(tmp_path / "prometheus.log", "w")  # noqa: SIM115 (the server's, until it stops)
    server = subprocess.Popen(["/usr/bin/prometheus", f"--config.file={config}",
                               f"--storage.tsdb.path={tmp_path / 'data'}",
                               f"--web.listen-address={address}"], stdout=log,
                              stderr=subprocess.STDOUT)
    base = f"http://{address}"
    try:
        deadline = time.monotonic() + 60
        while not _ready(base):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("Prometheus did not start:\n"
                                   + (tmp_path / "prometheus.log").read_text()[-3000:])
            time.sleep(0.3)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def _ready(base: str) -> bool:
    try:
        return requests.get(f"{base}/-/ready", timeout=5).ok
    except requests.RequestException:  # not listening yet
        return False


def query(base: str, expression: str) -> list[dict]:
    """The instant vector Prometheus answers for `expression`."""
    response = requests.get(f"{base}/api/v1/query", params={"query": expression}, timeout=10)
    assert response.ok, response.text
    body = response.json()
    assert body["status"] == "success", body
    return body["data"]["result"]
