"""Build contexts: fetched from a tar.gz URL or a git repository, checked, packed for the engine.

Nothing a user sends is extracted to disk. An archive is read as a stream and re-packed, member by
member, into a plain tar of just the `context_dir`; a repository is cloned into a scratch folder
and packed the same way. Either way every member is checked first: no absolute paths, no `..`,
no links that leave the context, no devices, and no more than the configured sizes and counts.
"""

from __future__ import annotations

import ipaddress
import os
import posixpath
import shlex
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

from app.archives import ArchiveRefused, checked_name
from app.config import get_settings
from workers.netguard import AddressRefused, IPAddress, PinnedAdapter, check_host


class ContextError(Exception):
    """The context cannot be had or is refused; `message` says why, for the person who asked."""

    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.message = message
        self.transient = transient


def redact(url: str) -> str:
    """A URL fit to show: no user or password, no query (presigned URLs carry tokens there)."""
    parts = urlsplit(url)
    if not parts.scheme:
        return url.split("@", 1)[-1] if "@" in url else url
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def clean_path(value: str | None, default: str = "") -> str:
    """A path inside the context, relative, `/` as separator; `..` is refused."""
    path = posixpath.normpath("/" + (value or default).strip()).lstrip("/")
    if path == ".":
        path = ""
    if ".." in path.split("/"):
        raise ContextError(f"The path `{value}` leaves the build context.")
    return path


@dataclass
class Packer:
    """Writes checked members of the context under `context_dir` into a plain tar."""

    out: IO[bytes]
    context_dir: str
    build_file: str
    members: int = 0
    expanded: int = 0
    written: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        settings = get_settings()
        self.max_members = settings.context_max_members
        self.max_expanded = settings.context_max_expanded_bytes
        self.tar = tarfile.open(fileobj=self.out, mode="w", format=tarfile.PAX_FORMAT)  # noqa: SIM115 (closed in finish)

    def add(self, member: tarfile.TarInfo, data: IO[bytes] | None) -> None:
        name = self._check(member)
        relative = self._within_context(name)
        if relative is None:
            return
        member = member.replace(name=relative, uid=0, gid=0, uname="", gname="", deep=False)
        if member.issym():
            # A link may not reach past the context directory either, like a hard link.
            self._within_context(posixpath.normpath(posixpath.join(
                posixpath.dirname(name), member.linkname)), required=True)
        if member.islnk():
            member = member.replace(linkname=self._within_context(
                posixpath.normpath(member.linkname), required=True),
                deep=False)
        self.tar.addfile(member, data if member.isfile() else None)
        self.written.add(relative)

    def finish(self) -> None:
        self.tar.close()
        if not self.written:
            raise ContextError(f"The context directory `/{self.context_dir}` is not in the "
                               "build context (no file lies under it).")
        if self.build_file not in self.written:
            where = f" under `/{self.context_dir}`" if self.context_dir else ""
            raise ContextError(f"The Dockerfile `/{self.build_file}` is not in the build "
                               f"context{where}.")

    def _check(self, member: tarfile.TarInfo) -> str:
        self.members += 1
        if self.members > self.max_members:
            raise ContextError(f"The build context has more than {self.max_members} files.")
        try:
            name = checked_name(member, "the context")
        except ArchiveRefused as exc:
            raise ContextError(exc.message) from None
        self.expanded += max(member.size, 0)
        if self.expanded > self.max_expanded:
            raise ContextError(f"The build context is larger than {self.max_expanded} bytes "
                               "expanded.")
        return name

    def _within_context(self, name: str, required: bool = False) -> str | None:
        if not self.context_dir:
            return name
        if name == self.context_dir:
            return "."
        if name.startswith(self.context_dir + "/"):
            return name[len(self.context_dir) + 1:]
        if required:
            raise ContextError(f"The link to `{name[:200]}` points outside the context directory.")
        return None


def pack_archive(archive: IO[bytes], packer: Packer) -> None:
    """Re-pack a (gzipped) tar stream, refusing it whole at the first bad member."""
    try:
        with tarfile.open(fileobj=archive, mode="r|*") as source:
            for member in source:
                packer.add(member, source.extractfile(member) if member.isfile() else None)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ContextError(f"The build context is not a readable tar.gz archive ({exc}).") from None
    packer.finish()


def pack_directory(root: Path, packer: Packer) -> None:
    """Pack a checked-out repository (without its .git) the same way as an archive."""
    for directory, subdirs, files in os.walk(root, followlinks=False):
        subdirs[:] = sorted(d for d in subdirs if not (Path(directory) == root and d == ".git"))
        for name in sorted(subdirs) + sorted(files):
            path = Path(directory, name)
            arcname = path.relative_to(root).as_posix()
            info = packer.tar.gettarinfo(str(path), arcname)
            if info.isfile():
                with open(path, "rb") as data:
                    packer.add(info, data)
            else:
                packer.add(info, None)
    packer.finish()


MAX_REDIRECTS = 5


