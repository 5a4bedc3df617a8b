"""Request authentication: `Authorization: Bearer <key>` plus `X-Hub-Id`, then one capability."""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from flask import g, request

from app import errors
from app.hubs.models import ApiKey, Capability
from app.hubs.services import key_for_secret
from app.web import db_session


@dataclass(frozen=True)
class Principal:
    hub_id: str
    key_id: str

    @property
    def creator(self) -> dict[str, str]:
        return {"id": self.key_id, "type": "api-key"}


def current() -> Principal:
    return g.principal


def requires(capability: Capability) -> Callable:
    """Authenticate the request and demand `capability`; the view finds `current()` set."""

    def decorate(view: Callable) -> Callable:
        @functools.wraps(view)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            # Already authenticated for this capability (app/idempotency/requests.py) or now.
            if "principal" not in g:
                g.principal = authenticate(capability)
            return view(*args, **kwargs)

        wrapper.capability = capability  # type: ignore[attr-defined]
        return wrapper

    return decorate


def authenticate(capability: Capability) -> Principal:
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not secret.strip():
        raise errors.AuthInvalid("Send the API key as `Authorization: Bearer <key>`.")
    key = key_for_secret(db_session(), secret.strip())
    if key is None:
        raise errors.AuthInvalid("The API key is not valid.")
    hub_id = request.headers.get("X-Hub-Id", "").strip()
    if not hub_id:
        raise errors.WrongHub("Send the hub's id in the `X-Hub-Id` header.")
    if hub_id != key.hub_id:
        raise errors.WrongHub("The API key does not belong to this hub.")
    return allowed(key, capability)


def allowed(key: ApiKey, capability: Capability) -> Principal:
    """The key as the request's principal, if it holds `capability`."""
    if not key.allows(capability):
        raise errors.PermissionDenied(f"This request needs the `{capability}` capability.",
                                      extra={"capability": capability.value})
    return Principal(hub_id=key.hub_id, key_id=key.id)
