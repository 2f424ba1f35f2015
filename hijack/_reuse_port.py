"""TCP listeners with ``SO_REUSEPORT``: several processes bind one address.

Each process gets its own listening socket and accept queue, and the kernel
spreads new connections over them by a hash of the 4-tuple. The CLI's
``--workers`` does not use this (see ``_supervisor.py`` for the measured
reason: a socket closed by a retiring worker drops the connections in its
queue); it is here for library users who run their own process model.
"""

from __future__ import annotations

import socket

import trio

__all__ = ["open_tcp_listeners_reuse_port"]


async def open_tcp_listeners_reuse_port(
    port: int, host: str | None, *, backlog: int
) -> list[trio.SocketListener]:
    """Like ``trio.open_tcp_listeners``, with ``SO_REUSEPORT`` set before
    ``bind()``. Port 0 is refused: each process would get a different port."""
    if port == 0:
        raise ValueError("reuse_port needs a fixed port (port 0 differs per socket)")
    infos = await trio.socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    listeners: list[trio.SocketListener] = []
    try:
        for family, type_, proto, _, address in infos:
            sock = trio.socket.socket(family, type_, proto)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:  # as trio does: one family each
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                await sock.bind(address)
                sock.listen(backlog)
            except BaseException:
                sock.close()
                raise
            listeners.append(trio.SocketListener(sock))
    except BaseException:
        for listener in listeners:
            listener.socket.close()
        raise
    return listeners
