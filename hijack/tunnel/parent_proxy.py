"""Chaining through a parent proxy: ``http://``, ``socks5://``, ``socks5h://``.

:class:`ParentProxy` opens a stream to a destination through a parent;
:class:`Routes` says which destinations go through it and which go direct.

Who resolves the name, and what the policy can then judge:

* ``socks5://``: hijack resolves, checks every address against the policy
  and asks the parent for a checked address (never the name). Full policy.
* ``socks5h://`` and ``http://``: the parent resolves the name (the usual
  set-up where only the parent's network has DNS for the outside). hijack
  judges the name only (:meth:`ConnectPolicy.check_unresolved`): the port,
  deny and allow entries, ``allow_public``, loopback names. A name that
  resolves to a private address behind the parent is the parent's to refuse.

The SOCKS5 handshake is python-socks' (Trio backend). The HTTP CONNECT
handshake is hijack's own client (:func:`~hijack.client.forward.open_tunnel`
on h11), because python-socks' HTTP connector reads the parent's answer with
a single ``recv`` and parses only its status line: a head split over two
segments leaves header bytes in the tunnel, and bytes the destination sent
right behind the ``200`` (a server-first protocol: SSH, SMTP, a database
banner) are dropped. Ours reads the whole head and keeps what follows.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Literal
from urllib.parse import unquote, urlsplit

import trio
from python_socks import ProxyError, ProxyType
from python_socks.async_.trio import Proxy as TrioSocksProxy

from .. import ReplayStream, join_host_port
from ._http_tunnel import TunnelError, open_http_tunnel
from .policy import HostRules, UpstreamError, literal_address

__all__ = ["ParentProxy", "ParentProxyError", "Routes"]

logger = logging.getLogger("hijack.parent")

Scheme = Literal["http", "socks5", "socks5h"]


class ParentProxyError(UpstreamError):
    """The parent proxy cannot be reached, refused, or answered garbage
    (502; the reason says which)."""


@dataclass(frozen=True, slots=True)
class ParentProxy:
    """A parent proxy, from ``scheme://[user:pass@]host:port``.

    ``str()`` shows the URL without the password (it goes into logs).
    """

    scheme: Scheme
    host: str
    port: int
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    @classmethod
    def parse(cls, url: str) -> ParentProxy:
        """Raise ``ValueError`` with the reason for a URL that is not one."""
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "socks5", "socks5h"):
            raise ValueError(
                f"parent proxy scheme must be http, socks5 or socks5h: {url!r}"
            )
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"a parent proxy URL has no path or query: {url!r}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"bad port in parent proxy URL {url!r}") from None
        if not parts.hostname or port is None:
            raise ValueError(f"parent proxy URL needs host:port: {url!r}")
        username = None if parts.username is None else unquote(parts.username)
        password = None if parts.password is None else unquote(parts.password)
        if username is not None and password is None:
            raise ValueError("parent proxy credentials need user:password")
        if username is not None and ":" in username:
            raise ValueError("a parent proxy user name cannot contain ':'")
        return cls(scheme, parts.hostname, port, username, password)  # type: ignore[arg-type]

    def __str__(self) -> str:
        user = f"{self.username}:***@" if self.username is not None else ""
        return f"{self.scheme}://{user}{join_host_port(self.host, self.port)}"

    @property
    def resolves_names(self) -> bool:
        """True when the parent, not hijack, resolves destination names."""
        return self.scheme != "socks5"

    async def connect(self, host: str, port: int) -> trio.abc.Stream:
        """A stream to ``host:port`` through the parent; the caller owns it.

        ``host`` is a name or an IP literal, sent as is. Raises
        :class:`ParentProxyError` with the reason (unreachable parent,
        refusal, garbage). No timeout of its own: wrap it in
        ``trio.fail_after``. A cancel closes the connection to the parent.
        """
        try:
            if self.scheme == "http":
                return await self._connect_http(host, port)
            return await self._connect_socks(host, port)
        except ParentProxyError:
            raise
        except (ProxyError, OSError, ValueError, trio.BrokenResourceError) as exc:
            raise ParentProxyError(f"parent proxy {self}: {exc}") from None

    async def _connect_socks(self, host: str, port: int) -> trio.abc.Stream:
        socks = TrioSocksProxy(
            ProxyType.SOCKS5,
            self.host,
            self.port,
            self.username,
            self.password,
            rdns=self.scheme == "socks5h",
        )
        # The deadline is the caller's (trio.fail_after); python-socks wants one.
        sock = await socks.connect(host, port, timeout=float("inf"))
        return trio.SocketStream(sock)

    async def _connect_http(self, host: str, port: int) -> trio.abc.Stream:
        auth = None
        if self.username is not None and self.password is not None:
            auth = (self.username, self.password)
        try:
            tunnel = await open_http_tunnel(
                (self.host, self.port), (host, port), "connect", auth=auth
            )
        except TunnelError as exc:
            raise ParentProxyError(f"parent proxy {self}: {exc}") from None
        assert isinstance(tunnel, ReplayStream)  # connect mode
        # Nothing read ahead: the plain socket, so the relay can splice it.
        early = tunnel.take_buffered()
        if not early and isinstance(tunnel.stream, trio.SocketStream):
            return tunnel.stream
        return ReplayStream(tunnel.stream, early)


class Routes:
    """Which destinations go through ``parent`` and which go direct.

    ``direct``: host names (``example.com``; ``.example.com`` with its
    subdomains) and networks. A name entry matches the name the client asked
    for; a network entry matches a destination written as an IP address (no
    lookup is made to route: the parent may be the only one able to
    resolve). Everything else goes through the parent. With no parent,
    everything goes direct. Every tunnel's log line says which way it went.
    """

    def __init__(self, parent: ParentProxy | None, *, direct: Collection[str] = ()):
        if isinstance(direct, str):
            raise TypeError("direct takes a collection of entries, not a str")
        self.parent = parent
        self.direct = tuple(direct)
        self._direct = HostRules.parse(self.direct)

    def __repr__(self) -> str:
        return f"<Routes parent={self.parent} direct={list(self.direct)}>"

    def parent_for(self, host: str) -> ParentProxy | None:
        """The parent to go through for ``host`` (a parsed target host), or
        None to go direct."""
        if self.parent is None:
            return None
        address = literal_address(host)
        if address is None:
            if self._direct.match_name(host.rstrip(".")):
                return None
        elif self._direct.match_address(address) or (
            isinstance(address, ipaddress.IPv6Address)
            and address.ipv4_mapped is not None
            and self._direct.match_address(address.ipv4_mapped)
        ):
            return None
        return self.parent
