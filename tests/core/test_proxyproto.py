"""The PROXY protocol parser and encoder, sans I/O: the spec's examples
(HAProxy's proxy-protocol.txt), byte-by-byte arrival, and hostile headers."""

from __future__ import annotations

import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hijack import (
    ProxyHeader,
    ProxyProtocol,
    ProxyProtocolError,
    encode_proxy_header,
    parse_proxy_header,
)
from hijack._proxyproto import V2_SIGNATURE, crc32c

SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v2(
    command: int,
    family: int,
    body: bytes,
    *,
    version: int = 2,
    length: int | None = None,
) -> bytes:
    """A v2 header built by hand from the spec's layout (not by our encoder)."""
    size = len(body) if length is None else length
    return (
        SIG + bytes([version << 4 | command, family]) + struct.pack("!H", size) + body
    )


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


V4_BLOCK = bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 56324, 443)
V6_BLOCK = (
    socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    + socket.inet_pton(socket.AF_INET6, "2001:db8::2")
    + struct.pack("!HH", 40000, 8443)
)


def parse_whole(data: bytes) -> ProxyHeader:
    parsed = parse_proxy_header(data)
    assert parsed is not None
    header, size = parsed
    assert size == len(data)
    return header


def test_spec_signature() -> None:
    assert bytes.fromhex("0D0A0D0A000D0A515549540A") == V2_SIGNATURE


# -- version 1 ------------------------------------------------------------------


def test_v1_tcp4_example_leaves_the_request_alone() -> None:
    data = b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\nGET / HTTP/1.1\r\n"
    parsed = parse_proxy_header(data)
    assert parsed is not None
    header, size = parsed
    assert data[size:] == b"GET / HTTP/1.1\r\n"
    assert header == ProxyHeader(
        1, "proxy", socket.AF_INET, ("192.168.0.1", 56324), ("192.168.0.11", 443)
    )


@pytest.mark.parametrize(
    ("line", "source"),
    [
        # The spec's worst cases for each family (56, 104 and 107 bytes).
        (
            b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n",
            ("255.255.255.255", 65535),
        ),
        (
            b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
            b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        ),
        (b"PROXY UNKNOWN\r\n", None),
        (
            b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
            b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n",
            None,
        ),
    ],
)
def test_v1_spec_worst_cases(line: bytes, source: tuple[str, int] | None) -> None:
    assert len(line) <= 107
    header = parse_whole(line)
    assert header.version == 1
    assert header.source == source


def test_v1_ipv4_mapped_client_is_reported_as_ipv4() -> None:
    header = parse_whole(b"PROXY TCP6 ::ffff:192.0.2.9 ::1 1234 80\r\n")
    assert header.family == socket.AF_INET6
    assert header.source == ("192.0.2.9", 1234)


@pytest.mark.parametrize(
    "line",
    [
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n",
        b"PROXY UNKNOWN\r\n",
    ],
)
def test_v1_every_prefix_asks_for_more(line: bytes) -> None:
    for end in range(len(line)):
        assert parse_proxy_header(line[:end]) is None, line[:end]


@pytest.mark.parametrize(
    "data",
    [
        b"GET / HTTP/1.1\r\n",
        b"proxy TCP4 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",  # LF alone
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rX",  # CR alone
        b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3\r\n",
        b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n",  # two spaces
        b"PROXY TCP4 ::1 ::1 1 2\r\n",  # family mismatch
        b"PROXY TCP6 1.2.3.4 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n",
        b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",  # octal-looking octet
        b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 +80 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 8_0 2\r\n",
        b"PROXY TCP4 1.2.3.4 5.6.7.8 \xd9\xa1 2\r\n",  # Arabic-Indic digit
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n",
        b"PROXY TCP4 1.2.3.\xff 5.6.7.8 1 2\r\n",
        b"PROXY \r\n",
        b"PROXY" + b" " * 200,  # no CRLF within 107 bytes
    ],
)
def test_v1_hostile(data: bytes) -> None:
    with pytest.raises(ProxyProtocolError):
        parse_proxy_header(data)


def test_v1_without_crlf_fails_at_107_bytes_not_later() -> None:
    line = b"PROXY UNKNOWN " + b"x" * 92
    assert len(line) == 106
    assert parse_proxy_header(line) is None
    with pytest.raises(ProxyProtocolError, match="107"):
        parse_proxy_header(line + b"x")


# -- version 2 ------------------------------------------------------------------


def test_v2_tcp4() -> None:
    header = parse_whole(v2(0x1, 0x11, V4_BLOCK))
    assert header == ProxyHeader(
        2, "proxy", socket.AF_INET, ("192.0.2.1", 56324), ("198.51.100.7", 443)
    )


