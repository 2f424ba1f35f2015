"""Where a CONNECT tunnel may go: target parsing and the destination policy.

Two rules make the policy safe against the usual tricks (``127.1``,
``0x7f000001``, ``[::ffff:127.0.0.1]``, a name resolving to a private
address, DNS rebinding):

* a target is resolved exactly once, every resolved address is checked, and
  the caller dials one of the addresses returned here, never the name;
* an address is judged by where it really goes: an IPv4-mapped or NAT64
  (``64:ff9b::/96``) IPv6 address by its embedded IPv4 address, a 6to4
  (``2002::/16``) address by both.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Awaitable, Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from .. import split_host_port

__all__ = [
    "BadConnectTarget",
    "ConnectError",
    "ConnectPolicy",
    "ConnectRefused",
    "HostRules",
    "IPAddress",
    "Resolver",
    "UpstreamError",
    "is_non_global",
    "parse_connect_target",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAT64_PREFIX = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052 well-known prefix

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
# Every label numeric (decimal, octal or hex): what inet_aton and getaddrinfo
# read as an IPv4 address (``127.1``, ``2130706433``, ``0x7f000001``, ``0``).
_NUMERIC_LABEL = re.compile(r"(0[xX][0-9A-Fa-f]*|[0-9]+)")


class ConnectError(Exception):
    """A CONNECT that cannot become a tunnel; ``status`` is the HTTP answer."""

    status = 502

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class BadConnectTarget(ConnectError, ValueError):
    """The request target is not a valid ``host:port`` authority (400)."""

    status = 400


class ConnectRefused(ConnectError):
    """The policy forbids this destination (403)."""

    status = 403


class UpstreamError(ConnectError):
    """The name does not resolve or no address accepts a connection (502)."""

    status = 502


def _is_numeric_host(host: str) -> bool:
    return all(_NUMERIC_LABEL.fullmatch(label) for label in host.split("."))


def _check_name(host: str) -> str:
    """A DNS name, lowercased, one trailing dot removed; else raise."""
    name = host[:-1] if host.endswith(".") else host
    if not name or len(name) > 253:
        raise BadConnectTarget(f"bad host name {host!r}")
    if not all(_LABEL.fullmatch(label) for label in name.split(".")):
        raise BadConnectTarget(f"bad host name {host!r}")
    return name.lower()


# Cached: parsing the same literal (a proxy's few upstreams) cost ~10% of a
# tunnel's set-up in the CONNECT profile. Errors raise and are not cached.
@functools.lru_cache(maxsize=1024)
def literal_address(host: str) -> IPAddress | None:
    """The address ``host`` spells without any lookup, or None for a name.

    Accepts what getaddrinfo itself would take as numeric: standard IPv4 and
    IPv6 text and the legacy IPv4 forms (``127.1``, ``2130706433``,
    ``0x7f000001``, ``017700000001``). Raises :class:`BadConnectTarget` for
    numeric junk such as ``1.2.3.4.5`` or ``256.1.1.1``.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not _is_numeric_host(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        raise BadConnectTarget(f"bad IPv4 address {host!r}") from None


def parse_connect_target(target: str) -> tuple[str, int]:
    """Split a CONNECT authority-form target into ``(host, port)``.

    ``host:port`` or ``[ipv6]:port``. The host comes back lowercased, without
    brackets or a trailing dot; IP literals are kept as written (the policy
    reads them). Raises :class:`BadConnectTarget` (a ``ValueError``) for a
    missing, zero, out-of-range or non-numeric port, userinfo, an empty host,
    an IPv6 zone id, or anything that is not an authority.
    """
    if not target or len(target) > 1024:
        raise BadConnectTarget("empty or oversized CONNECT target")
    if "@" in target:
        raise BadConnectTarget(f"userinfo is not allowed: {target!r}")
    try:
        host, port = split_host_port(target)
    except ValueError as exc:
        raise BadConnectTarget(str(exc)) from None
    host = host.lower()
    if target.startswith("["):
        if "%" in host:
            raise BadConnectTarget(f"IPv6 zone ids are not accepted: {target!r}")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise BadConnectTarget(f"bad IPv6 address in {target!r}") from None
    elif literal_address(host) is None:
        host = _check_name(host)
        literal_address(host)  # "127.0.0.1." is still an address
    return host, port


def _destinations(address: IPAddress) -> list[IPAddress]:
    """Where packets to ``address`` really go: the address itself, or the
    IPv4 address it carries (IPv4-mapped, NAT64), or both (6to4)."""
    if isinstance(address, ipaddress.IPv4Address):
        return [address]
    if address.ipv4_mapped is not None:
        return [address.ipv4_mapped]
    if address in NAT64_PREFIX:
        return [ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)]
    if address.sixtofour is not None:
        return [address, address.sixtofour]
    return [address]


