"""The PROXY protocol (HAProxy's spec, versions 1 and 2): who the client was.

A load balancer that passes TCP through prepends one header to the
connection saying whom it accepted it from. This module has:

- a sans-I/O parser (:func:`parse_proxy_header`) and encoder
  (:func:`encode_proxy_header`) for both versions, TLVs included;
- :class:`ProxyProtocol`, the per-listener setting the server runs at accept
  time, before any HTTP or TLS byte: a header is required from trusted sender
  networks, and from nobody else (their bytes go to HTTP untouched, so a
  header from them is never believed: h11 answers it 400 like any bad
  request line).

Why not a package: the PyPI candidates checked (``proxy-protocol`` 0.11.3,
asyncio-centred; ``pwho``, v1 only, untouched since 2014) read a v1 line
without the spec's 107-byte bound, take a v2 length of up to 64 KiB before
judging it, and answer bad ports and addresses with bare ``ValueError``. The
rules below are short enough to own and test against the spec's examples.

Reading never over-reads: the header is peeked (``MSG_PEEK``) and exactly
its bytes are consumed, so whatever follows (an HTTP request, a TLS
ClientHello) stays in the socket for the next reader, with no wrapper stream
in between (splice and the plain-socket fast paths keep working).
"""

from __future__ import annotations

import collections
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal, NoReturn, Protocol

import trio

from ._plain_socket import find_socket


class _Addressed(Protocol):
    """The part of a :class:`~hijack.Connection` a header is made from."""

    @property
    def remote_address(self) -> Any: ...

    @property
    def local_address(self) -> Any: ...

    @property
    def proxy_header(self) -> ProxyHeader | None: ...


__all__ = [
    "V1_MAX_SIZE",
    "V2_SIGNATURE",
    "ProxyHeader",
    "ProxyProtocol",
    "ProxyProtocolError",
    "ProxyTLS",
    "encode_proxy_header",
    "parse_proxy_header",
    "proxy_header_for",
]

logger = logging.getLogger("hijack.proxy")

V1_PREFIX = b"PROXY "
# Spec 2.1: "PROXY UNKNOWN" with two full IPv6 addresses and ports, CRLF
# included, is the longest line a sender may produce.
V1_MAX_SIZE = 107
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED_SIZE = 16  # signature, version/command, family/transport, length
# Address block sizes by family nibble (spec 2.2): IPv4, IPv6, UNIX.
V2_ADDRESS_SIZES = {0x1: 12, 0x2: 36, 0x3: 216}
# The largest address block plus the fixed part: a cap below this could not
# take every valid header without TLVs.
MIN_MAX_SIZE = V2_FIXED_SIZE + 216
DEFAULT_MAX_SIZE = 4096  # room for UNIX addresses, unique ID, SSL details

# TLV types (spec 2.2.1 - 2.2.8).
PP2_TYPE_ALPN = 0x01
PP2_TYPE_AUTHORITY = 0x02
PP2_TYPE_CRC32C = 0x03
PP2_TYPE_NOOP = 0x04
PP2_TYPE_UNIQUE_ID = 0x05
PP2_TYPE_SSL = 0x20
PP2_SUBTYPE_SSL_VERSION = 0x21
PP2_SUBTYPE_SSL_CN = 0x22
PP2_SUBTYPE_SSL_CIPHER = 0x23
PP2_SUBTYPE_SSL_SIG_ALG = 0x24
PP2_SUBTYPE_SSL_KEY_ALG = 0x25
PP2_TYPE_NETNS = 0x30
UNIQUE_ID_MAX = 128  # spec 2.2.5

Address = tuple[str, int] | str


class ProxyProtocolError(Exception):
    """The bytes are not a valid PROXY protocol header, or break a limit."""


class _Closed(ProxyProtocolError):
    """The peer closed (or reset) before its header was whole."""


class _TooLarge(ProxyProtocolError):
    """The header would exceed a size limit."""


