"""The SOCKS5 codec, sans I/O: RFC 1928 / RFC 1929 bytes written by hand,
byte-by-byte arrival, round trips and arbitrary input (hypothesis)."""

from __future__ import annotations

import contextlib
import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hijack.socks import codec
from hijack.socks.codec import (
    AddressType,
    Command,
    Credentials,
    Reply,
    SocksError,
    SocksRequest,
)

# -- messages written by hand from the RFCs ---------------------------------------


def test_greeting() -> None:
    assert codec.parse_greeting(b"\x05\x02\x00\x02") == (frozenset({0, 2}), 4)
    assert codec.parse_greeting(b"\x05\x01\x00rest") == (frozenset({0}), 3)
    assert codec.encode_greeting([0, 2]) == b"\x05\x02\x00\x02"


def test_request_ipv4_ipv6_domain() -> None:
    v4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
    assert codec.parse_request(v4) == (
        SocksRequest(Command.CONNECT, "127.0.0.1", 80, AddressType.IPV4),
        10,
    )
    v6 = b"\x05\x03\x00\x04" + ipaddress.IPv6Address("2001:db8::1").packed + b"\x01\xbb"
    assert codec.parse_request(v6) == (
        SocksRequest(Command.UDP_ASSOCIATE, "2001:db8::1", 443, AddressType.IPV6),
        22,
    )
    name = b"\x05\x01\x00\x03\x0bexample.com\x01\xbb"
    assert codec.parse_request(name) == (
        SocksRequest(Command.CONNECT, "example.com", 443, AddressType.DOMAIN),
        len(name),
    )
    assert codec.encode_request(Command.CONNECT, "example.com", 443) == name
    assert codec.encode_request(Command.CONNECT, "127.0.0.1", 80) == v4


def test_reply_and_credentials() -> None:
    reply = codec.encode_reply(Reply.SUCCEEDED, "10.0.0.1", 1080)
    assert reply == b"\x05\x00\x00\x01\x0a\x00\x00\x01\x04\x38"
    assert codec.parse_reply(reply) == (codec.SocksReply(0, "10.0.0.1", 1080), 10)
    assert codec.encode_reply(Reply.NOT_ALLOWED) == b"\x05\x02\x00\x01" + bytes(6)
    creds = b"\x01\x05alice\x06secret"
    assert codec.parse_credentials(creds) == (Credentials(b"alice", b"secret"), 14)
    assert codec.encode_credentials(b"alice", b"secret") == creds
    assert codec.encode_auth_status(True) == b"\x01\x00"
    assert codec.encode_auth_status(False) == b"\x01\x01"
    assert codec.parse_auth_status(b"\x01\x01") == (False, 2)
    assert codec.parse_method(b"\x05\xff") == (0xFF, 2)


def test_udp_datagram() -> None:
    datagram = b"\x00\x00\x00\x01\x08\x08\x08\x08\x00\x35" + b"query"
    header = codec.parse_udp(datagram)
    assert (header.frag, header.host, header.port) == (0, "8.8.8.8", 53)
    assert datagram[header.payload_offset :] == b"query"
    assert codec.encode_udp("8.8.8.8", 53, b"query") == datagram
    assert codec.parse_udp(codec.encode_udp("::1", 53, b"", frag=1)).frag == 1


# -- bad input: the reply it documents ------------------------------------------------


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"\x04\x01\x00\x50", None),  # SOCKS4
        (b"GET / HTTP/1.1\r\n", None),  # garbage
        (b"\x05\x00", None),  # NMETHODS 0
    ],
)
def test_bad_greetings(data: bytes, reply: Reply | None) -> None:
    with pytest.raises(SocksError) as caught:
        codec.parse_greeting(data)
    assert caught.value.reply is reply


@pytest.mark.parametrize(
    ("data", "reply"),
    [
        (b"\x05\x02\x00\x01\x7f\x00\x00\x01\x00\x50", None),  # BIND parses
        (b"\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50", Reply.COMMAND_NOT_SUPPORTED),
        (b"\x05\x01\x00\x02\x7f\x00\x00\x01\x00\x50", Reply.ADDRESS_TYPE_NOT_SUPPORTED),
        (b"\x05\x01\x00\x03\x00\x00\x50", Reply.HOST_UNREACHABLE),  # length 0
        (b"\x05\x01\x00\x03\x02\xc3\xa9\x00\x50", Reply.HOST_UNREACHABLE),  # not ASCII
        (b"\x05\x01\x00\x03\x02a\n\x00\x50", Reply.HOST_UNREACHABLE),  # control byte
        (b"\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50", None),  # version 4
    ],
)
def test_bad_requests(data: bytes, reply: Reply | None) -> None:
    if data[1] == Command.BIND:
        parsed = codec.parse_request(data)
        assert parsed is not None and parsed[0].command is Command.BIND
        return
    with pytest.raises(SocksError) as caught:
        codec.parse_request(data)
    assert caught.value.reply is reply