def _non_global(address: IPAddress) -> bool:
    # is_global alone is not enough: Python calls multicast global.
    return (
        not address.is_global
        or address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_unspecified
        or address.is_reserved
        or (isinstance(address, ipaddress.IPv6Address) and address.is_site_local)
    )


def is_non_global(address: IPAddress) -> bool:
    """True if ``address`` (or the IPv4 address it embeds) is loopback,
    private, link-local, multicast, unspecified, reserved, shared
    (100.64/10) or otherwise not globally reachable."""
    return any(_non_global(a) for a in _destinations(address))


@dataclass(frozen=True, slots=True)
class HostRules:
    """Parsed allow, deny or direct entries: host names (``example.com``;
    ``.example.com`` with its subdomains) and networks (``10.0.0.0/8``,
    ``::1``, ``[::1]``). ``parse`` raises ValueError naming a bad entry."""

    names: frozenset[str]
    suffixes: tuple[str, ...]  # ".example.com": the name and its subdomains
    networks: tuple[IPNetwork, ...]

    @classmethod
    def parse(cls, entries: Iterable[str]) -> HostRules:
        names: set[str] = set()
        suffixes: list[str] = []
        networks: list[IPNetwork] = []
        for entry in entries:
            text = entry.strip()
            if text.startswith("[") and text.endswith("]"):
                text = text[1:-1]
            try:
                networks.append(ipaddress.ip_network(text, strict=False))
                continue
            except ValueError:
                pass
            if _is_numeric_host(text):
                raise ValueError(f"not a valid address or network: {entry!r}")
            try:
                if text.startswith("."):
                    suffixes.append("." + _check_name(text[1:]))
                else:
                    names.add(_check_name(text))
            except BadConnectTarget:
                raise ValueError(f"not a host name or network: {entry!r}") from None
        return cls(frozenset(names), tuple(suffixes), tuple(networks))

    def match_name(self, name: str) -> bool:
        return name in self.names or any(
            name == s[1:] or name.endswith(s) for s in self.suffixes
        )

    def match_address(self, address: IPAddress) -> bool:
        return any(address in net for net in self.networks)


class Resolver(Protocol):
    """``trio.socket.getaddrinfo`` or anything called like it."""

    def __call__(
        self, host: str, port: int, family: int = ..., type: int = ...
    ) -> Awaitable[Sequence[tuple[Any, Any, Any, Any, tuple[Any, ...]]]]: ...


