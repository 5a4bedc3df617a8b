"""Server-Sent Events read from lines of text, as the HTML standard's parser reads them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    event: str
    data: str
    id: str | None


def events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of a stream given line by line (without their line ends).

    A blank line dispatches the event gathered so far; comments (`:`) are keep-alives; an event
    with no data is not dispatched; `id` is remembered from one event to the next.
    """
    kind, data, last_id = "", [], None
    for line in lines:
        if not line:
            if data:
                yield Event(kind or "message", "\n".join(data), last_id)
            kind, data = "", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            kind = value
        elif field == "data":
            data.append(value)
        elif field == "id" and "\0" not in value:
            last_id = value
