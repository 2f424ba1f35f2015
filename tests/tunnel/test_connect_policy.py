"""CONNECT target parsing and the destination policy, without real DNS."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
from collections.abc import Sequence
from typing import Any

import pytest
import trio

from hijack.upgrades.connect import (
    BadConnectTarget,
    ConnectPolicy,
    ConnectRefused,
    UpstreamError,
    is_non_global,
    parse_connect_target,
)

AddrInfo = tuple[Any, Any, Any, Any, tuple[Any, ...]]


class FakeResolver:
    """Answers from a table, records every call: no DNS traffic."""

    def __init__(self, table: dict[str, list[str]] | None = None) -> None:
        self.table = table or {}
        self.calls: list[str] = []

    async def __call__(
        self, host: str, port: int, family: int = 0, type: int = 0
    ) -> Sequence[AddrInfo]:
        self.calls.append(host)
        await trio.lowlevel.checkpoint()
        if host not in self.table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        infos: list[AddrInfo] = []
        for text in self.table[host]:
            if ":" in text:
                infos.append((socket.AF_INET6, type, 6, "", (text, port, 0, 0)))
            else:
                infos.append((socket.AF_INET, type, 6, "", (text, port)))
        return infos


# -- parse_connect_target ---------------------------------------------------


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        ("example.com:443", ("example.com", 443)),
        ("EXAMPLE.Com.:443", ("example.com", 443)),
        ("a_b-c.d:65535", ("a_b-c.d", 65535)),
        ("example.com:1", ("example.com", 1)),
        ("example.com:0443", ("example.com", 443)),
        ("93.184.216.34:443", ("93.184.216.34", 443)),
        ("[::1]:443", ("::1", 443)),
        ("[2001:DB8::1]:8443", ("2001:db8::1", 8443)),
        ("[::ffff:127.0.0.1]:443", ("::ffff:127.0.0.1", 443)),
        ("127.1:443", ("127.1", 443)),
        ("0x7f000001:443", ("0x7f000001", 443)),
        ("127.0.0.1.:443", ("127.0.0.1", 443)),
    ],
)
def test_parse_valid_targets(target: str, expected: tuple[str, int]) -> None:
    assert parse_connect_target(target) == expected


@pytest.mark.parametrize(
    "target",
    [
        "",
        "example.com",  # no port
        "example.com:",  # empty port
        ":443",  # empty host
        "example.com:0",
        "example.com:65536",
        "example.com:99999999",
        "example.com:-1",
        "example.com:+443",
        "example.com:44a",
        "example.com:\u0664\u0664\u0663",  # Arabic-Indic digits: isdigit() but not ASCII
        "example.com: 443",
        "user@example.com:443",
        "user:pass@example.com:443",
        "/index.html",
        "http://example.com:443",
        "example.com:443/path",
        "exa mple.com:443",
        "example..com:443",
        ".example.com:443",
        "-bad.example:443",
        "bad-.example:443",
        "a" * 64 + ".com:443",  # label too long
        ("a." * 130) + "com:443",  # name too long
        "::1:443",  # IPv6 without brackets
        "[::1]",  # no port
        "[::1]443",
        "[::1:443",
        "[not-v6]:443",
        "[127.0.0.1]:443",
        "[fe80::1%25eth0]:443",  # zone id
        "1.2.3.4.5:443",  # numeric, but not an address
        "256.1.1.1:443",
        "0x1ffffffff:443",
        "caf\u00e9.example:443",  # not ASCII: clients send punycode
    ],
)
def test_parse_rejects_junk(target: str) -> None:
    with pytest.raises(BadConnectTarget) as info:
        parse_connect_target(target)
    assert info.value.status == 400
    assert isinstance(info.value, ValueError)
    assert info.value.reason


# -- the default policy refuses every spelling of "here" ----------------------

LOCAL_SPELLINGS = [
    "127.1:443",
    "2130706433:443",
    "0x7f000001:443",
    "017700000001:443",
    "0:443",
    "0.0.0.0:443",
    "127.0.0.1:443",
    "127.0.0.1.:443",
    "[::ffff:127.0.0.1]:443",
    "[::1]:443",
    "[::]:443",
]


@pytest.mark.parametrize("target", LOCAL_SPELLINGS)
async def test_default_policy_refuses_local_literals_without_lookup(
    target: str,
) -> None:
    resolver = FakeResolver()
    host, port = parse_connect_target(target)
    with pytest.raises(ConnectRefused) as info:
        await ConnectPolicy().resolve(host, port, resolver=resolver)
    assert info.value.status == 403
    assert resolver.calls == []  # a literal never goes to a thread or DNS


async def test_default_policy_refuses_localhost_resolved_for_real() -> None:
    host, port = parse_connect_target("localhost:443")
    with pytest.raises(ConnectRefused, match="not a global address"):
        await ConnectPolicy().resolve(host, port)


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.255.255.254",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "169.254.169.254",  # cloud metadata
        "100.64.0.1",  # shared address space
        "0.0.0.0",
        "224.0.0.1",  # multicast: Python calls it global
        "239.255.255.250",
        "240.0.0.1",
        "255.255.255.255",
        "192.0.2.1",
        "198.18.0.1",
        "::1",
        "::",
        "fe80::1",
        "fc00::1",
        "fec0::1",
        "ff02::1",
        "2001:db8::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "::127.0.0.1",  # IPv4-compatible (deprecated)
        "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
        "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
        "64:ff9b:1::a00:1",  # local-use NAT64 prefix
        "2002:7f00:1::1",  # 6to4 of 127.0.0.1
        "2002:a00:1::1",  # 6to4 of 10.0.0.1
        "2001::1",  # Teredo
    ],
)
def test_non_global_addresses_refused(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert is_non_global(ip)
    with pytest.raises(ConnectRefused, match="not a global address"):
        ConnectPolicy().check_address(ip)
    ConnectPolicy(allow_private=True).check_address(ip)


@pytest.mark.parametrize(
    "address",
    [
        "8.8.8.8",
        "93.184.216.34",
        "2606:4700:4700::1111",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",  # NAT64 of a public address: DNS64 networks need it
        "2002:808:808::1",  # 6to4 of a public address
    ],
)
def test_global_addresses_allowed(address: str) -> None:
    ip = ipaddress.ip_address(address)
    assert not is_non_global(ip)
    ConnectPolicy().check_address(ip)


# -- ports ------------------------------------------------------------------------


async def test_default_port_is_443_only() -> None:
    policy = ConnectPolicy()
    assert await policy.resolve("8.8.8.8", 443) == [ipaddress.ip_address("8.8.8.8")]
    for port in (22, 25, 80, 8443):
        with pytest.raises(ConnectRefused, match=f"port {port} is not allowed"):
            await policy.resolve("8.8.8.8", port)


async def test_port_refused_before_any_lookup() -> None:
    resolver = FakeResolver({"example.com": ["93.184.216.34"]})
    with pytest.raises(ConnectRefused):
        await ConnectPolicy().resolve("example.com", 25, resolver=resolver)
    assert resolver.calls == []


async def test_allowed_ports_none_allows_any_port() -> None:
    policy = ConnectPolicy(allowed_ports=None)
    assert await policy.resolve("8.8.8.8", 25) == [ipaddress.ip_address("8.8.8.8")]


# -- names: resolved once, every address checked -------------------------------


async def test_name_resolved_once_every_address_returned_in_order() -> None:
    resolver = FakeResolver(
        {"example.com": ["93.184.216.34", "2606:2800:220:1::1", "93.184.216.34"]}
    )
    addresses = await ConnectPolicy().resolve("example.com", 443, resolver=resolver)
    assert addresses == [
        ipaddress.ip_address("93.184.216.34"),
        ipaddress.ip_address("2606:2800:220:1::1"),
    ]
    assert resolver.calls == ["example.com"]


@pytest.mark.parametrize(
    "answer",
    [
        ["127.0.0.1"],
        ["93.184.216.34", "127.0.0.1"],  # one bad address spoils the answer
        ["2606:2800:220:1::1", "::ffff:169.254.169.254"],
        ["10.0.0.5"],
    ],
)
async def test_name_refused_if_any_address_is_not_global(answer: list[str]) -> None:
    resolver = FakeResolver({"rebind.example": answer})
    with pytest.raises(ConnectRefused) as info:
        await ConnectPolicy().resolve("rebind.example", 443, resolver=resolver)
    assert "rebind.example" in info.value.reason
    assert resolver.calls == ["rebind.example"]


async def test_unresolvable_name_is_upstream_error() -> None:
    with pytest.raises(UpstreamError) as info:
        await ConnectPolicy().resolve("nowhere.test", 443, resolver=FakeResolver())
    assert info.value.status == 502


async def test_name_without_addresses_is_upstream_error() -> None:
    resolver = FakeResolver({"empty.test": []})
    with pytest.raises(UpstreamError, match="no IP address"):
        await ConnectPolicy().resolve("empty.test", 443, resolver=resolver)


# -- allow and deny --------------------------------------------------------------


async def test_allow_address_is_an_exception_to_the_private_rule() -> None:
    policy = ConnectPolicy(allow=["127.0.0.1"])
    assert await policy.resolve("127.0.0.1", 443) == [ipaddress.ip_address("127.0.0.1")]
    assert await policy.resolve("127.1", 443) == [ipaddress.ip_address("127.0.0.1")]
    with pytest.raises(ConnectRefused):
        await policy.resolve("127.0.0.2", 443)
    # Other global destinations stay allowed: allow is not an allowlist.
    await policy.resolve("8.8.8.8", 443)


@pytest.mark.parametrize("entry", ["::1", "[::1]", "::1/128"])
async def test_allow_ipv6_entries(entry: str) -> None:
    policy = ConnectPolicy(allow=[entry])
    await policy.resolve("::1", 443)
    with pytest.raises(ConnectRefused):
        await policy.resolve("127.0.0.1", 443)


async def test_allow_network_matches_ipv4_mapped_spelling() -> None:
    policy = ConnectPolicy(allow=["10.0.0.0/8"])
    await policy.resolve("10.9.8.7", 443)
    await policy.resolve("::ffff:10.9.8.7", 443)
    with pytest.raises(ConnectRefused):
        await policy.resolve("192.168.0.1", 443)


async def test_allow_name_allows_what_it_resolves_to() -> None:
    resolver = FakeResolver(
        {"db.internal": ["10.1.2.3"], "other.internal": ["10.1.2.4"]}
    )
    policy = ConnectPolicy(allow=["db.internal"])
    addresses = await policy.resolve("db.internal", 443, resolver=resolver)
    assert addresses == [ipaddress.ip_address("10.1.2.3")]
    with pytest.raises(ConnectRefused):
        await policy.resolve("other.internal", 443, resolver=resolver)
    # A name entry says nothing about a literal address.
    with pytest.raises(ConnectRefused):
        await policy.resolve("10.1.2.3", 443, resolver=resolver)


async def test_deny_wins_over_allow() -> None:
    policy = ConnectPolicy(allow=["10.0.0.0/8"], deny=["10.1.0.0/16"])
    await policy.resolve("10.2.0.1", 443)
    with pytest.raises(ConnectRefused, match="denied"):
        await policy.resolve("10.1.0.1", 443)
    policy = ConnectPolicy(allow=["api.example.com"], deny=["api.example.com"])
    resolver = FakeResolver({"api.example.com": ["93.184.216.34"]})
    with pytest.raises(ConnectRefused, match="denied"):
        await policy.resolve("api.example.com", 443, resolver=resolver)


async def test_denied_name_refused_without_lookup() -> None:
    resolver = FakeResolver({"example.com": ["93.184.216.34"]})
    with pytest.raises(ConnectRefused, match="denied"):
        await ConnectPolicy(deny=["Example.COM."]).resolve(
            "example.com", 443, resolver=resolver
        )
    assert resolver.calls == []


async def test_deny_domain_suffix() -> None:
    resolver = FakeResolver(
        {
            "example.com": ["93.184.216.34"],
            "www.example.com": ["93.184.216.34"],
            "badexample.com": ["93.184.216.35"],
        }
    )
    policy = ConnectPolicy(deny=[".example.com"])
    for name in ("example.com", "www.example.com"):
        with pytest.raises(ConnectRefused):
            await policy.resolve(name, 443, resolver=resolver)
    await policy.resolve("badexample.com", 443, resolver=resolver)


async def test_deny_network_matches_embedded_ipv4() -> None:
    policy = ConnectPolicy(deny=["8.8.8.0/24"])
    for spelling in (
        "8.8.8.8",
        "::ffff:8.8.8.8",
        "64:ff9b::808:808",
        "2002:808:808::1",
    ):
        with pytest.raises(ConnectRefused, match="denied"):
            await policy.resolve(spelling, 443)
    resolver = FakeResolver({"dns.example": ["1.1.1.1", "8.8.8.8"]})
    with pytest.raises(ConnectRefused, match="denied"):
        await policy.resolve("dns.example", 443, resolver=resolver)


async def test_allow_public_false_makes_allow_an_allowlist() -> None:
    resolver = FakeResolver(
        {"api.example.com": ["93.184.216.34"], "x.test": ["1.1.1.1"]}
    )
    policy = ConnectPolicy(allow_public=False, allow=["api.example.com"])
    await policy.resolve("api.example.com", 443, resolver=resolver)
    with pytest.raises(ConnectRefused, match="not in the allow list"):
        await policy.resolve("x.test", 443, resolver=resolver)
    with pytest.raises(ConnectRefused, match="not in the allow list"):
        await policy.resolve("8.8.8.8", 443)


# -- construction ---------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"allow": ["10.0.0.0/33"]},
        {"allow": ["127.1"]},  # ambiguous numeric spelling: say it plainly
        {"deny": ["not a host"]},
        {"deny": [""]},
        {"allowed_ports": {0}},
        {"allowed_ports": {443, 70000}},
    ],
)
def test_bad_policy_entries_fail_at_construction(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        ConnectPolicy(**kwargs)


def test_a_str_is_not_a_list_of_entries() -> None:
    with pytest.raises(TypeError):
        ConnectPolicy(allow="example.com")


def test_policy_is_frozen_and_copies_its_inputs() -> None:
    allow = ["127.0.0.1"]
    ports = [443, 8443]
    policy = ConnectPolicy(allowed_ports=ports, allow=allow)
    allow.append("10.0.0.0/8")
    ports.append(22)
    assert policy.allow == ("127.0.0.1",)
    assert policy.allowed_ports == frozenset({443, 8443})
    assert hash(policy) == hash(
        ConnectPolicy(allowed_ports={443, 8443}, allow=allow[:1])
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        policy.allow_private = True  # type: ignore[misc]