def test_v2_tcp6_with_tlvs_and_trailing_bytes() -> None:
    ssl = (
        bytes([0x07])  # SSL, cert on connection and session
        + struct.pack("!I", 0)  # verified
        + tlv(0x21, b"TLSv1.3")
        + tlv(0x22, b"client.example")
        + tlv(0x23, b"TLS_AES_128_GCM_SHA256")
        + tlv(0x24, b"SHA256")
        + tlv(0x25, b"RSA2048")
    )
    tlvs = (
        tlv(0x01, b"h2")
        + tlv(0x02, b"example.com")
        + tlv(0x04, b"\0" * 5)
        + tlv(0x05, b"id-42")
        + tlv(0x20, ssl)
        + tlv(0xE0, b"custom")
    )
    data = v2(0x1, 0x21, V6_BLOCK + tlvs)
    parsed = parse_proxy_header(data + b"\x16\x03\x01")  # a ClientHello follows
    assert parsed is not None
    header, size = parsed
    assert size == len(data)
    assert header.source == ("2001:db8::1", 40000)
    assert header.destination == ("2001:db8::2", 8443)
    assert header.alpn == b"h2"
    assert header.authority == "example.com"
    assert header.unique_id == b"id-42"
    assert header.tlv(0xE0) == b"custom"
    assert [kind for kind, _ in header.tlvs] == [0x01, 0x02, 0x04, 0x05, 0x20, 0xE0]
    tls = header.tls
    assert tls is not None
    assert (tls.client, tls.verified, tls.version) == (0x07, True, "TLSv1.3")
    assert tls.common_name == "client.example"
    assert tls.cipher == "TLS_AES_128_GCM_SHA256"
    assert (tls.signature_algorithm, tls.key_algorithm) == ("SHA256", "RSA2048")


def test_v2_unix_addresses() -> None:
    body = b"/run/client.sock".ljust(108, b"\0") + b"/run/lb.sock".ljust(108, b"\0")
    header = parse_whole(v2(0x1, 0x31, body))
    assert header.family == socket.AF_UNIX
    assert (header.source, header.destination) == ("/run/client.sock", "/run/lb.sock")


@pytest.mark.parametrize("family", [0x00, 0x11, 0x12, 0x21, 0x41, 0xFF])
def test_v2_local_is_accepted_whatever_it_carries(family: int) -> None:
    """LOCAL: the balancer's own health check. Address block and family are
    ignored (spec 2.2), even a family we do not know."""
    header = parse_whole(v2(0x0, family, b"\x01" * 40))
    assert header.command == "local"
    assert header.source is None


@pytest.mark.parametrize("family", [0x00, 0x10, 0x20])
def test_v2_proxy_with_unspecified_parts_uses_socket_addresses(family: int) -> None:
    header = parse_whole(v2(0x1, family, V6_BLOCK))
    assert (header.command, header.source) == ("proxy", None)


def test_v2_every_prefix_asks_for_more() -> None:
    data = v2(0x1, 0x11, V4_BLOCK + tlv(0x01, b"h2"))
    for end in range(len(data)):
        assert parse_proxy_header(data[:end]) is None


def test_crc32c_check_value() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC catalogue's check


def test_v2_crc32c_checked() -> None:
    blank = v2(0x1, 0x11, V4_BLOCK + tlv(0x03, b"\0\0\0\0") + tlv(0x01, b"h2"))
    good = blank.replace(
        b"\x03\x00\x04\0\0\0\0", b"\x03\x00\x04" + crc32c(blank).to_bytes(4, "big")
    )
    assert parse_whole(good).alpn == b"h2"
    bad = good[:-1] + b"3"  # the ALPN value changed after the sum was made
    with pytest.raises(ProxyProtocolError, match="CRC32C"):
        parse_proxy_header(bad)


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (v2(0x1, 0x11, V4_BLOCK, version=1), "version"),
        (v2(0x1, 0x11, V4_BLOCK, version=3)[:13], "version"),  # judged early
        (v2(0x2, 0x11, V4_BLOCK), "command"),
        (v2(0xF, 0x11, V4_BLOCK), "command"),
        (v2(0x1, 0x41, V4_BLOCK), "family"),
        (v2(0x1, 0x13, V4_BLOCK), "family"),
        (v2(0x1, 0x12, V4_BLOCK), "DGRAM"),
        (v2(0x1, 0x21, V4_BLOCK), "shorter"),  # 12 bytes for a 36-byte block
        (v2(0x1, 0x11, V4_BLOCK + b"\x01\x00"), "truncated TLV"),
        (v2(0x1, 0x11, V4_BLOCK + b"\x01\x00\x09ab"), "overruns"),
        (v2(0x1, 0x11, V4_BLOCK + tlv(0x03, b"\0\0")), "CRC32C"),
        (v2(0x1, 0x11, V4_BLOCK + tlv(0x05, b"x" * 129)), "unique ID"),
        (v2(0x1, 0x11, V4_BLOCK + tlv(0x20, b"\x01")), None),
        (SIG[:5] + b"X", "not a PROXY"),
        (b"\x00" * 16, "not a PROXY"),
    ],
)
def test_v2_hostile(data: bytes, match: str | None) -> None:
    with pytest.raises(ProxyProtocolError, match=match):
        parsed = parse_proxy_header(data)
        assert parsed is not None
        _ = parsed[0].tls  # a broken SSL TLV fails when read


