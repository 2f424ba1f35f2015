"""Dial a checked destination: policy first, then direct or through a parent.

Shared by the CONNECT proxy and the TCP upgrade (and open to any handler
that opens upstream connections): the destination is judged by the policy
before anything is dialled, a parent proxy included.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from .. import join_host_port
from .parent_proxy import ParentProxyError, Routes
from .policy import ConnectPolicy, IPAddress, Resolver, UpstreamError

__all__ = ["Dialed", "Dialer", "dial_tcp", "open_checked"]

Dialer = Callable[[IPAddress, int], Awaitable[trio.abc.Stream]]


# Made non-blocking by socket() itself where the platform can (Linux).
_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_CONNECTING = {errno.EALREADY, errno.EINPROGRESS}


async def dial_tcp(address: IPAddress, port: int) -> trio.abc.Stream:
    """Connect to an already checked IP address.

    One socket, one connect: ``trio.open_tcp_stream`` would run its
    happy-eyeballs machinery (a nursery and a task per attempt) for an
    address that needs none, and trio's ``connect`` resolves the address
    again and goes through its socket layer. A loopback or LAN handshake
    usually completes inside the ``connect()`` call: a second ``connect()``
    says so, and then the dial costs no wait and no scheduler pass."""
    await trio.lowlevel.checkpoint_if_cancelled()
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM | _NONBLOCK)
    try:
        if not _NONBLOCK:  # pragma: no cover - not Linux
            sock.setblocking(False)
        target = (str(address), port)
        error = sock.connect_ex(target)
        if error in _CONNECTING:
            error = sock.connect_ex(target)  # 0 once connected
            if error in _CONNECTING:
                await trio.lowlevel.wait_writable(sock)
                error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error and error != errno.EISCONN:
            raise OSError(error, os.strerror(error))
    except BaseException:
        trio.lowlevel.notify_closing(sock)  # trio may have it registered
        sock.close()
        raise
    return trio.SocketStream(trio.socket.from_stdlib_socket(sock))  # TCP_NODELAY


@dataclass(slots=True)
class Dialed:
    """An open upstream stream (the caller owns it), what was dialled (an
    address, or the name a parent resolves) and the route, for the log."""

    stream: trio.abc.Stream
    address: str
    route: str


async def open_checked(
    host: str,
    port: int,
    policy: ConnectPolicy,
    *,
    routes: Routes | None = None,
    resolver: Resolver = trio.socket.getaddrinfo,
    dial: Dialer = dial_tcp,
) -> Dialed:
    """Check ``host:port`` (parsed) against ``policy`` and open it.

    Direct or through a ``socks5://`` parent: resolve once, check every
    address, dial (or ask the parent for) the checked addresses in turn.
    Through a parent that resolves names (``socks5h://``, ``http://``): judge
    what the name allows (:meth:`ConnectPolicy.check_unresolved`), then give
    the parent the name. Raises ``ConnectRefused`` (403), ``BadConnectTarget``
    (400), ``UpstreamError`` / ``ParentProxyError`` (502). No deadline of
    its own: the caller's ``fail_after`` covers the lookup and every dial.
    """
    parent = routes.parent_for(host) if routes is not None else None
    route = "direct" if parent is None else f"via {parent}"
    if parent is not None and parent.resolves_names:
        policy.check_unresolved(host, port)
        return Dialed(await parent.connect(host, port), host, route)
    addresses = await policy.resolve(host, port, resolver=resolver)
    errors = []
    for address in addresses:
        try:
            if parent is None:
                stream = await dial(address, port)
            else:
                stream = await parent.connect(str(address), port)
        except (OSError, ParentProxyError) as exc:
            errors.append(f"{address}: {_why(exc)}")
            continue
        return Dialed(stream, str(address), route)
    error = ParentProxyError if parent is not None else UpstreamError
    where = join_host_port(host, port)
    raise error(f"cannot connect to {where} {route}: " + "; ".join(errors))


def _why(exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)
