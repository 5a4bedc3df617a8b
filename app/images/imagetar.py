"""An uploaded image tar, read the same way by the API that takes it and the worker that loads it.

The engine unpacks an upload whole, then reads `manifest.json` (or, on some engines,
`index.json`, or `repositories` in the legacy format) and sets the tags those files name. So
every member is judged by its name as the engine will see it: a name given twice, a member
written through a symlink, or a manifest that is a link would let the engine read another file
than the one checked, and are refused. The copy the worker hands the engine holds the manifest
rewritten without tags and none of the other files that can name one.
"""

from __future__ import annotations

import contextlib
import io
import json
import posixpath
import tarfile
import zlib
from typing import IO, Any

from app.archives import ArchiveRefused, checked_name, open_tar

MANIFEST = "manifest.json"
# Files that can name tags: the legacy `repositories`, and an OCI layout (`index.json` with its
# `oci-layout` marker), whose annotations name images on engines with the containerd store.
# Without them every engine takes the image from the manifest alone.
TAG_FILES = frozenset({"repositories", "index.json", "oci-layout"})
# A manifest lists one image's config and layers: a few kilobytes.
MAX_MANIFEST_BYTES = 1024 * 1024
_BLOCK = 1024 * 1024


class BrokenTar(ArchiveRefused):
    """Not a whole, readable tar: cut short, or not a tar at all."""


def read_image_tar(stream: IO[bytes], untagged: IO[bytes] | None = None) -> dict[str, Any]:
    """Read a `docker save` tar to its end and check it; with `untagged`, write there the copy
    the engine may load. Returns the image's manifest entry, without tags.

    Raises ArchiveRefused (BrokenTar for a tar that is cut short or not a tar). Members are read
    in blocks, never whole.
    """
    members = _Members()
    manifest: Any = None
    try:
        with open_tar(stream, "r|") as tar, _writer(untagged) as out:
            for member in tar:
                name = members.add(member)
                if name == MANIFEST:
                    manifest = _read_manifest(tar, member)
                elif name in TAG_FILES or not name:
                    _drain(tar, member)
                else:
                    _copy(tar, member, name, out)
            entry = _checked_entry(manifest, members)
            if out is not None:
                encoded = json.dumps([entry]).encode()
                info = tarfile.TarInfo(MANIFEST)
                info.size, info.mode = len(encoded), 0o644
                out.addfile(info, io.BytesIO(encoded))
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise BrokenTar(f"The upload is not a complete tar archive ({exc}).") from None
    return entry


class _Members:
    """The names seen so far, as the engine will read them, and the symlinks among them."""

    def __init__(self) -> None:
        self.kinds: dict[str, bool] = {}  # name -> is a folder
        self.symlinks: set[str] = set()
        self.parents: set[str] = set()

    def add(self, member: tarfile.TarInfo) -> str:
        name = checked_name(member)
        shown = name[:200]
        if name in self.kinds:
            raise ArchiveRefused(f"The archive holds `{shown}` twice (names are compared as the "
                                 "engine reads them: `./a` and `a` are one name).")
        if not name and not member.isdir():
            raise ArchiveRefused("The archive has a member named `.` that is not a folder.")
        parents = _parents(name)
        through = next((p for p in parents if p in self.symlinks), None)
        if through is None and member.issym() and name in self.parents:
            through = name
        if through is not None:
            raise ArchiveRefused(f"The archive member `{shown}` lies under the link `{through}`: "
                                 "the engine would write it where that link points.")
        if member.issym():
            self.symlinks.add(name)
        self.parents.update(parents)
        self.kinds[name] = member.isdir()
        return name

    def is_file(self, name: str) -> bool:
        # `docker save` links a layer that an image holds twice to its first copy; the engine
        # follows such a link inside the unpacked tar, so a link is a file here.
        return self.kinds.get(name) is False and name != MANIFEST and name not in TAG_FILES


def _parents(name: str) -> list[str]:
    parts = name.split("/")[:-1]
    return ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]


def _read_manifest(tar: tarfile.TarFile, member: tarfile.TarInfo) -> Any:
    if not member.isfile():
        raise ArchiveRefused(f"`{MANIFEST}` is a link or a folder; it must be a regular file.")
    if member.size > MAX_MANIFEST_BYTES:
        raise ArchiveRefused(f"`{MANIFEST}` is {member.size} bytes; at most "
                             f"{MAX_MANIFEST_BYTES} are taken.")
    data = tar.extractfile(member).read()
    try:
        return json.loads(data)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError too
        raise ArchiveRefused(f"`{MANIFEST}` is not JSON ({str(exc)[:200]}).") from None


def _checked_entry(manifest: Any, members: _Members) -> dict[str, Any]:
    """The manifest's one image as `docker save` writes it, its paths checked and normalised."""
    if manifest is None:
        raise ArchiveRefused(f"The archive is not a Docker image tar (it has no {MANIFEST}); "
                             "make it with `docker save`.")
    if not isinstance(manifest, list) or not all(isinstance(e, dict) for e in manifest):
        raise ArchiveRefused(f"`{MANIFEST}` is not a list of images as `docker save` writes it.")
    if len(manifest) != 1:
        raise ArchiveRefused(f"`{MANIFEST}` lists {len(manifest)} images; upload one image per "
                             "tar (`docker save` of one image).")
    config, layers = manifest[0].get("Config"), manifest[0].get("Layers")
    if not isinstance(config, str) or not isinstance(layers, list):
        raise ArchiveRefused(f"`{MANIFEST}` gives no `Config` file and `Layers` list for its "
                             "image.")
    # Only what loading needs is kept: tags, under whatever spelling, and anything else go.
    return {"Config": _member_file(config, members),
            "RepoTags": None, "Layers": [_member_file(layer, members) for layer in layers]}


def _member_file(path: Any, members: _Members) -> str:
    name = posixpath.normpath(path) if isinstance(path, str) and path else ""
    if not members.is_file(name):
        raise ArchiveRefused(f"`{MANIFEST}` names `{str(path)[:200]}`, which is not a file in "
                             "the archive.")
    return name


def _drain(tar: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    """Read a member to its end in blocks, so that an archive cut short fails here."""
    if member.isfile():
        data = tar.extractfile(member)
        while data.read(_BLOCK):
            pass


def _copy(tar: tarfile.TarFile, member: tarfile.TarInfo, name: str,
          out: tarfile.TarFile | None) -> None:
    if out is None:
        _drain(tar, member)
        return
    # A fresh header under the checked name: nothing of the original (PAX records, owners)
    # reaches the engine.
    info = tarfile.TarInfo(name)
    info.type = tarfile.REGTYPE if member.isfile() else member.type
    info.mode = member.mode & 0o777
    info.mtime = int(member.mtime) if 0 < member.mtime < 2**33 else 0
    if member.isfile():
        info.size = member.size
    elif member.issym():
        info.linkname = member.linkname
    elif member.islnk():
        info.linkname = posixpath.normpath(member.linkname)
    out.addfile(info, tar.extractfile(member) if member.isfile() else None)


def _writer(untagged: IO[bytes] | None) -> contextlib.AbstractContextManager:
    if untagged is None:
        return contextlib.nullcontext()
    return tarfile.open(fileobj=untagged, mode="w|", format=tarfile.PAX_FORMAT)
