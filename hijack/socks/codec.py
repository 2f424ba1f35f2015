"""SOCKS5 on the wire, sans I/O: RFC 1928 (the protocol) and RFC 1929
(username/password), both sides.

Every ``parse_*`` function takes the bytes received so far and returns
``None`` while they are an incomplete message, or ``(message, size)`` with
the number of bytes the message took (what follows belongs to the next
step: an optimistic client's first data). Malformed input raises
:class:`SocksError`, whose ``reply`` is the code the server should answer
with before closing (``None``: close without a reply, the message was not
even a SOCKS5 request to reply to). Nothing here reads, writes, resolves or
judges a destination: the server (:mod:`hijack.socks.server`) does that.

Every message has a small upper bound (a greeting 257 bytes, a request 262,
credentials 513), so a reader never buffers more than that while waiting for
a message to complete.
"""

from __future__ import annotations

import enum
import ipaddress
import struct
from dataclasses import dataclass

__all__ = [
    "MAX_GREETING",
    "MAX_REQUEST",
    "MAX_USERPASS",
    "VERSION",
    "AddressType",
    "AuthMethod",
    "Command",
    "Credentials",
    "Reply",
    "SocksError",
    "SocksReply",
    "SocksRequest",
    "UDPHeader",
    "encode_address",
    "encode_auth_status",
    "encode_credentials",
    "encode_greeting",
    "encode_method",
    "encode_reply",
    "encode_request",
    "encode_udp",
    "parse_address",
    "parse_auth_status",
    "parse_credentials",
    "parse_greeting",
    "parse_method",
    "parse_reply",
    "parse_request",
    "parse_udp",
]

VERSION = 5
USERPASS_VERSION = 1  # RFC 1929's sub-negotiation version
MAX_GREETING = 2 + 255
MAX_REQUEST = 4 + 1 + 255 + 2
MAX_USERPASS = 3 + 255 + 255


class AuthMethod(enum.IntEnum):
    """RFC 1928 section 3 methods (the ones this codec names)."""

    NO_AUTH = 0x00
    GSSAPI = 0x01
    USERPASS = 0x02
    NO_ACCEPTABLE = 0xFF


class Command(enum.IntEnum):
    """RFC 1928 section 4 commands."""

    CONNECT = 0x01
    BIND = 0x02
    UDP_ASSOCIATE = 0x03


class AddressType(enum.IntEnum):
    """RFC 1928 section 5 address types (ATYP)."""

    IPV4 = 0x01
    DOMAIN = 0x03
    IPV6 = 0x04


class Reply(enum.IntEnum):
    """RFC 1928 section 6 reply codes."""

    SUCCEEDED = 0x00
    GENERAL_FAILURE = 0x01
    NOT_ALLOWED = 0x02  # connection not allowed by ruleset
    NETWORK_UNREACHABLE = 0x03
    HOST_UNREACHABLE = 0x04
    CONNECTION_REFUSED = 0x05
    TTL_EXPIRED = 0x06  # used, as by most servers, for "timed out"
    COMMAND_NOT_SUPPORTED = 0x07
    ADDRESS_TYPE_NOT_SUPPORTED = 0x08


class SocksError(ValueError):
    """Malformed SOCKS5 input. ``reply``: the code to answer before closing,
    or None to close without answering."""

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


@dataclass(frozen=True, slots=True)
class SocksRequest:
    """A request (client -> server): ``host`` is an IP address in text
    (IPv6 without brackets) or a domain name as sent (ASCII), per
    ``address_type``."""

    command: Command
    host: str
    port: int
    address_type: AddressType


@dataclass(frozen=True, slots=True)
class SocksReply:
    """A reply (server -> client): the code and the bound address."""

    reply: int
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class Credentials:
    """RFC 1929 username and password, as the bytes the client sent."""

    username: bytes
    password: bytes


@dataclass(frozen=True, slots=True)
class UDPHeader:
    """The header of a UDP ASSOCIATE datagram and where its payload starts."""

    frag: int
    host: str
    port: int
    address_type: AddressType
    payload_offset: int


# -- addresses ---------------------------------------------------------------


def address_type_of(host: str) -> AddressType:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return AddressType.DOMAIN
    return AddressType.IPV4 if address.version == 4 else AddressType.IPV6


def encode_address(host: str, port: int) -> bytes:
    """ATYP, address and port: an IP literal as 4 or 16 bytes, anything else
    as a domain name (ASCII, 1-255 bytes)."""
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range: {port}")
    kind = address_type_of(host)
    if kind is AddressType.DOMAIN:
        try:
            name = host.encode("ascii")
        except UnicodeEncodeError:
            raise ValueError(f"a SOCKS5 domain name is ASCII: {host!r}") from None
        if not 1 <= len(name) <= 255:
            raise ValueError(f"a SOCKS5 domain name is 1-255 bytes: {host!r}")
        body = bytes([AddressType.DOMAIN, len(name)]) + name
    else:
        packed = ipaddress.ip_address(host).packed
        body = bytes([kind]) + packed
    return body + struct.pack("!H", port)