@dataclass(frozen=True, slots=True)
class ProxyTLS:
    """The ``PP2_TYPE_SSL`` TLV: TLS as the balancer terminated it.

    ``client`` holds the PP2_CLIENT_* bits (0x01 SSL, 0x02 a certificate on
    this connection, 0x04 on the session), ``verified`` is True when the
    balancer verified the client certificate (``verify == 0``)."""

    client: int
    verified: bool
    version: str | None
    cipher: str | None
    common_name: str | None
    signature_algorithm: str | None
    key_algorithm: str | None


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """One parsed header.

    ``command`` is ``"local"`` for the balancer's own connections (health
    checks): the socket's addresses stand. ``source`` (the client) and
    ``destination`` (the address the client reached) are ``(host, port)``
    for TCP, a path for UNIX, and ``None`` when the header carries none
    (LOCAL, v1 ``UNKNOWN``, an unspecified family). An IPv4-mapped IPv6
    address (``::ffff:a.b.c.d``, what a dual-stack balancer sends for an
    IPv4 client) is given as the IPv4 address it carries. ``tlvs`` keeps
    every v2 TLV as ``(type, value)`` in order.
    """

    version: Literal[1, 2]
    command: Literal["proxy", "local"]
    family: socket.AddressFamily
    source: Address | None
    destination: Address | None
    tlvs: tuple[tuple[int, bytes], ...] = ()

    def tlv(self, kind: int) -> bytes | None:
        """The value of the first TLV of type ``kind``, or None."""
        for tlv_kind, value in self.tlvs:
            if tlv_kind == kind:
                return value
        return None

    @property
    def alpn(self) -> bytes | None:
        return self.tlv(PP2_TYPE_ALPN)

    @property
    def authority(self) -> str | None:
        """The host name the client asked for (TLS SNI), if sent."""
        value = self.tlv(PP2_TYPE_AUTHORITY)
        return None if value is None else value.decode("utf-8", "replace")

    @property
    def unique_id(self) -> bytes | None:
        return self.tlv(PP2_TYPE_UNIQUE_ID)

    @property
    def tls(self) -> ProxyTLS | None:
        value = self.tlv(PP2_TYPE_SSL)
        return None if value is None else _parse_ssl_tlv(value)


# -- parsing ---------------------------------------------------------------------


def parse_proxy_header(
    data: bytes | bytearray | memoryview, *, max_size: int = DEFAULT_MAX_SIZE
) -> tuple[ProxyHeader, int] | None:
    """Parse the header at the start of ``data``.

    Returns ``(header, size)`` once a whole header is there (``size`` bytes;
    the rest of ``data`` is not the header's), ``None`` while ``data`` is a
    valid beginning that needs more bytes, and raises
    :class:`ProxyProtocolError` as soon as the bytes seen cannot begin a
    valid header or the header would exceed ``max_size`` bytes.
    """
    data = bytes(data)
    if data[:1] == b"P":
        return _parse_v1(data)
    if data[:1] == b"\r":
        return _parse_v2(data, max_size)
    if not data:
        return None
    raise ProxyProtocolError(f"not a PROXY protocol header: {data[:16]!r}")


def _parse_v1(data: bytes) -> tuple[ProxyHeader, int] | None:
    if not data.startswith(V1_PREFIX[: len(data)]):
        raise ProxyProtocolError(f"not a PROXY protocol header: {data[:16]!r}")
    end = data.find(b"\r\n", 0, V1_MAX_SIZE)
    if end < 0:
        if len(data) >= V1_MAX_SIZE:
            raise _TooLarge(f"PROXY v1 line longer than {V1_MAX_SIZE} bytes")
        if b"\n" in data or (b"\r" in data and not data.endswith(b"\r")):
            raise ProxyProtocolError("PROXY v1 line not ended by CRLF")
        return None
    line = data[:end]
    size = end + 2
    if not line.startswith(V1_PREFIX):
        raise ProxyProtocolError("PROXY v1 line too short")
    fields = line[len(V1_PREFIX) :].split(b" ")
    if fields[0] == b"UNKNOWN":
        # Spec 2.1: whatever follows UNKNOWN is ignored; use the socket's.
        return ProxyHeader(1, "proxy", socket.AF_UNSPEC, None, None), size
    if fields[0] not in (b"TCP4", b"TCP6") or len(fields) != 5:
        raise ProxyProtocolError(f"bad PROXY v1 line: {line[:V1_MAX_SIZE]!r}")
    version = 4 if fields[0] == b"TCP4" else 6
    source_ip = _v1_address(fields[1], version)
    destination_ip = _v1_address(fields[2], version)
    source_port, destination_port = _v1_port(fields[3]), _v1_port(fields[4])
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    header = ProxyHeader(
        1,
        "proxy",
        family,
        (source_ip, source_port),
        (destination_ip, destination_port),
    )
    return header, size


