"""Fault injection: a mixed load on a real API, workers, Redis, Postgres and Docker, with faults.

`python -m tests.faults.run --help` (or `make faults FAULT_ARGS="--seed 7 --jobs 40"`).

Importing this package puts the harness's environment in place (short leases and sweeps, a short
broker visibility timeout, and URLs of its own Redis and Postgres, which `tests.faults.services`
starts: faults may restart them), because the app reads its settings once, at first use. Their
ports are picked now, free and below the kernel's ephemeral range (so no outgoing connection can
take one before the server binds it), unless IMAGEJOBS_FAULTS_{REDIS,BROKER,POSTGRES}_PORT fix them.
"""

from __future__ import annotations

import os
import random
import socket


def _port(variable: str, taken: set[int]) -> int:
    if os.environ.get(variable):
        return int(os.environ[variable])
    rng = random.SystemRandom()
    while True:
        port = rng.randrange(20000, 30000)
        if port in taken:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        taken.add(port)
        return port


_taken: set[int] = set()
REDIS_PORT = _port("IMAGEJOBS_FAULTS_REDIS_PORT", _taken)  # the private redis-server
BROKER_PORT = _port("IMAGEJOBS_FAULTS_BROKER_PORT", _taken)  # the proxy the API and workers use
POSTGRES_PORT = _port("IMAGEJOBS_FAULTS_POSTGRES_PORT", _taken)

DATABASE = "imagejobs_faults"
REDIS_DB = 0
REDIS_URL = f"redis://127.0.0.1:{BROKER_PORT}/{REDIS_DB}"  # through the proxy
NODE_ID = "faults-node"
LEASE_SECONDS = 6
# Shorter than the longest builds the load makes, so the broker hands their messages out again
# while they run; claiming in Postgres must keep the second delivery from building again.
VISIBILITY_TIMEOUT = 10

os.environ.update({
    "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:{POSTGRES_PORT}/{DATABASE}",
    "REDIS_URL": REDIS_URL,
    "IMAGEJOBS_SECRET_KEY": "faults-secret-not-for-production",
    "IMAGEJOBS_NODE_ID": NODE_ID,
    "IMAGEJOBS_ALLOWED_NETWORKS": "127.0.0.1/32",
    "IMAGEJOBS_LEASE_SECONDS": str(LEASE_SECONDS),
    "IMAGEJOBS_SWEEP_SECONDS": "1",
    "IMAGEJOBS_REPUBLISH_SECONDS": "10",
    "IMAGEJOBS_RETRY_SECONDS": "1",
    "IMAGEJOBS_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
    # A stopping worker gives its running jobs this long (the default 20 s only slows the run).
    "IMAGEJOBS_SHUTDOWN_SECONDS": "5",
})
os.environ.setdefault("DOCKER_HOST", "unix:///var/run/docker.sock")
