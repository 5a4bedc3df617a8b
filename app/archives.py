"""Checks on the members of a user's tar archive, shared by uploads and build contexts.

Nothing here extracts anything: a member is judged by its header alone, before any byte of it
is written anywhere. `open_tar` reads headers with bounds, so that a tiny archive cannot make
the reader hold a gigabyte-long name or PAX record in memory, nor spend minutes parsing one.
`LinkTree` follows paths through the archive's own symlinks, as an extraction would.
"""

from __future__ import annotations

import posixpath
import re
import tarfile
from typing import IO

# Far above a real long name or PAX record (a few hundred bytes) and far below harm.
MAX_HEADER_BYTES = 64 * 1024
# Extended headers in a row before the member they describe (GNU tar writes at most two).
MAX_EXTENDED_HEADERS = 8
# Keys a global PAX header may leave in force for the rest of the archive.
MAX_GLOBAL_PAX_KEYS = 64
# What Linux takes for a path and for one of its parts (PATH_MAX, NAME_MAX): no extraction can
# make longer ones, and every name seen is kept while an archive is checked.
MAX_NAME_CHARS = 4096
MAX_NAME_PART_CHARS = 255
# Symlinks followed in one path before it counts as a loop, as Linux does (MAXSYMLINKS).
MAX_LINK_HOPS = 40

_PAX_LENGTH = re.compile(rb"([0-9]{1,20}) ")


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

    def _proc_pax(self, archive):  # noqa: ANN001, ANN202
        """tarfile's reading of a PAX header, its records parsed in one strict pass: this
        Python's own regular expressions take seconds on a crafted 64 KB header."""
        self._bounded(archive)
        records = _pax_records(archive.fileobj.read(self._block(self.size))[:self.size])
        is_global = self.type == tarfile.XGLTYPE
        pax_headers = archive.pax_headers if is_global else archive.pax_headers.copy()
        charset = next((value for key, value in records if key == b"hdrcharset"), None)
        binary = charset == b"BINARY" if charset is not None else (
            pax_headers.get("hdrcharset") == "BINARY")
        for key, value in records:
            keyword = self._decode_pax_field(key, "utf-8", "utf-8", archive.errors)
            names = keyword in tarfile.PAX_NAME_FIELDS and binary
            pax_headers[keyword] = self._decode_pax_field(
                value, archive.encoding if names else "utf-8",
                archive.encoding if keyword in tarfile.PAX_NAME_FIELDS else "utf-8",
                archive.errors)
        if is_global and len(pax_headers) > MAX_GLOBAL_PAX_KEYS:
            raise ArchiveRefused(f"The archive's global PAX headers set more than "
                                 f"{MAX_GLOBAL_PAX_KEYS} keys.")
        if any(keyword.startswith("GNU.sparse.") for keyword in pax_headers):
            raise ArchiveRefused("The archive holds a sparse file, which this service does not "
                                 "take.")
        try:
            member = self.fromtarfile(archive)
        except tarfile.HeaderError as exc:
            raise tarfile.SubsequentHeaderError(str(exc)) from None
        if not is_global:  # a global header's keys reached the member through archive.pax_headers
            member._apply_pax_info(pax_headers, archive.encoding, archive.errors)
            member.offset = self.offset
            member._not_negative()
            if "size" in pax_headers:  # the member's data ends elsewhere than its header said
                archive.offset = member.offset_data + (
                    member._block(member.size)
                    if member.isreg() or member.type not in tarfile.SUPPORTED_TYPES else 0)
        return member

    def _proc_builtin(self, tarfile):  # noqa: ANN001, ANN202
        self._not_negative()
        tarfile.imagejobs_extended_headers = 0
        return super()._proc_builtin(tarfile)

    def _proc_sparse(self, tarfile):  # noqa: ANN001, ANN202
        raise ArchiveRefused(f"The archive member `{self.name[:200]}` is a sparse file, which "
                             "this service does not take.")

    def _not_negative(self) -> None:
        # A negative size moves the reader backwards: the same header read again, for ever.
        if self.size < 0:
            raise ArchiveRefused(f"The archive member `{self.name[:200]}` has a negative size.")

    def _bounded(self, tarfile) -> None:  # noqa: ANN001
        if not 0 <= self.size <= MAX_HEADER_BYTES:
            raise ArchiveRefused(f"The archive has an extended header of {self.size} bytes; "
                                 f"at most {MAX_HEADER_BYTES} are taken.")
        count = getattr(tarfile, "imagejobs_extended_headers", 0) + 1
        if count > MAX_EXTENDED_HEADERS:
            raise ArchiveRefused(f"The archive has more than {MAX_EXTENDED_HEADERS} extended "
                                 "headers in a row.")
        tarfile.imagejobs_extended_headers = count


