"""Which queues running workers consume, as each worker announces it in Redis, for /metrics.

Each worker's sweeper thread writes one key holding the queues its consumer reads, with a time to
live of a few sweeps: a worker that stopped (or whose consumer is down, mid-reconnect) drops out
on its own. A flushed broker forgets the announcements for at most one sweep.
"""

from __future__ import annotations

import json
from collections import Counter

import redis

_PREFIX = "imagejobs:consumer:"


def announce(client: redis.Redis, worker: str, queues: list[str], ttl_seconds: int) -> None:
    if queues:
        client.set(_PREFIX + worker, json.dumps(sorted(queues)), ex=ttl_seconds)
    else:
        client.delete(_PREFIX + worker)


def withdraw(client: redis.Redis, worker: str) -> None:
    client.delete(_PREFIX + worker)


def count(client: redis.Redis) -> Counter[str]:
    """Workers consuming each queue, by queue name."""
    keys = list(client.scan_iter(match=_PREFIX + "*", count=1000))
    consumers: Counter[str] = Counter()
    for value in client.mget(keys) if keys else ():
        if value is not None:  # it lapsed between the scan and the read
            consumers.update(json.loads(value))
    return consumers
