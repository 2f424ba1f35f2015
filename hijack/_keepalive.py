"""TCP keepalive: notice a peer that vanished without a FIN or RST.

A raw tunnel can sit idle for hours; if the client's NAT or the balancer
drops its state meanwhile, nothing tells either end and the tunnel holds two
sockets forever. Middleboxes drop idle flows after 60 s (nginx's default
proxy timeout), 100 s (Cloudflare) or 350 s (AWS NLB); Linux's own keepalive
starts after 2 hours. So the server turns keepalive on for every TCP socket it
accepts, and the shipped upgrades do the same for the sockets they dial, with
``Limits.tcp_keepalive_*`` (default: first probe after 30 s idle, then every
10 s, give up after 3 unanswered: a dead peer is noticed within 60 s, and a
NAT sees a packet every 30 s of silence).
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING

import trio

from ._config import Limits
from ._plain_socket import find_socket

if TYPE_CHECKING:
    from ._connection import Connection

__all__ = ["copy_tcp_keepalive", "set_tcp_keepalive"]

# The idle option is TCP_KEEPIDLE on Linux, TCP_KEEPALIVE on macOS.
_TCP_KEEPIDLE = getattr(socket, "TCP_KEEPIDLE", getattr(socket, "TCP_KEEPALIVE", None))
_TCP_KEEPINTVL = getattr(socket, "TCP_KEEPINTVL", None)
_TCP_KEEPCNT = getattr(socket, "TCP_KEEPCNT", None)


def _tcp_socket(
    target: trio.abc.Stream | trio.socket.SocketType,
) -> trio.socket.SocketType | None:
    sock = find_socket(target) if isinstance(target, trio.abc.Stream) else target
    if sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return None
    return sock


def set_tcp_keepalive(
    target: trio.abc.Stream | trio.socket.SocketType, limits: Limits | None = None
) -> None:
    """Turn TCP keepalive on (or off, when ``limits.tcp_keepalive_idle`` is
    None) for ``target``, a socket or a stream over one (TLS included).
    Anything that is not a TCP socket is left alone."""
    limits = limits or Limits()
    sock = _tcp_socket(target)
    if sock is None:
        return
    _apply(
        sock,
        limits.tcp_keepalive_idle,
        limits.tcp_keepalive_interval,
        limits.tcp_keepalive_count,
    )


def copy_tcp_keepalive(
    connection: Connection, target: trio.abc.Stream | trio.socket.SocketType
) -> None:
    """Give a dialled socket the keepalive settings of the client's
    connection (which the server set from its ``Limits``), so one
    ``Limits`` governs both ends of a tunnel. A connection without a TCP
    socket (UNIX, memory) lends the ``Limits()`` defaults."""
    sock = _tcp_socket(target)
    if sock is None:
        return
    source = connection.socket
    if source is None or source.family not in (socket.AF_INET, socket.AF_INET6):
        set_tcp_keepalive(sock)
        return
    given = connection._keepalive
    if given is not None:
        # The server's own connection: what it gave the client's socket is
        # known, no need to read four options back (a tunnel's set-up path).
        if given.tcp_keepalive_idle is not None:
            _apply(
                sock,
                given.tcp_keepalive_idle,
                given.tcp_keepalive_interval,
                given.tcp_keepalive_count,
            )
        return  # off: the default for a fresh socket too
    try:
        if not source.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE):
            return  # off on the client's side: the default for a fresh socket too
        settings = [
            _get(source, o) for o in (_TCP_KEEPIDLE, _TCP_KEEPINTVL, _TCP_KEEPCNT)
        ]
    except OSError:  # the client's socket is closed already: nothing to copy
        return
    _apply(sock, *settings)


def _get(sock: trio.socket.SocketType, option: int | None) -> int | None:
    return None if option is None else sock.getsockopt(socket.IPPROTO_TCP, option)


def _apply(
    sock: trio.socket.SocketType,
    idle: float | None,
    interval: float | None,
    count: int | None,
) -> None:
    # A socket the peer already reset is no reason to fail: its first read
    # will say so.
    with contextlib.suppress(OSError):
        if idle is None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 0)
            return
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        # The kernel counts whole seconds, at least 1.
        for option, value in (
            (_TCP_KEEPIDLE, idle),
            (_TCP_KEEPINTVL, interval),
            (_TCP_KEEPCNT, count),
        ):
            if option is not None and value is not None:
                sock.setsockopt(socket.IPPROTO_TCP, option, max(1, round(value)))
