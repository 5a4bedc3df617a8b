"""Fault injection: a mixed load on a real API, workers, Redis, Postgres and Docker, with faults.

`python -m tests.faults.run --help` (or `make faults FAULT_ARGS="--seed 7 --jobs 40"`).

Importing this package puts the harness's environment in place (its own database and Redis db,
short leases and sweeps), because the app reads its settings once, at first import.
"""

from __future__ import annotations

import os

DATABASE = "imagejobs_faults"
REDIS_DB = 6
REDIS_URL = f"redis://127.0.0.1:6379/{REDIS_DB}"
NODE_ID = "faults-node"
LEASE_SECONDS = 6

os.environ.update({
    "DATABASE_URL": f"postgresql+psycopg://postgres@127.0.0.1:5432/{DATABASE}",
    "REDIS_URL": REDIS_URL,
    "IMAGEJOBS_SECRET_KEY": "faults-secret-not-for-production",
    "IMAGEJOBS_NODE_ID": NODE_ID,
    "IMAGEJOBS_ALLOWED_NETWORKS": "127.0.0.1/32",
    "IMAGEJOBS_LEASE_SECONDS": str(LEASE_SECONDS),
    "IMAGEJOBS_SWEEP_SECONDS": "1",
    "IMAGEJOBS_REPUBLISH_SECONDS": "10",
    "IMAGEJOBS_RETRY_SECONDS": "1",
    # A stopping worker gives its running jobs this long (the default 20 s only slows the run).
    "IMAGEJOBS_SHUTDOWN_SECONDS": "5",
})
os.environ.setdefault("DOCKER_HOST", "unix:///var/run/docker.sock")