def _v1_address(text: bytes, version: int) -> str:
    try:
        address = ipaddress.ip_address(text.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        raise ProxyProtocolError(f"bad address in PROXY v1 line: {text!r}") from None
    if address.version != version:
        raise ProxyProtocolError(f"IPv{address.version} address in a TCP{version} line")
    return _unmapped(address)


def _v1_port(text: bytes) -> int:
    # Decimal digits only: int() would also take "+80", " 80" and "8_0".
    if not (1 <= len(text) <= 5 and text.isdigit()) or int(text) > 65535:
        raise ProxyProtocolError(f"bad port in PROXY v1 line: {text!r}")
    return int(text)


def _parse_v2(data: bytes, max_size: int) -> tuple[ProxyHeader, int] | None:
    if not data.startswith(V2_SIGNATURE[: len(data)]):
        raise ProxyProtocolError(f"not a PROXY protocol header: {data[:16]!r}")
    if len(data) < V2_FIXED_SIZE:
        if len(data) > len(V2_SIGNATURE) and data[12] >> 4 != 2:
            raise ProxyProtocolError(f"PROXY v2 signature with version {data[12] >> 4}")
        return None
    version_command, family_transport, length = struct.unpack_from("!BBH", data, 12)
    if version_command >> 4 != 2:
        raise ProxyProtocolError(f"PROXY v2 signature with version {data[12] >> 4}")
    command = version_command & 0x0F
    if command not in (0x0, 0x1):
        raise ProxyProtocolError(f"unknown PROXY v2 command {command:#x}")
    size = V2_FIXED_SIZE + length
    if size > max_size:
        raise _TooLarge(
            f"PROXY v2 header of {size} bytes exceeds the {max_size}-byte limit"
        )
    if len(data) < size:
        return None
    body = data[V2_FIXED_SIZE:size]
    family_nibble, transport = family_transport >> 4, family_transport & 0x0F
    known = family_nibble in (0x0, *V2_ADDRESS_SIZES) and transport in (0, 1, 2)
    if command == 0x1 and transport == 2:
        raise ProxyProtocolError("PROXY v2 header says DGRAM on a stream connection")
    if command == 0x0 or family_nibble == 0x0 or transport == 0:
        # LOCAL (the balancer's own connection, a health check) or an
        # unspecified family or transport: the address block is to be
        # ignored and the socket's addresses stand (spec 2.2). TLVs are kept
        # when they parse; they are not a reason to refuse such a header.
        if command == 0x1 and not known:
            raise ProxyProtocolError(f"unknown PROXY v2 family {family_transport:#04x}")
        try:
            tlvs = _parse_tlvs(body[V2_ADDRESS_SIZES.get(family_nibble, 0) :])
            _check_crc32c(data[:size], tlvs)
        except ProxyProtocolError:
            tlvs = ()
        kind: Literal["proxy", "local"] = "local" if command == 0x0 else "proxy"
        return ProxyHeader(2, kind, socket.AF_UNSPEC, None, None, tlvs), size
    if not known:
        raise ProxyProtocolError(f"unknown PROXY v2 family {family_transport:#04x}")
    address_size = V2_ADDRESS_SIZES[family_nibble]
    if length < address_size:
        raise ProxyProtocolError(
            f"PROXY v2 length {length} is shorter than its addresses"
        )
    tlvs = _parse_tlvs(body[address_size:])
    _check_crc32c(data[:size], tlvs)
    source, destination, family = _v2_addresses(family_nibble, body)
    return ProxyHeader(2, "proxy", family, source, destination, tlvs), size


def _v2_addresses(
    family_nibble: int, body: bytes
) -> tuple[Address, Address, socket.AddressFamily]:
    if family_nibble == 0x3:
        source_path = body[:108].split(b"\0", 1)[0]
        destination_path = body[108:216].split(b"\0", 1)[0]
        return (
            source_path.decode("utf-8", "surrogateescape"),
            destination_path.decode("utf-8", "surrogateescape"),
            socket.AF_UNIX,
        )
    width = 4 if family_nibble == 0x1 else 16
    source_raw, destination_raw = body[:width], body[width : 2 * width]
    source_port, destination_port = struct.unpack_from("!HH", body, 2 * width)
    source_ip = ipaddress.ip_address(source_raw)
    destination_ip = ipaddress.ip_address(destination_raw)
    family = socket.AF_INET if width == 4 else socket.AF_INET6
    return (
        (_unmapped(source_ip), source_port),
        (_unmapped(destination_ip), destination_port),
        family,
    )


def _parse_tlvs(data: bytes) -> tuple[tuple[int, bytes], ...]:
    tlvs = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < 3:
            raise ProxyProtocolError("truncated TLV in PROXY v2 header")
        kind, length = struct.unpack_from("!BH", data, offset)
        offset += 3
        if offset + length > len(data):
            raise ProxyProtocolError(
                f"TLV {kind:#04x} of {length} bytes overruns the PROXY v2 header"
            )
        tlvs.append((kind, data[offset : offset + length]))
        offset += length
    for kind, value in tlvs:
        if kind == PP2_TYPE_CRC32C and len(value) != 4:
            raise ProxyProtocolError("PROXY v2 CRC32C TLV is not 4 bytes")
        if kind == PP2_TYPE_UNIQUE_ID and len(value) > UNIQUE_ID_MAX:
            raise ProxyProtocolError("PROXY v2 unique ID longer than 128 bytes")
    return tuple(tlvs)


def _parse_ssl_tlv(value: bytes) -> ProxyTLS:
    if len(value) < 5:
        raise ProxyProtocolError("PROXY v2 SSL TLV shorter than 5 bytes")
    client, verify = struct.unpack_from("!BI", value)
    details = dict(_parse_tlvs(value[5:]))

    def text(kind: int) -> str | None:
        raw = details.get(kind)
        return None if raw is None else raw.decode("utf-8", "replace")

    return ProxyTLS(
        client=client,
        verified=verify == 0,
        version=text(PP2_SUBTYPE_SSL_VERSION),
        cipher=text(PP2_SUBTYPE_SSL_CIPHER),
        common_name=text(PP2_SUBTYPE_SSL_CN),
        signature_algorithm=text(PP2_SUBTYPE_SSL_SIG_ALG),
        key_algorithm=text(PP2_SUBTYPE_SSL_KEY_ALG),
    )


def _check_crc32c(header: bytes, tlvs: tuple[tuple[int, bytes], ...]) -> None:
    """Spec 2.2.3: a receiver that supports the checksum must check it; it is
    computed over the whole header with the checksum's own bytes zeroed."""
    given = next((v for k, v in tlvs if k == PP2_TYPE_CRC32C), None)
    if given is None:
        return
    at = _tlv_value_offset(header, PP2_TYPE_CRC32C)
    zeroed = header[:at] + b"\0\0\0\0" + header[at + 4 :]
    if crc32c(zeroed) != int.from_bytes(given, "big"):
        raise ProxyProtocolError("PROXY v2 header fails its CRC32C checksum")


def _tlv_value_offset(header: bytes, kind: int) -> int:
    """Where the value of the first TLV ``kind`` starts in a whole header."""
    address_size = V2_ADDRESS_SIZES.get(header[13] >> 4, 0)
    offset = V2_FIXED_SIZE + address_size
    while header[offset] != kind:
        offset += 3 + int.from_bytes(header[offset + 1 : offset + 3], "big")
    return offset + 3


def _unmapped(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return str(address.ipv4_mapped)
    return str(address)


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli, reflected
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli); headers are small, so a table loop will do."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


# -- encoding -----------------------------------------------------------------


def encode_proxy_header(version: Literal[1, 2], source: Any, destination: Any) -> bytes:
    """A header saying the connection came from ``source`` to ``destination``
    (``(host, port)`` each, as a Connection's addresses are).

    Both addresses must be of one family (spec 2.1, 2.2); when they are not
    (an IPv6 client reached an IPv4 listener, or the other way round) the
    IPv4 one is sent IPv4-mapped, as HAProxy does. Anything that is not an IP
    address (a UNIX peer, no address) gives v1 ``UNKNOWN`` or a v2 PROXY
    header of unspecified family: the receiver then uses its socket's."""
    ips = [_ip_and_port(source), _ip_and_port(destination)]
    if ips[0] is None or ips[1] is None:
        if version == 1:
            return b"PROXY UNKNOWN\r\n"
        return V2_SIGNATURE + bytes([0x21, 0x00]) + b"\0\0"
    (source_ip, source_port), (destination_ip, destination_port) = ips[0], ips[1]
    if source_ip.version != destination_ip.version:
        source_ip, destination_ip = _as_v6(source_ip), _as_v6(destination_ip)
    if version == 1:
        family = b"TCP4" if source_ip.version == 4 else b"TCP6"
        return b"PROXY %s %s %s %d %d\r\n" % (
            family,
            str(source_ip).encode(),
            str(destination_ip).encode(),
            source_port,
            destination_port,
        )
    family_transport = 0x11 if source_ip.version == 4 else 0x21
    addresses = (
        source_ip.packed
        + destination_ip.packed
        + struct.pack("!HH", source_port, destination_port)
    )
    return (
        V2_SIGNATURE
        + struct.pack("!BBH", 0x21, family_transport, len(addresses))
        + addresses
    )


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _ip_and_port(address: Any) -> tuple[IPAddress, int] | None:
    if not (isinstance(address, tuple) and len(address) >= 2):
        return None
    host, port = address[0], address[1]
    try:
        return ipaddress.ip_address(str(host).partition("%")[0]), int(port)
    except ValueError:
        return None


def _as_v6(address: IPAddress) -> ipaddress.IPv6Address:
    if isinstance(address, ipaddress.IPv6Address):
        return address
    return ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + address.packed)


