"""The `creators` include: the API keys that created the resources of a list."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import rfc3339
from app.hubs.models import ApiKey


def creators_include(session: Session, hub_id: str, key_ids: Iterable[str]) -> dict[str, Any]:
    wanted = set(key_ids)
    keys = session.scalars(select(ApiKey).where(ApiKey.id.in_(wanted), ApiKey.hub_id == hub_id)
                           ) if wanted else []
    return {"api_keys": {key.id: {
        "id": key.id,
        "name": key.name,
        "creator": {"id": key.id, "type": "api-key"},
        "hub_id": key.hub_id,
        "permissions": {"all_environments": True, "environments": []},
        "capabilities": {"all": key.capabilities_all, "specific": list(key.capabilities)},
        "ips": None,
        "state": {"current": "deleted" if key.revoked else "live",
                  "changed": rfc3339(key.revoked or key.created)},
        "events": {"created": rfc3339(key.created)},
    } for key in keys}}
