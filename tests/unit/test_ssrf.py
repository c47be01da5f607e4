"""The SSRF guard's address classifier, allow list and resolution, without any network traffic."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crawldex.adapters.fetching import BlockedAddressError, FetchError
from crawldex.errors import ConfigurationError
from crawldex.ssrf import (
    AllowList,
    IPAddress,
    blocked_reason,
    check_addresses,
    is_blocked,
    normalize_host,
    resolve_host,
)


def ip(text: str) -> IPAddress:
    return ipaddress.ip_address(text)


BLOCKED = {
    "0.0.0.0": "unspecified",
    "0.1.2.3": "unspecified",
    "127.0.0.1": "loopback",
    "127.255.255.254": "loopback",
    "10.0.0.1": "private",
    "172.16.0.1": "private",
    "172.31.255.255": "private",
    "192.168.1.1": "private",
    "169.254.169.254": "link-local",
    "169.254.0.1": "link-local",
    "100.64.0.1": "CGNAT",
    "100.127.255.254": "CGNAT",
    "192.0.0.8": "IETF",
    "192.0.2.1": "documentation",
    "198.18.0.1": "benchmarking",
    "198.51.100.7": "documentation",
    "203.0.113.9": "documentation",
    "224.0.0.1": "multicast",
    "239.255.255.250": "multicast",
    "240.0.0.1": "reserved",
    "255.255.255.255": "reserved",
    "::": "unspecified",
    "::1": "loopback",
    "fd00::1": "unique local",
    "fc00::1": "unique local",
    "fe80::1": "link-local",
    "fec0::1": "site-local",
    "ff02::1": "multicast",
    "ff0e::1": "multicast",
    "2001:db8::1": "documentation",
    "2001::1": "IETF",  # Teredo
    "100::1": "discard",
    "::127.0.0.1": "reserved",  # IPv4-compatible
    "::ffff:127.0.0.1": "IPv4-mapped form of a loopback",
    "::ffff:169.254.169.254": "IPv4-mapped form of a link-local",
    "::ffff:10.1.2.3": "IPv4-mapped form of a private",
    "::ffff:0.0.0.0": "IPv4-mapped form of an unspecified",
    "64:ff9b::7f00:1": "NAT64 form of a loopback",
    "64:ff9b::a9fe:a9fe": "NAT64 form of a link-local",
    "64:ff9b:1::1": "local-use NAT64",
    "2002:7f00:1::1": "6to4 form of a loopback",
    "2002:a00:1::1": "6to4 form of a private",
}
PUBLIC = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",
    "172.32.0.0",
    "169.253.255.255",
    "2606:4700:4700::1111",
    "2a00:1450:4001:81c::200e",
    "::ffff:8.8.8.8",
    "64:ff9b::808:808",  # NAT64 of 8.8.8.8
    "2002:808:808::1",  # 6to4 of 8.8.8.8
]


@pytest.mark.parametrize(("address", "why"), BLOCKED.items())
def test_blocked_addresses(address: str, why: str) -> None:
    reason = blocked_reason(ip(address))
    assert reason is not None
    assert why in reason
    assert is_blocked(ip(address))


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert blocked_reason(ip(address)) is None
    assert not is_blocked(ip(address))


BLOCKED_NETWORKS = [
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::1/128",
    "fc00::/7",
    "fe80::/10",
    "ff00::/8",
]


@given(data=st.data(), network_text=st.sampled_from(BLOCKED_NETWORKS))
def test_any_address_in_a_blocked_network_is_blocked(data: st.DataObject, network_text: str) -> None:
    network = ipaddress.ip_network(network_text)
    offset = data.draw(st.integers(min_value=0, max_value=network.num_addresses - 1))
    address = network[offset]
    assert is_blocked(address)
    if isinstance(address, ipaddress.IPv4Address):
        # The same address in IPv6 dress is blocked too.
        assert is_blocked(ipaddress.IPv6Address(f"::ffff:{address}"))
        assert is_blocked(ipaddress.IPv6Address(int(ipaddress.IPv6Address("64:ff9b::")) | int(address)))
        assert is_blocked(ipaddress.IPv6Address((0x2002 << 112) | (int(address) << 80) | 1))


@given(st.integers(min_value=0, max_value=2**32 - 1))
def test_mapped_ipv4_is_judged_as_ipv4(value: int) -> None:
    v4 = ipaddress.IPv4Address(value)
    assert is_blocked(ipaddress.IPv6Address(f"::ffff:{v4}")) == is_blocked(v4)


# The allow list.


def test_allow_list_parses_hosts_addresses_and_cidrs() -> None:
    allow = AllowList.parse(
        [
            "127.0.0.1",
            "10.0.0.0/8",
            "::1",
            "[fd00::1]",
            "fc00::/7",
            " Internal.Example. ",
            "",
            "192.168.1.7/24",
        ]
    )

    assert allow.hosts == frozenset({"internal.example"})
    assert ipaddress.ip_network("127.0.0.1/32") in allow.networks
    assert ipaddress.ip_network("10.0.0.0/8") in allow.networks
    assert ipaddress.ip_network("::1/128") in allow.networks
    assert ipaddress.ip_network("192.168.1.0/24") in allow.networks  # host bits dropped
    assert ipaddress.ip_network("fd00::1/128") in allow.networks
    assert ipaddress.ip_network("fc00::/7") in allow.networks


def test_allow_list_rejects_garbage() -> None:
    with pytest.raises(ConfigurationError, match=r"10\.0\.0\.0/33"):
        AllowList.parse(["10.0.0.0/33"])
    with pytest.raises(ConfigurationError):
        AllowList.parse(["host.example:8080"])


def test_allow_list_matches() -> None:
    allow = AllowList.parse(["127.0.0.0/8", "internal.example"])

    assert allow.permits_host("INTERNAL.example.")
    assert not allow.permits_host("example")
    assert allow.permits_address(ip("127.1.2.3"))
    assert allow.permits_address(ip("::ffff:127.0.0.1"))  # mapped form of an allowed address
    assert not allow.permits_address(ip("::1"))
    assert not allow.permits_address(ip("10.0.0.1"))


def test_normalize_host() -> None:
    assert normalize_host(" [::1] ") == "::1"
    assert normalize_host("Example.COM.") == "example.com"


# Checking a host's addresses.


def test_check_refuses_a_host_with_any_blocked_address() -> None:
    with pytest.raises(
        BlockedAddressError, match=r"mixed\.test \(10\.0\.0\.1\): a private address"
    ) as caught:
        check_addresses("mixed.test", [ip("8.8.8.8"), ip("10.0.0.1")], AllowList())
    assert caught.value.retryable is False


def test_check_passes_public_addresses() -> None:
    check_addresses("public.test", [ip("8.8.8.8"), ip("2606:4700:4700::1111")], AllowList())


def test_check_honours_allowed_addresses_and_hosts() -> None:
    check_addresses("127.0.0.1", [ip("127.0.0.1")], AllowList.parse(["127.0.0.1"]))
    check_addresses("localhost", [ip("127.0.0.1")], AllowList.parse(["127.0.0.0/8"]))
    check_addresses(
        "internal.example", [ip("10.1.1.1"), ip("fd00::5")], AllowList.parse(["internal.example"])
    )
    with pytest.raises(BlockedAddressError, match="loopback"):
        # ::1 is not in an IPv4 network: one address outside the allow list refuses the host.
        check_addresses("localhost", [ip("127.0.0.1"), ip("::1")], AllowList.parse(["127.0.0.0/8"]))
    with pytest.raises(BlockedAddressError, match=r"169\.254\.169\.254"):
        check_addresses("169.254.169.254", [ip("169.254.169.254")], AllowList.parse(["127.0.0.1"]))


def test_check_refuses_no_addresses() -> None:
    with pytest.raises(FetchError, match="no address") as caught:
        check_addresses("empty.test", [], AllowList())
    assert caught.value.retryable is True


# Resolution through the system resolver (IP literals and localhost only: no DNS traffic).


async def test_resolve_ip_literals() -> None:
    assert await resolve_host("127.0.0.1") == [ip("127.0.0.1")]
    assert await resolve_host("::1") == [ip("::1")]
    # The resolver's own spellings of an IPv4 address are what get connected to, so they are checked.
    assert await resolve_host("127.1") == [ip("127.0.0.1")]
    assert await resolve_host("2130706433") == [ip("127.0.0.1")]


async def test_resolve_localhost_is_loopback() -> None:
    addresses = await resolve_host("localhost")
    assert addresses
    assert all(address.is_loopback for address in addresses)
    with pytest.raises(BlockedAddressError):
        check_addresses("localhost", addresses, AllowList())


async def test_resolve_failure_is_a_fetch_error() -> None:
    with pytest.raises(FetchError, match="cannot resolve"):
        await resolve_host("no-such-host.invalid")
