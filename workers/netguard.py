"""Where a user's URL may lead: never to loopback, private, link-local or metadata addresses.

Every host a user names (a context URL and each redirect, a git repository, a registry) is
resolved and refused when any of its addresses lies in such a network, unless the operator
allows that network with IMAGEJOBS_ALLOWED_NETWORKS (comma-separated CIDRs).
"""

from __future__ import annotations

import ipaddress
import socket
from functools import cache

from app.config import get_settings

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Beyond what `ipaddress` calls private or loopback: shared address space (carrier NAT) and the
# cloud metadata range, spelled out so that no Python version's definitions can let them by.
_ALWAYS_INTERNAL = [ipaddress.ip_network(n) for n in (
    "100.64.0.0/10", "169.254.0.0/16", "fd00:ec2::254/128", "0.0.0.0/8")]


class AddressRefused(Exception):
    def __init__(self, message: str, *, transient: bool = False):
        super().__init__(message)
        self.message = message
        self.transient = transient


@cache
def allowed_networks() -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    raw = get_settings().allowed_networks
    return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in raw.split(",") if n.strip())


def internal(address: IPAddress) -> bool:
    """Whether the address is one a user's URL must not reach by default."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
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


def check_host(host: str, port: int | None = None) -> None:
    """Resolve `host` and refuse it if any of its addresses is internal and not allowed."""
    host = host.strip("[]")
    try:
        infos = socket.getaddrinfo(host, port or 443, proto=socket.IPPROTO_TCP)
    except (socket.gaierror, UnicodeError) as exc:
        raise AddressRefused(f"The host `{host}` could not be resolved ({exc}).",
                             transient=True) from None
    for info in infos:
        check_address(ipaddress.ip_address(info[4][0].split("%", 1)[0]), host)
