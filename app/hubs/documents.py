"""The `creators` include: the API keys that created the resources of a list."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from app.db import rfc3339
from app.documents import Creator, Document, Id, Time, stored
from app.hubs import models
from app.hubs.models import Capability


class KeyPermissions(Document):
    all_environments: bool
    environments: list[str]


class KeyCapabilities(Document):
    all: bool
    specific: stored(list[Capability])


class KeyState(Document):
    current: Literal["live", "deleted"]
    changed: Time


class KeyEvents(Document):
    created: Time


class ApiKey(Document):
    id: Id
    name: str
    creator: Creator
    hub_id: Id
    permissions: KeyPermissions
    capabilities: KeyCapabilities
    ips: None
    state: KeyState
    events: KeyEvents

    @classmethod
    def of(cls, key: models.ApiKey) -> ApiKey:
        return cls(
            id=key.id, name=key.name, creator=Creator(id=key.id, type="api-key"),
            hub_id=key.hub_id,
            permissions=KeyPermissions(all_environments=True, environments=[]),
            capabilities=KeyCapabilities(all=key.capabilities_all,
                                         specific=list(key.capabilities)),
            ips=None,
            state=KeyState(current="deleted" if key.revoked else "live",
                           changed=rfc3339(key.revoked or key.created)),
            events=KeyEvents(created=rfc3339(key.created)))


class CreatorsInclude(Document):
    api_keys: dict[str, ApiKey]


def creators_include(session: Session, hub_id: str, key_ids: Iterable[str]) -> CreatorsInclude:
    wanted = set(key_ids)
    keys = session.scalars(select(models.ApiKey).where(
        models.ApiKey.id.in_(wanted), models.ApiKey.hub_id == hub_id)) if wanted else []
    return CreatorsInclude(api_keys={key.id: ApiKey.of(key) for key in keys})
