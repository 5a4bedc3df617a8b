"""The canary: a task whose only work is to say it was consumed, for `imagejobs health`.

A worker process can be alive and still deaf (it stopped consuming after a broker reconnect); only
a message that went through the broker and came back proves it works.
"""

from __future__ import annotations

import redis
from celery import shared_task

from app.config import get_settings
from workers.runner import worker_name

CANARY_KEY = "imagejobs:canary:{token}"


@shared_task(name="imagejobs.canary", acks_late=False)
def canary(token: str) -> None:
    client = redis.Redis.from_url(get_settings().redis_url)
    try:
        client.set(CANARY_KEY.format(token=token), worker_name(), ex=300)
    finally:
        client.close()
