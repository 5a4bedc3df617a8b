"""Checks on the members of a user's tar archive, shared by uploads and build contexts.

Nothing here extracts anything: a member is judged by its header alone, before any byte of it
is written anywhere. `open_tar` reads headers with bounds, so that a tiny archive cannot make
the reader hold a gigabyte-long name or PAX record in memory.
"""

from __future__ import annotations

import posixpath
import tarfile
from typing import IO

# Far above a real long name or PAX record (a few hundred bytes) and far below harm.
MAX_HEADER_BYTES = 64 * 1024
# Extended headers in a row before the member they describe (GNU tar writes at most two).
MAX_EXTENDED_HEADERS = 8
# Keys a global PAX header may leave in force for the rest of the archive.
MAX_GLOBAL_PAX_KEYS = 64


class ArchiveRefused(Exception):
    """The archive is refused; `message` names the member and the reason."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class _BoundedTarInfo(tarfile.TarInfo):
    """A TarInfo that refuses oversized or endless extended headers before reading them whole.

    `tarfile` reads a GNU long name or a PAX record into memory at once, whatever size its
    header claims, and follows a chain of them by recursion. Sparse members are refused: their
    maps are read without bound, and neither `docker save` nor a build context needs them.
    """

    def _proc_gnulong(self, tarfile):  # noqa: ANN001, ANN202 (tarfile's own signature)
        self._bounded(tarfile)
        return super()._proc_gnulong(tarfile)

    def _proc_pax(self, tarfile):  # noqa: ANN001, ANN202
        self._bounded(tarfile)
        result = super()._proc_pax(tarfile)
        if len(tarfile.pax_headers) > MAX_GLOBAL_PAX_KEYS:
            raise ArchiveRefused(f"The archive's global PAX headers set more than "
                                 f"{MAX_GLOBAL_PAX_KEYS} keys.")
        return result

    def _proc_builtin(self, tarfile):  # noqa: ANN001, ANN202
        tarfile.imagejobs_extended_headers = 0
        return super()._proc_builtin(tarfile)

    def _proc_sparse(self, tarfile):  # noqa: ANN001, ANN202
        raise ArchiveRefused(f"The archive member `{self.name[:200]}` is a sparse file, which "
                             "this service does not take.")

    def _proc_gnusparse_00(self, next, pax_headers, buf):  # noqa: A002, ANN001, ANN202
        raise ArchiveRefused("The archive holds a sparse file, which this service does not take.")

    _proc_gnusparse_01 = _proc_gnusparse_10 = _proc_gnusparse_00

    def _bounded(self, tarfile) -> None:  # noqa: ANN001
        if self.size > MAX_HEADER_BYTES:
            raise ArchiveRefused(f"The archive has an extended header of {self.size} bytes; "
                                 f"at most {MAX_HEADER_BYTES} are taken.")
        count = getattr(tarfile, "imagejobs_extended_headers", 0) + 1
        if count > MAX_EXTENDED_HEADERS:
            raise ArchiveRefused(f"The archive has more than {MAX_EXTENDED_HEADERS} extended "
                                 "headers in a row.")
        tarfile.imagejobs_extended_headers = count


def open_tar(fileobj: IO[bytes], mode: str) -> tarfile.TarFile:
    """`tarfile.open` on a user's archive, with every header read under the bounds above.

    Raises ArchiveRefused (already while opening, for the first member) as well as tarfile's
    own errors.
    """
    return tarfile.open(fileobj=fileobj, mode=mode, tarinfo=_BoundedTarInfo)


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