def download(url: str, into: IO[bytes]) -> None:
    """Fetch a tar.gz over http(s) into `into`, bounded in size and time.

    Redirects are followed here, not by the HTTP library, so that each hop's host is checked,
    and each hop connects only to the addresses its check approved.
    """
    settings = get_settings()
    limit = settings.context_max_download_bytes
    for _ in range(MAX_REDIRECTS + 1):
        shown = redact(url)
        addresses = _check_url(url)
        try:
            with _get(url, addresses, timeout=(10, settings.fetch_timeout_seconds)) as response:
                if response.is_redirect:
                    url = urljoin(url, response.headers["Location"])
                    continue
                if response.status_code >= 400:
                    raise ContextError(f"Fetching the build context from {shown} failed: the "
                                       f"server answered {response.status_code} "
                                       f"{response.reason}.",
                                       transient=response.status_code >= 500)
                received = 0
                for block in response.iter_content(1024 * 1024):
                    received += len(block)
                    if received > limit:
                        raise ContextError(f"The build context at {shown} is larger than the "
                                           f"limit of {limit} bytes.")
                    into.write(block)
        except requests.Timeout:
            raise ContextError(f"The server at {shown} did not answer within "
                               f"{settings.fetch_timeout_seconds} seconds.",
                               transient=True) from None
        except requests.ConnectionError as exc:
            raise ContextError(f"The build context at {shown} could not be fetched: the server "
                               f"could not be reached ({type(exc).__name__}).",
                               transient=True) from None
        into.flush()
        into.seek(0)
        return
    raise ContextError(f"Fetching the build context took more than {MAX_REDIRECTS} redirects.")


def _check_url(url: str) -> list[IPAddress]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ContextError(f"`{redact(url)}` is not an http:// or https:// URL.")
    return check_reachable(parts.hostname, parts.port)


def _get(url: str, addresses: list[IPAddress], timeout: tuple[float, float]) -> requests.Response:
    """GET `url` (streamed, no redirect followed) from the first checked address that answers.

    Like a connection made from a fresh lookup, an address that cannot be connected to gives way
    to the next; a TLS failure does not.
    """
    *others, last = addresses
    for address in others:
        try:
            return _get_from(address, url, timeout)
        except requests.ConnectionError as exc:
            if isinstance(exc, requests.exceptions.SSLError):
                raise
    return _get_from(last, url, timeout)


def _get_from(address: IPAddress, url: str, timeout: tuple[float, float]) -> requests.Response:
    with requests.Session() as session:
        # Nothing from the worker's environment: a proxy would resolve the name again, and the
        # worker's .netrc credentials are not for a user's hosts.
        session.trust_env = False
        session.mount("http://", PinnedAdapter(address))
        session.mount("https://", PinnedAdapter(address))
        return session.get(url, stream=True, timeout=timeout, allow_redirects=False)


def check_reachable(host: str, port: int | None = None) -> list[IPAddress]:
    """The addresses `host` may be reached at (see `check_host`), or a ContextError."""
    try:
        return check_host(host, port)
    except AddressRefused as exc:
        raise ContextError(exc.message, transient=exc.transient) from None


@dataclass(frozen=True)
class RepoSpec:
    url: str
    branch: str | None = None
    ref_type: str | None = None  # tag | hash
    ref_value: str | None = None
    username: str | None = None
    password: str | None = None
    private_key: str | None = None
    passphrase: str | None = None


def clone(repo: RepoSpec, scratch: Path) -> Path:
    """Check the repository out at its branch, tag or commit into `scratch`/checkout."""
    settings = get_settings()
    target = scratch / "checkout"
    host, port = _repo_host(repo.url)
    url, pinning, ssh_options = _pinned(repo.url, host, port, check_reachable(host, port))
    env = _git_environment(repo, scratch, ssh_options)
    shown = redact(repo.url)
    if repo.ref_type == "hash":
        steps = [["clone", "--no-checkout", "--quiet", "--", url, str(target)],
                 ["-C", str(target), "checkout", "--quiet", "--detach", repo.ref_value or "",
                  "--"]]
    else:
        name = repo.ref_value if repo.ref_type == "tag" else repo.branch
        branch = ["--branch", name] if name else []
        steps = [["clone", "--depth", "1", "--quiet", *branch, "--", url, str(target)]]
    for step in steps:
        try:
            result = subprocess.run(["git", "-c", "credential.helper=",
                                     # A redirect could lead past the host check above.
                                     "-c", "http.followRedirects=false", *pinning, "-c",
                                     "core.askPass=" + env["GIT_ASKPASS"], *step],
                                    env=env, capture_output=True, text=True,
                                    timeout=settings.git_timeout_seconds, cwd=scratch)
        except subprocess.TimeoutExpired:
            raise ContextError(f"Cloning {shown} took longer than "
                               f"{settings.git_timeout_seconds} seconds.", transient=True) from None
        if result.returncode != 0:
            raise ContextError(_git_failure(repo, shown, result.stderr))
    shutil.rmtree(target / ".git", ignore_errors=True)
    return target