def _pax_records(buf: bytes) -> list[tuple[bytes, bytes]]:
    """The (keyword, value) records of a PAX header, each framed `LENGTH keyword=value\\n`."""
    records = []
    position = 0
    while position < len(buf) and buf[position] != 0:
        match = _PAX_LENGTH.match(buf, position)
        end = position + int(match.group(1)) if match else -1
        if not match or not position + 5 <= end <= len(buf) or buf[end - 1] != 0x0A:
            raise ArchiveRefused(_MALFORMED_PAX)
        keyword, equals, value = buf[match.end():end - 1].partition(b"=")
        if not keyword or not equals:
            raise ArchiveRefused(_MALFORMED_PAX)
        records.append((keyword, value))
        position = end
    return records


_MALFORMED_PAX = "The archive has a malformed PAX header (a record not framed `LENGTH key=value`)."


class _StreamTarFile(tarfile.TarFile):
    """Forgets each member once read: a stream is read once, front to back, and tarfile would
    otherwise keep every header of it (names, PAX records) in memory to the end."""

    def next(self) -> tarfile.TarInfo | None:  # noqa: A003 (tarfile's own name)
        member = super().next()
        self.members.clear()
        return member


def open_tar(fileobj: IO[bytes], mode: str) -> tarfile.TarFile:
    """`tarfile.open` on a user's archive, with every header read under the bounds above.

    In a stream mode (`r|`, `r|*`) members are not kept: iterate once, and do not extract hard
    links. Raises ArchiveRefused (already while opening, for the first member) as well as
    tarfile's own errors.
    """
    opener = _StreamTarFile.open if "|" in mode else tarfile.open
    return opener(fileobj=fileobj, mode=mode, tarinfo=_BoundedTarInfo)


def checked_name(member: tarfile.TarInfo, place: str = "its folder") -> str:
    """The member's normalised name, or ArchiveRefused for anything that could escape `place`.

    Links are judged here by their own target alone; `LinkTree` follows them through the
    archive's other links.
    """
    raw = member.name
    shown = raw[:200]
    if raw.startswith("/") or (len(raw) > 1 and raw[1] == ":"):
        raise ArchiveRefused(f"The archive member `{shown}` has an absolute path.")
    name = posixpath.normpath(raw)
    if name == ".." or name.startswith("../") or ".." in raw.split("/"):
        raise ArchiveRefused(f"The archive member `{shown}` would land outside {place}.")
    for path in (raw, member.linkname):
        if len(path) > MAX_NAME_CHARS or any(len(p) > MAX_NAME_PART_CHARS for p in path.split("/")):
            raise ArchiveRefused(f"The archive member `{shown}` has a name or link longer than a "
                                 f"path may be ({MAX_NAME_CHARS} characters, "
                                 f"{MAX_NAME_PART_CHARS} between slashes).")
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


class _Node:
    """A folder, file or link of the archive once extracted; `link` is a symlink's target."""

    __slots__ = ("children", "link", "parent")

    def __init__(self, parent: _Node | None = None) -> None:
        self.children: dict[str, _Node] = {}
        self.link: str | None = None
        self.parent = parent


