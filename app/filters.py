"""List filters every resource shares, for the services (no Flask here)."""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from sqlalchemy import Select

from app import errors


def by_state(query: Select, column: Any, states: list[str], known: type[StrEnum], what: str,
             hidden: str | None = None) -> Select:
    """`filter[state]=a,b` keeps those states; without it, everything but `hidden` (deleted)."""
    if states:
        unknown = set(states) - {s.value for s in known}
        if unknown:
            raise errors.InvalidArgument(f"Unknown {what} state `{sorted(unknown)[0]}`.",
                                         source="filter[state]")
        return query.where(column.in_(states))
    return query.where(column != hidden) if hidden else query
