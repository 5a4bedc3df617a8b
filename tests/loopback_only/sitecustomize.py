"""Keeps a process on loopback: put this folder on PYTHONPATH and Python loads it at start.

The fuzz run's worker (tests/test_fuzz.py) is handed hosts the fuzzer made up. The network guard
refuses internal addresses but lets public ones by, as it should in production; here nothing may
leave the machine, not even a DNS query carrying a made-up name. So, in this process only:

- a host name resolves only if it is an IP literal or `localhost` and its addresses are loopback;
  anything else fails as a name that does not exist (the guard then refuses it), unasked;
- a pull goes only to a registry on a loopback address. The engine, not this process, resolves
  the registry of a pull, and falls back from its mirror to Docker Hub on the internet.
"""

from __future__ import annotations

import ipaddress
import socket
from urllib.parse import urlsplit

_getaddrinfo = socket.getaddrinfo


def _is_loopback(host: str) -> bool:
    host = host.strip("[]").split("%", 1)[0]
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _loopback_getaddrinfo(host, *args, **kwargs):
    if isinstance(host, bytes):
        host = host.decode()
    if host is not None and not _is_loopback(host):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (loopback only)")
    return _getaddrinfo(host, *args, **kwargs)


def _registry(reference: str) -> str:
    """The registry a reference names, as Docker reads it (`docker.io` when none is named)."""
    first, slash, _ = reference.partition("/")
    if slash and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _guard_pulls() -> None:
    from workers import engine

    pull = engine.Engine.pull

    def loopback_pull(self, reference, auth, **options):
        registry = _registry(reference)
        if not _is_loopback(urlsplit(f"//{registry}").hostname or registry):
            raise engine.EngineError(f"{registry} is not on loopback; this worker pulls only "
                                     "from loopback registries.")
        return pull(self, reference, auth, **options)

    engine.Engine.pull = loopback_pull


socket.getaddrinfo = _loopback_getaddrinfo
_guard_pulls()