def _repo_host(url: str) -> tuple[str, int | None]:
    """The host a repository URL reaches: `https://h/…`, `ssh://u@h:p/…` or scp-like `u@h:…`."""
    if "://" in url:
        parts = urlsplit(url)
        if not parts.hostname:
            raise ContextError(f"`{redact(url)}` names no host.")
        return parts.hostname, parts.port
    host = url.split(":", 1)[0].rsplit("@", 1)[-1]
    if not host or "/" in host:
        raise ContextError(f"`{redact(url)}` is not a repository URL this service can clone.")
    return host, 22


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _pinned(url: str, host: str, port: int | None,
            addresses: list[IPAddress]) -> tuple[str, list[str], list[str]]:
    """Have git connect to the checked `addresses` rather than resolve `host` again.

    Returns the URL to clone, options for git and options for ssh.
    """
    if _is_address(host):
        return url, [], []  # nothing is resolved
    scheme = urlsplit(url).scheme if "://" in url else "ssh"
    if scheme in ("http", "https"):
        # curl takes these answers instead of resolving; "*" also covers another spelling of the
        # host (case, IDN) and names nothing else, since git follows no redirect.
        where = f"{port or _DEFAULT_PORTS[scheme]}:" + ",".join(map(_url_host, addresses))
        return url, ["-c", f"http.curloptResolve={host}:{where}",
                     "-c", f"http.curloptResolve=*:{where}"], []
    if scheme == "git":
        # git's own protocol resolves the host it is given and takes no address beside it.
        parts = urlsplit(url)
        netloc = _url_host(addresses[0]) + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc)), [], []
    # ssh connects to the address and still knows the server's key by the host's name.
    return url, [], ["-o", f"HostName={addresses[0]}", "-o", f"HostKeyAlias={host}"]


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _url_host(address: IPAddress) -> str:
    return f"[{address}]" if address.version == 6 else str(address)


def _git_environment(repo: RepoSpec, scratch: Path, ssh_options: list[str]) -> dict[str, str]:
    """Credentials reach git through an askpass script and the environment, never the URL."""
    askpass = scratch / "askpass.sh"
    askpass.write_text('#!/bin/sh\ncase "$1" in\n  Username*) printf "%s" "$IMAGEJOBS_GIT_USER";;'
                       '\n  *) printf "%s" "$IMAGEJOBS_GIT_SECRET";;\nesac\n')
    askpass.chmod(0o700)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(scratch),
        "GIT_ASKPASS": str(askpass), "SSH_ASKPASS": str(askpass), "SSH_ASKPASS_REQUIRE": "force",
        "GIT_TERMINAL_PROMPT": "0", "GIT_CONFIG_NOSYSTEM": "1",
        # Only network protocols: a repository URL must not read the worker's own files.
        "GIT_ALLOW_PROTOCOL": "http:https:ssh:git",
        "IMAGEJOBS_GIT_USER": repo.username or "",
        "IMAGEJOBS_GIT_SECRET": repo.password or repo.passphrase or "",
    }
    ssh = ["ssh", "-o", "StrictHostKeyChecking=accept-new",
           "-o", f"UserKnownHostsFile={scratch / 'known_hosts'}", *ssh_options]
    if repo.private_key:
        key = scratch / "id_key"
        key.write_text(repo.private_key.strip() + "\n")
        key.chmod(0o600)
        ssh += ["-i", str(key), "-o", "IdentitiesOnly=yes", "-o", "BatchMode=no"]
    env["GIT_SSH_COMMAND"] = shlex.join(ssh)
    return env


# What git prints when the server wants other credentials, or none is there. HTTP statuses are
# matched in git's own words: a bare "401" also turns up in ports, hosts and commit hashes.
_REFUSED = ("authentication failed", "permission denied", "could not read username",
            "returned error: 401", "returned error: 403", "invalid username or password")


def _git_failure(repo: RepoSpec, shown: str, stderr: str) -> str:
    text = stderr.lower()
    detail = " ".join(line.strip() for line in stderr.strip().splitlines()[-3:])[:500]
    if repo.password:
        detail = detail.replace(repo.password, "********")
    if any(s in text for s in _REFUSED):
        if not (repo.username or repo.password or repo.private_key):
            return (f"The repository {shown} requires credentials, and the image source has "
                    f"none ({detail}).")
        return f"The repository {shown} refused the credentials of the image source ({detail})."
    if "remote branch" in text and "not found" in text:
        which = f"tag `{repo.ref_value}`" if repo.ref_type == "tag" else f"branch `{repo.branch}`"
        return f"The repository {shown} has no {which}."
    if repo.ref_type == "hash" and any(s in text for s in ("did not match", "reference is not a "
                                                           "tree", "unable to read tree")):
        return f"The repository {shown} has no commit `{repo.ref_value}`."
    if any(s in text for s in ("not found", "does not appear to be a git repository",
                               "repository not found", "returned error: 404")):
        return f"The repository {shown} does not exist or cannot be read ({detail})."
    if "transport" in text and "not allowed" in text:
        return f"The repository URL {shown} must use http, https, ssh or git."
    return f"Cloning {shown} failed: {detail}"
