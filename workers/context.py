"""Build contexts: fetched from a tar.gz URL or a git repository, checked, packed for the engine.

Nothing a user sends is extracted to disk. An archive is read as a stream and re-packed, member by
member, into a plain tar of just the `context_dir`; a repository is cloned into a scratch folder,
its files counted and sized before any is checked out, and packed the same way. Either way every
member is checked first: no absolute paths, no `..`, no links that leave the context (followed
through the context's own links), no devices, and no more than the configured sizes and counts.
Downloads and clones are bounded in time as a whole, not only per read.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import os
import posixpath
import select
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urljoin, urlsplit, urlunsplit

import requests

from app.archives import ArchiveRefused, LinkTree, checked_name, open_tar
from app.config import get_settings
from workers import cancellation
from workers.deadline import Deadline
from workers.faults import JobFailed
from workers.netguard import IPAddress, PinnedAdapter, check_host


class ContextError(JobFailed):
    """The context cannot be had or is refused; `message` says why, for the person who asked."""


@contextlib.contextmanager
def _refusals() -> Iterator[None]:
    """An archive refused is a context refused, for the same reason."""
    try:
        yield
    except ArchiveRefused as exc:
        raise ContextError(exc.message) from None


def redact(url: str) -> str:
    """A URL fit to show: no user or password, no query (presigned URLs carry tokens there)."""
    if "://" not in url:  # scp-like `user@host:path`: the user goes, up to the path
        head, slash, rest = url.partition("/")
        return head.rpartition("@")[2] + slash + rest
    parts = urlsplit(url)
    # The host as written, brackets and port included: `hostname` drops an IPv6 address's
    # brackets, and `port` raises on a bad one.
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def clean_path(value: str | None, default: str = "") -> str:
    """A path inside the context, relative, `/` as separator; a `..` in it is refused."""
    raw = (value or default).strip()
    if ".." in raw.split("/"):
        raise ContextError(f"The path `{raw[:200]}` leaves the build context: `..` is not taken "
                           "in `context_dir` or `build_file`.")
    path = posixpath.normpath("/" + raw).lstrip("/")
    return "" if path == "." else path


def _too_many_files(limit: int) -> ContextError:
    return ContextError(f"The build context has more than {limit} files.")


def _too_large(limit: int) -> ContextError:
    return ContextError(f"The build context is larger than {limit} bytes expanded.")


@dataclass
class Packer:
    """Writes checked members of the context under `context_dir` into a plain tar.

    `written` holds what was packed, links included, laid out as the engine will unpack it:
    `len(written)` counts the members, `name in written` finds one.
    """

    out: IO[bytes]
    context_dir: str
    build_file: str
    members: int = 0
    expanded: int = 0
    written: LinkTree = field(default_factory=lambda: LinkTree("the context"))

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
        # A fresh header under the checked name: none of the archive's own PAX records (a 64 KB
        # comment on every member would reach the engine's disk uncounted). A copy, not
        # TarInfo.replace: that is Python 3.11.4's, and Debian 12 has 3.11.2.
        member = copy.copy(member)
        member.name, member.uid, member.gid, member.uname, member.gname = relative, 0, 0, "", ""
        member.pax_headers = {}
        if member.issym():
            # A link may not reach past the context directory either, like a hard link.
            self._within_context(posixpath.normpath(posixpath.join(
                posixpath.dirname(name), member.linkname)), required=True)
        if member.islnk():
            member.linkname = self._within_context(posixpath.normpath(member.linkname),
                                                   required=True)
        with _refusals():  # judged with the links packed before it; all links again at the end
            self.written.add(relative, member)
        self.tar.addfile(member, data if member.isfile() else None)

    def finish(self) -> None:
        self.tar.close()
        if not self.written:
            raise ContextError(f"The context directory `/{self.context_dir}` is not in the "
                               "build context (no file lies under it).")
        with _refusals():
            self.written.check()
        if self.build_file not in self.written:
            where = f" under `/{self.context_dir}`" if self.context_dir else ""
            raise ContextError(f"The Dockerfile `/{self.build_file}` is not in the build "
                               f"context{where}.")

    def _check(self, member: tarfile.TarInfo) -> str:
        self.members += 1
        if self.members > self.max_members:
            raise _too_many_files(self.max_members)
        with _refusals():
            name = checked_name(member, "the context")
        self.expanded += max(member.size, 0)
        if self.expanded > self.max_expanded:
            raise _too_large(self.max_expanded)
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
    """Re-pack a (gzipped) tar stream, refusing it whole at the first bad member or header."""
    try:
        with _refusals(), open_tar(archive, "r|*") as source:
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
    """Fetch a tar.gz over http(s) into `into`, bounded in size and in time.

    Redirects are followed here, not by the HTTP library, so that each hop's host is checked,
    and each hop connects only to the addresses its check approved. One deadline
    (IMAGEJOBS_FETCH_MAX_SECONDS) bounds every hop together, however the server paces its bytes.
    """
    settings = get_settings()
    with Deadline(settings.fetch_max_seconds) as deadline:
        for _ in range(MAX_REDIRECTS + 1):
            shown = redact(url)
            addresses = _check_url(url)
            try:
                location = _fetch(url, addresses, into, deadline)
            except requests.RequestException as exc:
                if deadline.cancelled:
                    raise cancellation.stopped("The download of the build context") from None
                raise _slow(shown) if deadline.passed else _unreachable(shown, exc) from None
            if deadline.cancelled:  # a body without a length ends like this one was cut
                raise cancellation.stopped("The download of the build context")
            if deadline.passed:
                raise _slow(shown)
            if location is None:
                into.flush()
                into.seek(0)
                return
            url = urljoin(url, location)
    raise ContextError(f"Fetching the build context took more than {MAX_REDIRECTS} redirects.")


def _fetch(url: str, addresses: list[IPAddress], into: IO[bytes], deadline: Deadline) -> str | None:
    """One hop: the body written to `into`, or the Location it redirects to."""
    settings = get_settings()
    limit = settings.context_max_download_bytes
    shown = redact(url)
    with _get(url, addresses, (10, settings.fetch_timeout_seconds), deadline) as response:
        if response.is_redirect:
            return response.headers["Location"]
        if response.status_code >= 400:
            raise ContextError(f"Fetching the build context from {shown} failed: the server "
                               f"answered {response.status_code} {response.reason}.",
                               transient=response.status_code >= 500)
        received = 0
        for block in response.iter_content(1024 * 1024):
            received += len(block)
            if received > limit:
                raise ContextError(f"The build context at {shown} is larger than the limit of "
                                   f"{limit} bytes.")
            into.write(block)
    return None


def _slow(shown: str) -> ContextError:
    # Not retried: a server this slow would hold a worker slot that long on every attempt.
    seconds = get_settings().fetch_max_seconds
    return ContextError(f"Fetching the build context from {shown} took longer than {seconds} "
                        f"seconds, the most a download may take (IMAGEJOBS_FETCH_MAX_SECONDS).")


def _unreachable(shown: str, exc: requests.RequestException) -> ContextError:
    if isinstance(exc, requests.Timeout):
        return ContextError(f"The server at {shown} did not answer within "
                            f"{get_settings().fetch_timeout_seconds} seconds.", transient=True)
    return ContextError(f"The build context at {shown} could not be fetched: the server could "
                        f"not be reached or broke off ({type(exc).__name__}).", transient=True)


def _check_url(url: str) -> list[IPAddress]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ContextError(f"`{redact(url)}` is not an http:// or https:// URL.")
    return check_host(parts.hostname, parts.port)


def _get(url: str, addresses: list[IPAddress], timeout: tuple[float, float],
         deadline: Deadline) -> requests.Response:
    """GET `url` (streamed, no redirect followed) from the first checked address that answers.

    Like a connection made from a fresh lookup, an address that cannot be connected to gives way
    to the next; a TLS failure does not.
    """
    *others, last = addresses
    for address in others:
        try:
            return _get_from(address, url, timeout, deadline)
        except requests.ConnectionError as exc:
            if isinstance(exc, requests.exceptions.SSLError) or deadline.passed:
                raise
    return _get_from(last, url, timeout, deadline)


def _get_from(address: IPAddress, url: str, timeout: tuple[float, float],
              deadline: Deadline) -> requests.Response:
    with requests.Session() as session:
        # Nothing from the worker's environment: a proxy would resolve the name again, and the
        # worker's .netrc credentials are not for a user's hosts.
        session.trust_env = False
        session.mount("http://", PinnedAdapter(address, deadline))
        session.mount("https://", PinnedAdapter(address, deadline))
        return session.get(url, stream=True, timeout=timeout, allow_redirects=False)


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
    """Check the repository out at its branch, tag or commit into `scratch`/checkout.

    Within a context's limits before anything is written: git is stopped once the scratch
    folder holds more than IMAGEJOBS_CONTEXT_MAX_DOWNLOAD, and the commit's files are counted
    and sized (`git ls-tree`) before the checkout writes any. IMAGEJOBS_GIT_TIMEOUT bounds all
    the steps together.
    """
    settings = get_settings()
    target = scratch / "checkout"
    host, port = _repo_host(repo.url)
    url, pinning, ssh_options = _pinned(repo.url, host, port, check_host(host, port))
    env = _git_environment(repo, scratch, ssh_options)
    git = _Git(repo, env, scratch, ["-c", "credential.helper=",
                                    # A redirect could lead past the host check above.
                                    "-c", "http.followRedirects=false", *pinning,
                                    "-c", "core.askPass=" + env["GIT_ASKPASS"]])
    if repo.ref_type == "hash":
        fetch, wanted = ["clone", "--no-checkout", "--quiet"], repo.ref_value or ""
    else:
        name = repo.ref_value if repo.ref_type == "tag" else repo.branch
        fetch = ["clone", "--no-checkout", "--depth", "1", "--quiet",
                 *(["--branch", name] if name else [])]
        wanted = "HEAD"
    download = settings.context_max_download_bytes
    git.run([*fetch, "--", url, str(target)], bound=_Bound(
        download, lambda: _folder_size(scratch),
        f"The repository {git.shown} is larger than the limit of {download} bytes to download."))
    commit = git.commit(target, wanted)
    tally = _TreeTally(settings.context_max_members, settings.context_max_expanded_bytes)
    git.run(["-C", str(target), "ls-tree", "-r", "-t", "-l", "-z", commit], output=tally.feed)
    expanded = settings.context_max_expanded_bytes
    # The sizes are known now; a checkout still grows them with the repository's attributes
    # (line endings, `ident`, `working-tree-encoding`), so it is bounded too.
    git.run(["-C", str(target), "checkout", "--quiet", "--detach", commit, "--"], bound=_Bound(
        expanded, lambda: _folder_size(target, skip=".git"), _too_large(expanded).message))
    shutil.rmtree(target / ".git", ignore_errors=True)
    return target


@dataclass(frozen=True)
class _Bound:
    """The most bytes a git step may leave (in `measure()`, and in any one file), and the
    refusal past it."""

    limit: int
    measure: Callable[[], int]
    message: str


# How often a running git step is looked at, and the share of its time spent measuring.
_POLL_SECONDS = 0.2
_MEASURE_SHARE = 0.1
# `ulimit -f` bounds each file git writes, by the kernel; with SIGXFSZ ignored the write fails
# ("File too large") instead of killing git silently.
_FILE_LIMITED = 'ulimit -f "$1" && trap "" XFSZ && shift && exec "$@"'


class _Git:
    """The git commands of one clone: under one deadline together, each in a process group of
    its own, so that stopping git stops its helpers (remote-https, index-pack, ssh) too."""

    def __init__(self, repo: RepoSpec, env: dict[str, str], cwd: Path, options: list[str]):
        self.repo, self.env, self.cwd, self.options = repo, env, cwd, options
        self.shown = redact(repo.url)
        self.seconds = get_settings().git_timeout_seconds
        self.deadline = time.monotonic() + self.seconds
        self.token = cancellation.current()  # polled as the deadline is

    def commit(self, target: Path, wanted: str) -> str:
        """The full id of the commit `wanted` names, which no later step can read as an option."""
        found: list[bytes] = []
        self.run(["-C", str(target), "rev-parse", "--verify", "--quiet", "--end-of-options",
                  f"{wanted}^{{commit}}"], output=found.append,
                 failure=f"The repository {self.shown} has no commit `{wanted}`."
                 if self.repo.ref_type == "hash" else
                 f"The repository {self.shown} has no commit to check out (it is empty).")
        return b"".join(found).decode().strip()

    def run(self, args: list[str], *, bound: _Bound | None = None,
            output: Callable[[bytes], None] | None = None, failure: str | None = None) -> None:
        command = ["git", *self.options, *args]
        if bound is not None:
            command = ["sh", "-c", _FILE_LIMITED, "git", str(-(-bound.limit // 512)), *command]
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(command, env=self.env, cwd=self.cwd,
                                       stdin=subprocess.DEVNULL, stderr=errors,
                                       stdout=subprocess.PIPE if output else subprocess.DEVNULL,
                                       process_group=0)
            try:
                self._follow(process, bound, output)
            except BaseException:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # git has not been waited for yet
                process.wait()
                raise
            finally:
                if process.stdout:
                    process.stdout.close()
            stderr = _tail(errors)
        if process.returncode == 0:
            return
        if bound is not None and "file too large" in stderr.lower():
            raise ContextError(bound.message)
        raise ContextError(failure or _git_failure(self.repo, self.shown, stderr))

    def _follow(self, process: subprocess.Popen, bound: _Bound | None,
                output: Callable[[bytes], None] | None) -> None:
        """Wait for git, handing its output on, until the deadline or the bound is passed."""
        stream = process.stdout
        measured = 0.0  # when the bound may be measured again
        while True:
            now = time.monotonic()
            if self.token is not None and self.token.cancelled:
                raise cancellation.stopped(f"The clone of {self.shown}")
            if now >= self.deadline:
                raise ContextError(f"Cloning {self.shown} took longer than {self.seconds} "
                                   "seconds.", transient=True)
            if bound is not None and now >= measured:
                if bound.measure() > bound.limit:
                    raise ContextError(bound.message)
                measured = now + (time.monotonic() - now) / _MEASURE_SHARE
            wait = min(self.deadline - now, _POLL_SECONDS)
            if stream is not None and output is not None:
                if select.select([stream], [], [], wait)[0]:
                    chunk = os.read(stream.fileno(), 1 << 16)
                    if chunk:
                        output(chunk)
                    else:
                        stream = None
                continue
            try:
                process.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def _tail(file: IO[bytes], size: int = 1 << 16) -> str:
    file.seek(0, os.SEEK_END)
    file.seek(max(0, file.tell() - size))
    return file.read().decode(errors="replace")


def _folder_size(folder: Path, skip: str | None = None) -> int:
    """The bytes of the files under `folder` (not `folder`/`skip`), as far as they exist now."""
    total = 0
    for directory, subdirs, files in os.walk(folder):
        if skip and directory == str(folder):
            subdirs[:] = [d for d in subdirs if d != skip]
        for name in files:
            with contextlib.suppress(OSError):  # gone while we looked
                total += os.lstat(os.path.join(directory, name)).st_size
    return total


class _TreeTally:
    """Counts and sizes `git ls-tree -r -t -l -z` entries, refusing past a context's limits."""

    MAX_ENTRY = 1 << 16  # far above a real entry: mode, type, id, size, a path git can check out

    def __init__(self, max_members: int, max_expanded: int):
        self.max_members, self.max_expanded = max_members, max_expanded
        self.members = self.expanded = 0
        self.pending = b""

    def feed(self, chunk: bytes) -> None:
        *entries, self.pending = (self.pending + chunk).split(b"\0")
        if len(self.pending) > self.MAX_ENTRY:
            raise ContextError("The repository holds a path longer than any a checkout can write.")
        for entry in entries:
            mode_type_id_size = entry.split(b"\t", 1)[0].split()
            self.members += 1
            if self.members > self.max_members:
                raise _too_many_files(self.max_members)
            if mode_type_id_size[1:2] == [b"blob"]:
                self.expanded += int(mode_type_id_size[3])
                if self.expanded > self.max_expanded:
                    raise _too_large(self.max_expanded)


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