def test_domain_of_255_bytes_parses() -> None:
    """The longest name the format carries: the codec takes it, the policy
    (not the codec) says it is not a host name."""
    name = b"a" * 255
    data = b"\x05\x01\x00\x03\xff" + name + b"\x00\x50"
    parsed = codec.parse_request(data)
    assert parsed is not None and parsed[0].host == name.decode()
    assert parsed[1] == len(data) == codec.MAX_REQUEST


def test_truncated_udp_datagrams_raise() -> None:
    for datagram in [b"", b"\x00\x00", b"\x00\x00\x00\x01\x7f", b"\x00\x00\x00\x07"]:
        with pytest.raises(SocksError):
            codec.parse_udp(datagram)


def test_encoders_refuse_what_the_format_cannot_carry() -> None:
    with pytest.raises(ValueError, match="1-255"):
        codec.encode_address("a" * 256, 80)
    with pytest.raises(ValueError, match="ASCII"):
        codec.encode_address("é.example", 80)
    with pytest.raises(ValueError, match="port"):
        codec.encode_address("example.com", 65536)
    with pytest.raises(ValueError):
        codec.encode_credentials(b"", b"x")
    with pytest.raises(ValueError):
        codec.encode_greeting([])


# -- properties --------------------------------------------------------------------

hosts = st.one_of(
    st.ip_addresses().map(str),
    st.text(
        alphabet="abcdefghijklmnopqrstuvwxyz0123456789.-", min_size=1, max_size=255
    ).filter(lambda h: address_kind(h) is AddressType.DOMAIN),
)
ports = st.integers(0, 65535)


def address_kind(host: str) -> AddressType:
    try:
        return AddressType(4 if ":" in str(ipaddress.ip_address(host)) else 1)
    except ValueError:
        return AddressType.DOMAIN


@given(st.sampled_from(list(Command)), hosts, ports, st.binary(max_size=20))
def test_request_round_trip_at_any_split(
    command: Command, host: str, port: int, tail: bytes
) -> None:
    """Encoded then parsed gives the request back; every prefix is
    incomplete (None), never an error; what follows is left alone."""
    data = codec.encode_request(command, host, port)
    for cut in range(len(data)):
        assert codec.parse_request(data[:cut]) is None
    parsed = codec.parse_request(data + tail)
    assert parsed is not None
    request, size = parsed
    assert size == len(data)
    assert (request.command, request.port) == (command, port)
    assert (
        ipaddress.ip_address(request.host) == ipaddress.ip_address(host)
        if (request.address_type is not AddressType.DOMAIN)
        else request.host == host
    )


@given(hosts, ports, st.binary(max_size=64), st.integers(0, 255))
def test_udp_round_trip(host: str, port: int, payload: bytes, frag: int) -> None:
    datagram = codec.encode_udp(host, port, payload, frag)
    header = codec.parse_udp(datagram)
    assert (header.frag, header.port) == (frag, port)
    assert datagram[header.payload_offset :] == payload


@given(st.binary(min_size=1, max_size=40), st.binary(min_size=1, max_size=40))
def test_credentials_round_trip(user: bytes, password: bytes) -> None:
    data = codec.encode_credentials(user, password)
    for cut in range(len(data)):
        assert codec.parse_credentials(data[:cut]) is None
    assert codec.parse_credentials(data) == (Credentials(user, password), len(data))


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_socks_error(data: bytes) -> None:
    """Whatever arrives, each parser returns None (incomplete), a message
    within its bound, or a SocksError: never another exception, never a
    size past the input or the message bound."""
    for parse, bound in [
        (codec.parse_greeting, codec.MAX_GREETING),
        (codec.parse_request, codec.MAX_REQUEST),
        (codec.parse_credentials, codec.MAX_USERPASS),
        (codec.parse_reply, codec.MAX_REQUEST),
    ]:
        try:
            parsed = parse(data)
        except SocksError as exc:
            assert exc.reply is None or exc.reply in Reply
            continue
        if parsed is None:
            assert len(data) < bound
        else:
            assert 0 < parsed[1] <= min(len(data), bound)
    try:
        header = codec.parse_udp(data)
    except SocksError:
        return
    assert header.payload_offset <= len(data)


@given(st.binary(max_size=300))
def test_incomplete_input_never_needs_more_than_the_bound(data: bytes) -> None:
    """A reader stops waiting at the bound: a parser that says 'incomplete'
    for input at or past its bound would let a client grow the buffer."""
    padded = data + bytes(codec.MAX_USERPASS)
    for parse in (codec.parse_greeting, codec.parse_request, codec.parse_credentials):
        with contextlib.suppress(SocksError):
            assert parse(padded) is not None
