"""Checks on the members of a user's tar archive, shared by uploads and build contexts.

Nothing here extracts anything: a member is judged by its header alone, before any byte of it
is written anywhere.
"""

from __future__ import annotations

import posixpath
import tarfile


class ArchiveRefused(Exception):
    """The archive is refused; `message` names the member and the reason."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def checked_name(member: tarfile.TarInfo, place: str = "its folder") -> str:
    """The member's normalised name, or ArchiveRefused for anything that could escape `place`."""
    raw = member.name
    shown = raw[:200]
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise ArchiveRefused(f"The archive member `{shown}` has an absolute path.")
    name = posixpath.normpath(raw)
    if name == ".." or name.startswith("../") or ".." in raw.split("/"):
        raise ArchiveRefused(f"The archive member `{shown}` would land outside {place}.")
    if member.isdev() or not (member.isfile() or member.isdir() or member.issym()
                              or member.islnk()):
        raise ArchiveRefused(f"The archive member `{shown}` is a device or special file.")
    if member.issym():
        target = member.linkname
        resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
        if target.startswith("/") or resolved == ".." or resolved.startswith("../"):
            raise ArchiveRefused(f"The link `{shown}` points outside {place} "
                                 f"(to `{target[:200]}`).")
    if member.islnk():
        target = posixpath.normpath(member.linkname)
        if member.linkname.startswith("/") or target == ".." or target.startswith("../"):
            raise ArchiveRefused(f"The link `{shown}` points outside {place}.")
    return "" if name == "." else name