class LinkTree:
    """The members of an archive laid out as an extraction lays them out, symlinks included.

    `add` every checked member in order, `check` after the last. A member whose folder, followed
    through the links written before it, lies above the root is refused when added; at the end
    every link is followed through all the archive's links, and refused if it leads above the
    root or into a loop. A name may be a link only once, and never also a folder or a file.
    `len()` counts the members; `name in tree` says whether a member lies at that path.
    """

    def __init__(self, place: str = "its folder") -> None:
        self.place = place
        self.root = _Node()
        self.links: list[tuple[str, _Node]] = []
        self.count = 0

    def __len__(self) -> int:
        return self.count

    def __contains__(self, name: str) -> bool:
        try:
            folder = self._walk([self.root], posixpath.dirname(name), name)[-1]
        except ArchiveRefused:
            return False
        return folder is not None and posixpath.basename(name) in folder.children

    def add(self, name: str, member: tarfile.TarInfo) -> None:
        """Place a member named as `checked_name` returns (relative to the root, no `..`)."""
        self.count += 1
        shown = name[:200]
        if name in ("", "."):
            if not member.isdir():
                raise ArchiveRefused(f"The archive member `{shown or '.'}` would replace "
                                     f"{self.place} itself: it is not a folder.")
            return
        folder = self._walk([self.root], posixpath.dirname(name), name, create=True)[-1]
        assert folder is not None  # created
        link = member.linkname if member.issym() else self._hard_link_target(member, name)
        base = posixpath.basename(name)
        node = folder.children.get(base)
        if node is not None and (node.link is not None or link is not None):
            raise ArchiveRefused(f"The archive holds `{shown}` twice, or as a link and as a "
                                 "folder: a link may not replace a member, nor a member a link.")
        if node is None:
            node = folder.children[base] = _Node(folder)
        if link is not None:
            node.link = link
            self.links.append((name, node))

    def check(self) -> None:
        """Follow every link through all the archive's links; ArchiveRefused if one escapes."""
        for name, node in self.links:
            self._walk(self._stack(node.parent), node.link or "", name, link=True)

    def _hard_link_target(self, member: tarfile.TarInfo, name: str) -> str | None:
        # A hard link to a symlink is that symlink again, read from the hard link's own folder.
        if not member.islnk():
            return None
        target = posixpath.normpath(member.linkname)
        folder = self._walk([self.root], posixpath.dirname(target), name)[-1]
        node = folder.children.get(posixpath.basename(target)) if folder is not None else None
        return node.link if node is not None else None

    @staticmethod
    def _stack(node: _Node | None) -> list[_Node | None]:
        stack: list[_Node | None] = []
        while node is not None:
            stack.append(node)
            node = node.parent
        return stack[::-1]

    def _walk(self, stack: list[_Node | None], path: str, name: str, create: bool = False,
              link: bool = False) -> list[_Node | None]:
        """Follow `path` from the folder atop `stack` as the kernel would, every link included;
        returns the stack of folders it ends in (None for those the archive does not hold)."""
        todo = path.split("/")[::-1]
        hops = 0
        what = f"The link `{name[:200]}`" if link else f"The archive member `{name[:200]}`"
        while todo:
            part = todo.pop()
            if part in ("", "."):
                continue
            if part == "..":
                if len(stack) == 1:
                    raise ArchiveRefused(f"{what} points outside {self.place} (followed through "
                                         "the archive's own links).")
                stack.pop()
                continue
            top = stack[-1]
            node = top.children.get(part) if top is not None else None
            if node is None and create and top is not None:
                node = top.children[part] = _Node(top)
            if node is not None and node.link is not None:
                hops += 1
                if node.link.startswith("/"):
                    raise ArchiveRefused(f"{what} points outside {self.place} (through a link "
                                         f"to `{node.link[:200]}`).")
                if hops > MAX_LINK_HOPS:
                    raise ArchiveRefused(f"{what} leads into a loop of links (more than "
                                         f"{MAX_LINK_HOPS} in a row).")
                todo.extend(node.link.split("/")[::-1])
                continue
            stack.append(node)
        return stack