def test_v2_length_is_judged_before_its_bytes_arrive() -> None:
    """A 64 KiB length is refused from the 16-byte prefix: nothing more is
    read, or buffered, for it."""
    with pytest.raises(ProxyProtocolError, match="exceeds"):
        parse_proxy_header(v2(0x1, 0x11, b"", length=0xFFFF))
    with pytest.raises(ProxyProtocolError, match="exceeds"):
        parse_proxy_header(v2(0x1, 0x11, b"", length=300), max_size=300)


@given(st.binary(max_size=300))
def test_fuzz_only_protocol_errors(data: bytes) -> None:
    for candidate in (data, SIG + data, b"PROXY " + data, v2(0x1, 0x11, data)):
        try:
            parsed = parse_proxy_header(candidate)
        except ProxyProtocolError:
            continue
        if parsed is not None:
            header, size = parsed
            assert 0 < size <= len(candidate)
            assert parse_proxy_header(candidate[:size]) == (header, size)


# -- encoding ------------------------------------------------------------------


@pytest.mark.parametrize("version", [1, 2])
@pytest.mark.parametrize(
    ("source", "destination", "family"),
    [
        (("192.0.2.1", 1234), ("198.51.100.7", 443), socket.AF_INET),
        (("2001:db8::1", 1234), ("2001:db8::2", 443), socket.AF_INET6),
    ],
)
def test_encode_round_trip(
    version: int,
    source: tuple[str, int],
    destination: tuple[str, int],
    family: socket.AddressFamily,
) -> None:
    data = encode_proxy_header(version, source, destination)  # type: ignore[arg-type]
    header = parse_whole(data)
    assert (header.version, header.family) == (version, family)
    assert (header.source, header.destination) == (source, destination)


def test_encode_spec_bytes() -> None:
    assert (
        encode_proxy_header(1, ("192.168.0.1", 56324), ("192.168.0.11", 443))
        == b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    )
    assert encode_proxy_header(2, ("192.0.2.1", 56324), ("198.51.100.7", 443)) == v2(
        0x1, 0x11, V4_BLOCK
    )


@pytest.mark.parametrize("version", [1, 2])
def test_encode_mixed_families_maps_ipv4_into_ipv6(version: int) -> None:
    """An IPv6 client of an IPv4 listener, and the other way round: one
    header has one family, so the IPv4 side goes IPv4-mapped (wstunnel got
    this wrong)."""
    data = encode_proxy_header(version, ("2001:db8::1", 5000), ("192.0.2.80", 80))  # type: ignore[arg-type]
    if version == 1:
        assert data == b"PROXY TCP6 2001:db8::1 ::ffff:c000:250 5000 80\r\n"
    header = parse_whole(data)
    assert header.family == socket.AF_INET6
    assert header.source == ("2001:db8::1", 5000)
    assert header.destination == ("192.0.2.80", 80)  # unmapped on the way in
    back = parse_whole(encode_proxy_header(version, ("192.0.2.1", 1), ("::1", 2)))  # type: ignore[arg-type]
    assert (back.source, back.destination) == (("192.0.2.1", 1), ("::1", 2))


def test_encode_unknown_addresses() -> None:
    assert encode_proxy_header(1, "", "/run/x.sock") == b"PROXY UNKNOWN\r\n"
    header = parse_whole(encode_proxy_header(2, None, ("::1", 1)))
    assert (header.command, header.source) == ("proxy", None)


# -- trust ------------------------------------------------------------------------


def test_trusted_networks() -> None:
    policy = ProxyProtocol(["10.0.0.0/8", "2001:db8::/32", "192.0.2.7"])
    assert policy.is_trusted(("10.1.2.3", 5), socket.AF_INET)
    assert policy.is_trusted(("::ffff:10.1.2.3", 5, 0, 0), socket.AF_INET6)
    assert policy.is_trusted(("2001:db8::9", 5, 0, 0), socket.AF_INET6)
    assert policy.is_trusted(("192.0.2.7", 5), socket.AF_INET)
    assert not policy.is_trusted(("192.0.2.8", 5), socket.AF_INET)
    assert not policy.is_trusted(("11.0.0.1", 5), socket.AF_INET)
    assert not policy.is_trusted("", socket.AF_UNIX)
    assert ProxyProtocol(["unix"]).is_trusted("", socket.AF_UNIX)


@pytest.mark.parametrize(
    ("args", "kwargs"),
    [
        (["10.0.0.0/33"], {}),
        (["example.com"], {}),
        (["10.0.0.0/8"], {"max_header_size": 100}),
        (["10.0.0.0/8"], {"timeout": 0}),
    ],
)
def test_bad_settings(args: list[str], kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ProxyProtocol(args, **kwargs)  # type: ignore[arg-type]