def parse_address(
    data: bytes | bytearray | memoryview, offset: int = 0
) -> tuple[str, int, AddressType, int] | None:
    """``(host, port, address_type, end)`` of the address at ``offset``,
    None if incomplete. Raises :class:`SocksError` (reply 08 for an unknown
    ATYP, 04 for a domain name that is empty or not ASCII)."""
    if len(data) <= offset:
        return None
    try:
        kind = AddressType(data[offset])
    except ValueError:
        raise SocksError(
            f"unknown address type {data[offset]:#04x}",
            Reply.ADDRESS_TYPE_NOT_SUPPORTED,
        ) from None
    start = offset + 1
    if kind is AddressType.IPV4:
        end = start + 4
        if len(data) < end + 2:
            return None
        host = str(ipaddress.IPv4Address(bytes(data[start:end])))
    elif kind is AddressType.IPV6:
        end = start + 16
        if len(data) < end + 2:
            return None
        host = str(ipaddress.IPv6Address(bytes(data[start:end])))
    else:
        if len(data) <= start:
            return None
        size = data[start]
        start += 1
        end = start + size
        if len(data) < end + 2:
            return None
        if size == 0:
            raise SocksError("empty domain name", Reply.HOST_UNREACHABLE)
        raw = bytes(data[start:end])
        host = raw.decode("latin-1")
        if not raw.isascii() or not host.isprintable():
            raise SocksError(f"domain name not ASCII: {raw!r}", Reply.HOST_UNREACHABLE)
    (port,) = struct.unpack_from("!H", data, end)
    return host, port, kind, end + 2


def _check_version(data: bytes | bytearray | memoryview, version: int) -> None:
    if data and data[0] != version:
        raise SocksError(f"not SOCKS version {version}: first byte {data[0]:#04x}")


# -- method negotiation --------------------------------------------------------


def encode_greeting(methods: list[int] | tuple[int, ...]) -> bytes:
    if not 1 <= len(methods) <= 255:
        raise ValueError("a greeting offers 1-255 methods")
    return bytes([VERSION, len(methods), *methods])


def parse_greeting(
    data: bytes | bytearray | memoryview,
) -> tuple[frozenset[int], int] | None:
    """The methods a client offers. A wrong version or no method at all
    raises (no reply: there is no method to choose)."""
    _check_version(data, VERSION)
    if len(data) < 2:
        return None
    count = data[1]
    if count == 0:
        raise SocksError("the greeting offers no method")
    if len(data) < 2 + count:
        return None
    return frozenset(data[2 : 2 + count]), 2 + count


def encode_method(method: int) -> bytes:
    return bytes([VERSION, method])


def parse_method(data: bytes | bytearray | memoryview) -> tuple[int, int] | None:
    _check_version(data, VERSION)
    if len(data) < 2:
        return None
    return data[1], 2


# -- RFC 1929 ----------------------------------------------------------------


def encode_credentials(username: bytes, password: bytes) -> bytes:
    if not 1 <= len(username) <= 255 or not 1 <= len(password) <= 255:
        raise ValueError("RFC 1929 user names and passwords are 1-255 bytes")
    return (
        bytes([USERPASS_VERSION, len(username)])
        + username
        + bytes([len(password)])
        + password
    )


def parse_credentials(
    data: bytes | bytearray | memoryview,
) -> tuple[Credentials, int] | None:
    """RFC 1929 request. Zero-length names and passwords are accepted here
    (the users file never matches them)."""
    _check_version(data, USERPASS_VERSION)
    if len(data) < 2:
        return None
    ulen = data[1]
    if len(data) < 3 + ulen:
        return None
    plen = data[2 + ulen]
    end = 3 + ulen + plen
    if len(data) < end:
        return None
    return Credentials(bytes(data[2 : 2 + ulen]), bytes(data[3 + ulen : end])), end


def encode_auth_status(ok: bool) -> bytes:
    return bytes([USERPASS_VERSION, 0 if ok else 1])


def parse_auth_status(data: bytes | bytearray | memoryview) -> tuple[bool, int] | None:
    _check_version(data, USERPASS_VERSION)
    if len(data) < 2:
        return None
    return data[1] == 0, 2


# -- requests and replies ----------------------------------------------------------


def encode_request(command: int, host: str, port: int) -> bytes:
    return bytes([VERSION, command, 0]) + encode_address(host, port)


def parse_request(
    data: bytes | bytearray | memoryview,
) -> tuple[SocksRequest, int] | None:
    """A request. Unknown commands raise with reply 07, unknown address
    types with 08, bad domain names with 04; a wrong version closes."""
    _check_version(data, VERSION)
    if len(data) < 4:
        return None
    try:
        command = Command(data[1])
    except ValueError:
        raise SocksError(
            f"unknown command {data[1]:#04x}", Reply.COMMAND_NOT_SUPPORTED
        ) from None
    parsed = parse_address(data, 3)
    if parsed is None:
        return None
    host, port, kind, end = parsed
    return SocksRequest(command, host, port, kind), end


def encode_reply(reply: int, host: str = "0.0.0.0", port: int = 0) -> bytes:
    return bytes([VERSION, reply, 0]) + encode_address(host, port)


def parse_reply(data: bytes | bytearray | memoryview) -> tuple[SocksReply, int] | None:
    _check_version(data, VERSION)
    if len(data) < 4:
        return None
    parsed = parse_address(data, 3)
    if parsed is None:
        return None
    host, port, _kind, end = parsed
    return SocksReply(data[1], host, port), end


# -- UDP ASSOCIATE datagrams ---------------------------------------------------------


def encode_udp(host: str, port: int, payload: bytes, frag: int = 0) -> bytes:
    """A datagram as the client and the relay exchange it: RSV RSV FRAG,
    the address, then the payload."""
    return bytes([0, 0, frag]) + encode_address(host, port) + payload


def parse_udp(datagram: bytes | bytearray | memoryview) -> UDPHeader:
    """The header of a whole datagram (a datagram is never incomplete: a
    short one raises)."""
    if len(datagram) < 4:
        raise SocksError("datagram shorter than a SOCKS5 UDP header")
    try:
        parsed = parse_address(datagram, 3)
    except SocksError as exc:
        raise SocksError(str(exc)) from None
    if parsed is None:
        raise SocksError("datagram shorter than its SOCKS5 UDP header")
    host, port, kind, end = parsed
    return UDPHeader(datagram[2], host, port, kind, end)
