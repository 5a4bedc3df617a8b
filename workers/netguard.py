"""Where a user's URL may lead: never to loopback, private, link-local or metadata addresses.

Every host a user names (a context URL and each redirect, a git repository, a registry) is
resolved and refused when any of its addresses lies in such a network, unless the operator
allows that network with IMAGEJOBS_ALLOWED_NETWORKS (comma-separated CIDRs). The connection then
goes to the addresses checked, never to a second answer for the name (DNS rebinding):
`PinnedAdapter` does so for HTTP; git is pinned in workers/context.py. An IPv6 address that
carries an IPv4 one (IPv4-mapped, NAT64) is judged as that address; 6to4, Teredo and the other
tunnelling ranges are refused whole. A `Deadline` bounds a whole HTTP transfer in time.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any
from urllib.parse import urlsplit

from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest
from urllib3.connectionpool import HTTPConnectionPool

from app.config import get_settings
from workers.deadline import Deadline
from workers.faults import JobFailed

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Beyond what `ipaddress` calls private or loopback: shared address space (carrier NAT), the
# cloud metadata range, and the ranges newer Pythons call private or that carry an IPv4 address
# to a relay or translator (6to4, Teredo, IPv4-compatible, local-use NAT64), spelled out so that
# no Python version's definitions can let them by.
_ALWAYS_INTERNAL = [ipaddress.ip_network(n) for n in (
    "100.64.0.0/10", "169.254.0.0/16", "fd00:ec2::254/128", "0.0.0.0/8", "192.0.0.0/24",
    "2002::/16", "2001::/32", "::/96", "64:ff9b:1::/48", "fec0::/10", "3fff::/20")]
# NAT64's well-known prefix: `64:ff9b::a.b.c.d` is the IPv4 address a.b.c.d reached through a
# translator (DNS64 answers so for every IPv4-only host), judged as that address.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")


class AddressRefused(JobFailed):
    """A host a user named resolves to an address outside IMAGEJOBS_ALLOWED_NETWORKS."""


def allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return get_settings().allowed_networks


def internal(address: IPAddress) -> bool:
    """Whether the address is one a user's URL must not reach by default."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    elif address in _NAT64:
        address = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return (address.is_private or address.is_loopback or address.is_link_local
            or address.is_reserved or address.is_multicast or address.is_unspecified
            or any(address in network for network in _ALWAYS_INTERNAL))


def check_address(address: IPAddress, host: str) -> None:
    if internal(address) and not any(address in n for n in allowed_networks()
                                     if n.version == address.version):
        raise AddressRefused(
            f"`{host}` leads to {address}, an address of a loopback, private or link-local "
            "network, which this service does not reach (its operator can allow such networks "
            "with IMAGEJOBS_ALLOWED_NETWORKS).")


def check_host(host: str, port: int | None = None) -> list[IPAddress]:
    """Resolve `host` and refuse it if any of its addresses is internal and not allowed.

    Returns the addresses checked, in the resolver's order: the only ones to connect to.
    """
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressRefused(f"The host `{host}` could not be resolved ({exc}).",
                             transient=True) from None
    addresses: list[IPAddress] = []
    for info in infos:
        address = ipaddress.ip_address(info[4][0].split("%", 1)[0])
        check_address(address, host)
        if address not in addresses:
            addresses.append(address)
    return addresses


def _watched_pool(pool: type[HTTPConnectionPool], deadline: Deadline) -> type[HTTPConnectionPool]:
    """`pool`, its connections watched by `deadline` from the moment their socket exists."""

    class Connection(pool.ConnectionCls):  # type: ignore[name-defined, misc]
        def _new_conn(self) -> socket.socket:  # urllib3's hook for the socket (its SOCKS one too)
            sock = super()._new_conn()
            deadline.watch(sock)
            return sock

    return type(pool.__name__, (pool,), {"ConnectionCls": Connection})


class PinnedAdapter(HTTPAdapter):
    """Sends every request to `address`, whatever the URL's host name resolves to by then.

    The Host header, TLS SNI and the certificate's name check keep the URL's host name; only the
    socket goes to the address. Mount it on a session used for one checked host only. With a
    `deadline`, its connections end when the deadline passes.
    """

    def __init__(self, address: IPAddress, deadline: Deadline | None = None):
        self.address = address
        self.deadline = deadline
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        if self.deadline is not None:
            self.poolmanager.pool_classes_by_scheme = {
                scheme: _watched_pool(pool, self.deadline)
                for scheme, pool in self.poolmanager.pool_classes_by_scheme.items()}

    def build_connection_pool_key_attributes(
            self, request: PreparedRequest, verify: Any, cert: Any = None,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        host_params, pool_kwargs = super().build_connection_pool_key_attributes(
            request, verify, cert)
        if host_params["scheme"] == "https":
            # urllib3 sends this name as SNI and matches the certificate against it.
            pool_kwargs["server_hostname"] = host_params["host"]
        host_params["host"] = str(self.address)
        return host_params, pool_kwargs

    def add_headers(self, request: PreparedRequest, **kwargs: Any) -> None:
        # The connection's host is now the address, which urllib3 would put in the Host header.
        request.headers["Host"] = urlsplit(request.url or "").netloc.rpartition("@")[2]
