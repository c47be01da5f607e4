"""The SSRF guard of the built-in fetcher: which addresses a server-side fetch may reach.

A URL that a webhook hands us must not make crawldex reach its own network: loopback, the cloud metadata
service (169.254.169.254), RFC 1918 and CGNAT ranges, IPv6 unique-local and link-local addresses, and
the same addresses dressed as IPv6 (IPv4-mapped, NAT64, 6to4). The host is resolved first and *every*
address it resolves to is checked; the fetcher then connects to one of the checked addresses (never
resolving the name again), so a DNS answer that changes between check and connect cannot bypass it.

``CRAWLDEX_FETCH_ALLOWED_HOSTS`` lets chosen hosts through anyway: each entry is a host name (matched
exactly, case-insensitively) or an IP address or CIDR (matched against the resolved addresses).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from crawldex.adapters.fetching import BlockedAddressError, FetchError
from crawldex.errors import ConfigurationError

__all__ = [
    "AllowList",
    "IPAddress",
    "IPNetwork",
    "Resolver",
    "blocked_reason",
    "check_addresses",
    "is_blocked",
    "normalize_host",
    "resolve_host",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

Resolver = Callable[[str], Awaitable[Sequence[IPAddress]]]
"""Resolves a host name (or IP literal) to all of its addresses; `resolve_host` outside tests."""


def _table(*rows: tuple[str, str]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple((ipaddress.ip_network(network), reason) for network, reason in rows)


# Checked before Python's own `ipaddress` properties, which differ between patch releases and do not
# cover everything (224.0.0.0/4 counts as "global" there, for one).
_BLOCKED_IPV4: Final = _table(
    ("0.0.0.0/8", "an unspecified ('this network') address"),
    ("10.0.0.0/8", "a private address (RFC 1918)"),
    ("100.64.0.0/10", "a shared CGNAT address (RFC 6598)"),
    ("127.0.0.0/8", "a loopback address"),
    ("169.254.0.0/16", "a link-local address (cloud metadata lives here)"),
    ("172.16.0.0/12", "a private address (RFC 1918)"),
    ("192.0.0.0/24", "an IETF protocol assignment"),
    ("192.0.2.0/24", "a documentation address"),
    ("192.88.99.0/24", "a 6to4 relay anycast address"),
    ("192.168.0.0/16", "a private address (RFC 1918)"),
    ("198.18.0.0/15", "a benchmarking address"),
    ("198.51.100.0/24", "a documentation address"),
    ("203.0.113.0/24", "a documentation address"),
    ("224.0.0.0/4", "a multicast address"),
    ("240.0.0.0/4", "a reserved address"),
)
_BLOCKED_IPV6: Final = _table(
    ("::/128", "an unspecified address"),
    ("::1/128", "a loopback address"),
    ("64:ff9b:1::/48", "a local-use NAT64 address"),
    ("100::/64", "a discard-only address"),
    ("2001::/23", "an IETF protocol assignment (Teredo, benchmarking, ORCHID)"),
    ("2001:db8::/32", "a documentation address"),
    ("3fff::/20", "a documentation address"),
    ("5f00::/16", "an SRv6 segment identifier"),
    ("fc00::/7", "a unique local address"),
    ("fe80::/10", "a link-local address"),
    ("fec0::/10", "a site-local address"),
    ("ff00::/8", "a multicast address"),
    # After 64:ff9b:1::/48, which lies inside it.
    ("::/8", "a reserved address (IPv4-compatible or IPv4-translated)"),
)
_NAT64_WELL_KNOWN: Final = ipaddress.IPv6Network("64:ff9b::/96")
_SIX_TO_FOUR: Final = ipaddress.IPv6Network("2002::/16")


def blocked_reason(address: IPAddress) -> str | None:
    """Why ``address`` must not be fetched from, or None for a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped
        if mapped is not None:
            reason = blocked_reason(mapped)
            return f"an IPv4-mapped form of {reason}" if reason else None
        if address in _NAT64_WELL_KNOWN:
            # A NAT64 gateway forwards to the embedded IPv4 address; judge that one alone (an IPv6-only
            # cluster with DNS64 reaches every IPv4 site this way).
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
            reason = blocked_reason(embedded)
            return f"a NAT64 form of {reason}" if reason else None
        if address in _SIX_TO_FOUR and address.sixtofour is not None:
            reason = blocked_reason(address.sixtofour)
            if reason:
                return f"a 6to4 form of {reason}"
        table = _BLOCKED_IPV6
    else:
        table = _BLOCKED_IPV4
    for network, reason in table:
        if address in network:
            return reason
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "an unspecified address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_private:
        return "a private address"
    if address.is_reserved:
        return "a reserved address"
    if not address.is_global:
        return "an address that is not globally routable"
    return None


def is_blocked(address: IPAddress) -> bool:
    return blocked_reason(address) is not None


def normalize_host(host: str) -> str:
    """Lower case, no brackets around an IPv6 literal, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.rstrip(".")


def _parse_address(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True)
class AllowList:
    """Hosts and networks that may be fetched from although their addresses are blocked."""

    hosts: frozenset[str] = frozenset()
    networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> AllowList:
        """Read ``CRAWLDEX_FETCH_ALLOWED_HOSTS`` entries: host names, IP addresses or CIDRs."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in entries:
            entry = normalize_host(raw)
            if not entry:
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            if "/" in entry or ":" in entry or any(char.isspace() for char in entry):
                raise ConfigurationError(
                    f"CRAWLDEX_FETCH_ALLOWED_HOSTS entry {raw!r} is neither a host name nor an IP address/CIDR"
                )
            hosts.add(entry)
        return cls(hosts=frozenset(hosts), networks=tuple(networks))

    def permits_host(self, host: str) -> bool:
        return normalize_host(host) in self.hosts

    def permits_address(self, address: IPAddress) -> bool:
        candidates: list[IPAddress] = [address]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            candidates.append(address.ipv4_mapped)
        return any(
            candidate.version == network.version and candidate in network
            for candidate in candidates
            for network in self.networks
        )


def check_addresses(host: str, addresses: Sequence[IPAddress], allow: AllowList) -> None:
    """Raise `BlockedAddressError` unless every address of ``host`` may be reached.

    One blocked address refuses the host even when others are public: the fetcher must never pick the
    blocked one, and a host that mixes the two is suspect anyway.
    """
    if not addresses:
        raise FetchError(f"{host} resolved to no address", retryable=True)
    if allow.permits_host(host):
        return
    for address in addresses:
        if allow.permits_address(address):
            continue
        reason = blocked_reason(address)
        if reason is not None:
            shown = host if normalize_host(host) == str(address) else f"{host} ({address})"
            raise BlockedAddressError(
                f"refusing to fetch from {shown}: {reason}; allow it with CRAWLDEX_FETCH_ALLOWED_HOSTS"
            )


async def resolve_host(host: str) -> list[IPAddress]:
    """All IPv4 and IPv6 addresses of ``host`` from the system resolver, in its order, without repeats.

    An IP literal comes back as itself (also in the forms the resolver understands, like ``127.1``).
    """
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve {host}: {exc.strerror or exc}", retryable=True) from exc
    except UnicodeError as exc:
        raise FetchError(f"cannot resolve {host}: {exc}", retryable=False) from exc
    addresses: list[IPAddress] = []
    for _family, _type, _proto, _canonname, sockaddr in infos:
        address = _parse_address(str(sockaddr[0]))
        if address is not None and address not in addresses:
            addresses.append(address)
    return addresses