@dataclass(frozen=True, slots=True)
class ConnectPolicy:
    """Which CONNECT destinations are allowed. Safe by default.

    allowed_ports: ports a tunnel may reach (default: 443 only; ``None``
      allows any port).
    allow_private: allow destinations that are not globally reachable
      (loopback, private, link-local, multicast, unspecified, reserved,
      shared 100.64/10...). Off by default.
    allow_public: allow globally reachable destinations. On by default; turn
      it off to make ``allow`` an allowlist.
    allow: host names (``example.com``; ``.example.com`` also matches its
      subdomains) and networks (``10.0.0.0/8``, ``::1``) always allowed, even
      if not global. A name entry matches the name the client asked for; a
      network matches the resolved address.
    deny: the same kinds of entries, always refused. Deny wins over allow. A
      network entry matches any resolved address, including the IPv4 address
      embedded in an IPv4-mapped, NAT64 or 6to4 one.

    Bad entries raise ``ValueError`` here, not at the first request.
    """

    allowed_ports: Collection[int] | None = frozenset({443})
    allow_private: bool = False
    allow_public: bool = True
    allow: Collection[str] = ()
    deny: Collection[str] = ()
    _allow: HostRules = field(init=False, repr=False, compare=False)
    _deny: HostRules = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # Frozen: normalise through object.__setattr__ so a list passed in
        # can neither be mutated later nor make the policy unhashable.
        if isinstance(self.allow, str) or isinstance(self.deny, str):
            raise TypeError("allow and deny take a collection of entries, not a str")
        if self.allowed_ports is not None:
            ports = frozenset(self.allowed_ports)
            if any(not 1 <= p <= 65535 for p in ports):
                raise ValueError(f"bad port in allowed_ports: {sorted(ports)}")
            object.__setattr__(self, "allowed_ports", ports)
        object.__setattr__(self, "allow", tuple(self.allow))
        object.__setattr__(self, "deny", tuple(self.deny))
        object.__setattr__(self, "_allow", HostRules.parse(self.allow))
        object.__setattr__(self, "_deny", HostRules.parse(self.deny))

    def check_port(self, port: int) -> None:
        """Raise :class:`ConnectRefused` if ``port`` is not allowed."""
        if self.allowed_ports is not None and port not in self.allowed_ports:
            raise ConnectRefused(f"port {port} is not allowed")

    def check_address(self, address: IPAddress, *, name: str | None = None) -> None:
        """Raise :class:`ConnectRefused` unless ``address`` may be dialled.

        ``name`` is the host name the client asked for (None for an IP
        literal): name entries of ``allow`` and ``deny`` match it.
        """
        destinations = _destinations(address)
        if (name is not None and self._deny.match_name(name)) or any(
            self._deny.match_address(a) for a in [address, *destinations]
        ):
            raise ConnectRefused(f"{_what(name, address)} is denied")
        if (name is not None and self._allow.match_name(name)) or any(
            self._allow.match_address(a) for a in [address, destinations[0]]
        ):
            return
        if is_non_global(address):
            if not self.allow_private:
                raise ConnectRefused(f"{_what(name, address)} is not a global address")
        elif not self.allow_public:
            raise ConnectRefused(f"{_what(name, address)} is not in the allow list")

    def check_unresolved(self, host: str, port: int) -> None:
        """Judge a parsed target that someone else will resolve (a
        ``socks5h://`` or HTTP parent proxy): raise :class:`ConnectRefused`
        unless it may go there.

        An IP literal is checked as :meth:`resolve` would. A name can only be
        judged by name: the port, deny and allow name entries, and
        ``allow_public=False`` (a name not in ``allow`` is refused, since its
        addresses are unknown). ``localhost`` and ``*.localhost`` (RFC 6761:
        always loopback, on the parent's host) need an explicit allow unless
        ``allow_private``. Where the name resolves to is up to the parent:
        a name pointing at a private address passes here.
        """
        self.check_port(port)
        literal = literal_address(host)
        if literal is None:
            name = _check_name(host)
            literal = literal_address(name)
        if literal is not None:
            self.check_address(literal)
            return
        if self._deny.match_name(name):
            raise ConnectRefused(f"{name} is denied")
        if self._allow.match_name(name):
            return
        if not self.allow_public:
            raise ConnectRefused(f"{name} is not in the allow list")
        if not self.allow_private and (
            name == "localhost" or name.endswith(".localhost")
        ):
            raise ConnectRefused(f"{name} is a loopback name")

    async def resolve(
        self,
        host: str,
        port: int,
        *,
        resolver: Resolver = trio.socket.getaddrinfo,
    ) -> list[IPAddress]:
        """Check and resolve a parsed target; return the addresses to dial.

        An IP literal (any spelling getaddrinfo would accept) is checked as
        is, without calling ``resolver`` (no thread, no DNS). A name is
        resolved once; if ANY resolved address is refused, the whole target
        is. Dial only the returned addresses: resolving again could give a
        different answer (DNS rebinding).

        Raises :class:`ConnectRefused` (403), :class:`BadConnectTarget` (400)
        or :class:`UpstreamError` (502: the name does not resolve). A cancel
        abandons the lookup.
        """
        self.check_port(port)
        literal = literal_address(host)
        if literal is not None:
            self.check_address(literal)
            return [literal]
        name = _check_name(host)
        literal = literal_address(name)  # "127.1." reads as "127.1"
        if literal is not None:
            self.check_address(literal)
            return [literal]
        # Refuse a denied name before any DNS traffic about it.
        if self._deny.match_name(name):
            raise ConnectRefused(f"{name} is denied")
        try:
            infos = await resolver(name, port, 0, socket.SOCK_STREAM)
        except OSError as exc:
            raise UpstreamError(f"cannot resolve {name}: {exc}") from None
        addresses: list[IPAddress] = []
        for info in infos:
            try:
                address = ipaddress.ip_address(info[4][0])
            except ValueError:
                continue
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise UpstreamError(f"{name} has no IP address")
        for address in addresses:
            self.check_address(address, name=name)
        return addresses


def _what(name: str | None, address: IPAddress) -> str:
    return str(address) if name is None else f"{name} ({address})"
