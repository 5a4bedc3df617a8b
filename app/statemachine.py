"""A resource's states and the moves allowed between them, as data."""

from __future__ import annotations

from collections.abc import Mapping


class InvalidTransition(Exception):
    """A state change the machine does not allow: a bug or a race, never a client's input."""


class StateMachine:
    def __init__(self, name: str, transitions: Mapping[str, set[str]], final: set[str] = frozenset()):
        self.name = name
        self.transitions = transitions
        self.final = frozenset(final)

    def check(self, current: str, new: str) -> str:
        if new not in self.transitions.get(current, set()):
            raise InvalidTransition(f"{self.name} cannot go from {current} to {new}")
        return new
