"""The command's side listeners, ``--metrics`` and ``--admin``: a small
``Server`` of their own on an address of their own."""

from __future__ import annotations

import trio

from .._address import join_host_port
from .._server import Server
from ._command import StartupError, reason

__all__ = ["serve_side"]


async def serve_side(
    nursery: trio.Nursery,
    server: Server,
    address: tuple[str, int],
    flag: str,
    path: str,
) -> None:
    """Serve ``server`` on ``address`` in ``nursery`` and print its URL
    (``path`` on the address it got). A failed bind is a StartupError
    naming ``flag``."""
    host, port = address
    try:
        listeners = await nursery.start(server.serve_tcp, port, host)
    except OSError as exc:
        where = join_host_port(host, port)
        raise StartupError(f"{flag} {where}: {reason(exc)}") from None
    name = listeners[0].socket.getsockname()
    print(f"{flag[2:]} on http://{join_host_port(*name[:2])}{path}", flush=True)