# -- at accept time ---------------------------------------------------------------

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ProxyProtocol:
    """PROXY protocol on one listener: ``serve_tcp(..., proxy_protocol=
    ProxyProtocol(["10.0.0.0/8"]))``.

    ``trusted``: the networks of the balancers (``"10.0.0.0/8"``,
    ``"::1"``), and ``"unix"`` to trust every peer of a UNIX socket listener
    (its file mode is the guard). A connection from a trusted sender must
    begin with a v1 or v2 header, whole within ``timeout`` seconds and at
    most ``max_header_size`` bytes; otherwise it is closed without a
    response. A connection from anyone else is served as plain HTTP from its
    socket address: a header it sends is never believed (it reaches the HTTP
    parser, which answers 400). The spec forbids guessing whether a header
    is there; the sender's address decides, nothing else.

    ``rejections`` counts the connections closed here, by reason
    (``"invalid"``, ``"timeout"``, ``"closed"``, ``"too-large"``), for
    metrics; one object may serve several listeners and counts them all.
    ``on_reject(reason)`` is called for each as well (a metrics counter).
    """

    def __init__(
        self,
        trusted: Iterable[str | Network],
        *,
        timeout: float = 5.0,
        max_header_size: int = DEFAULT_MAX_SIZE,
        on_reject: Callable[[str], None] | None = None,
    ) -> None:
        networks: list[Network] = []
        self.trust_unix = False
        for entry in trusted:
            if entry == "unix":
                self.trust_unix = True
                continue
            try:
                networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError as exc:
                raise ValueError(f"not a network for PROXY protocol: {exc}") from None
        if max_header_size < MIN_MAX_SIZE:
            raise ValueError(f"max_header_size must be at least {MIN_MAX_SIZE}")
        if not timeout > 0:
            raise ValueError("timeout must be > 0")
        self.trusted: tuple[Network, ...] = tuple(networks)
        self.timeout = timeout
        self.max_header_size = max_header_size
        self.rejections: collections.Counter[str] = collections.Counter()
        self.on_reject = on_reject

    def __repr__(self) -> str:
        trusted = [str(n) for n in self.trusted] + (["unix"] if self.trust_unix else [])
        return f"ProxyProtocol(trusted={trusted!r})"

    def is_trusted(self, peer: Any, family: int) -> bool:
        """Whether a socket peer (``getpeername()``) is a trusted sender."""
        if family == getattr(socket, "AF_UNIX", None):
            return self.trust_unix
        if not isinstance(peer, tuple):
            return False
        try:
            ip = ipaddress.ip_address(str(peer[0]).partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped  # an IPv4 sender on a dual-stack socket
        return any(ip in network for network in self.trusted)

    async def read_header(self, stream: trio.abc.Stream) -> ProxyHeader | None:
        """At accept time: the header of a trusted sender's connection, or
        ``None`` when the peer is not trusted (nothing is read then).

        Raises :class:`ProxyProtocolError` (counted in ``rejections`` and
        logged on ``hijack.proxy``) when a trusted sender's header is
        missing, invalid, too large or too slow; the caller closes the
        stream. Streams without a socket are never trusted."""
        sock = find_socket(stream)
        if sock is None:
            return None
        try:
            peer = sock.getpeername()
        except OSError as exc:
            # Reset before we looked: a balancer's health check (a LOCAL
            # header, then a reset). What it sent may still be queued, but
            # without the sender's address it cannot be judged, so it is
            # not served: as closed a connection as any.
            self._reject(None, "closed", _Closed(f"gone before its header: {exc}"))
        if not self.is_trusted(peer, sock.family):
            return None
        error: ProxyProtocolError
        try:
            with trio.fail_after(self.timeout):
                return await read_proxy_header(sock, max_size=self.max_header_size)
        except trio.TooSlowError:
            reason = "timeout"
            error = ProxyProtocolError(f"no whole PROXY header within {self.timeout}s")
        except _Closed as exc:
            reason, error = "closed", exc
        except _TooLarge as exc:
            reason, error = "too-large", exc
        except ProxyProtocolError as exc:
            reason, error = "invalid", exc
        except OSError as exc:
            reason, error = "closed", _Closed(str(exc))
        self._reject(peer, reason, error)

    def _reject(self, peer: Any, reason: str, error: ProxyProtocolError) -> NoReturn:
        """Count, tell ``on_reject``, log, and raise ``error``."""
        self.rejections[reason] += 1
        if self.on_reject is not None:
            try:
                self.on_reject(reason)
            except Exception:  # a broken hook must not take the server down
                logger.exception("on_reject hook %r failed", self.on_reject)
        # A balancer's plain TCP health check connects and closes: not news.
        level = logging.DEBUG if reason == "closed" else logging.WARNING
        logger.log(level, "PROXY protocol: closing %r: %s", peer, error)
        raise error


async def read_proxy_header(
    sock: trio.socket.SocketType, *, max_size: int = DEFAULT_MAX_SIZE
) -> ProxyHeader:
    """Read exactly one header from ``sock``, leaving every later byte in it.

    Peek, parse, then consume only header bytes: a partial header's bytes
    are all header (consumed, then wait for more); a whole one's exact size
    is known. So no byte of what follows is ever taken from the socket."""
    taken = b""
    while True:
        peeked = await sock.recv(max_size - len(taken), socket.MSG_PEEK)
        if not peeked:
            raise _Closed(
                "connection closed inside the PROXY header"
                if taken
                else "connection closed before a PROXY header"
            )
        parsed = parse_proxy_header(taken + peeked, max_size=max_size)
        want = len(peeked) if parsed is None else parsed[1] - len(taken)
        while want:
            chunk = await sock.recv(want)
            if not chunk:
                raise _Closed("connection closed inside the PROXY header")
            taken += chunk
            want -= len(chunk)
        if parsed is not None:
            return parsed[0]


def proxy_header_for(connection: _Addressed, version: Literal[1, 2]) -> bytes:
    """The header to send upstream on behalf of ``connection``'s client:
    from ``remote_address`` (the balancer's client, behind PROXY protocol)
    to the address that client reached (the balancer's, when there was one;
    else this server's)."""
    received = connection.proxy_header
    destination = (
        received.destination
        if received is not None and received.destination is not None
        else connection.local_address
    )
    return encode_proxy_header(version, connection.remote_address, destination)
