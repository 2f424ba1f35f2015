"""UDP over a WebSocket, the client side: ``hijack forward --udp --listen
HOST:PORT --target HOST:PORT --via ws://...|wss://...``.

Every local source address (a *flow*: a DNS client's socket, a WireGuard
peer) gets its own WebSocket to ``VIA?udp=TARGET`` (a
:class:`~hijack.upgrades.wstunnel.WebSocketTunnel`, which judges the target
by its policy): each datagram is one binary message, each message coming
back one datagram to that source. A flow ends after ``idle_timeout``
without a datagram either way, or when its WebSocket closes; ``max_flows``
bounds the flows open at once (a datagram from a new source beyond it is
dropped). Datagrams that arrive while a flow's WebSocket is still opening
wait in a queue of at most ``QUEUE`` datagrams (more are dropped: UDP may
lose them anyway). Plain WebSocket messages, so it works through any
WebSocket-capable reverse proxy (nginx with ``proxy_http_version 1.1`` and
the ``Upgrade`` headers).
"""

from __future__ import annotations

import contextlib
import logging
import socket
from typing import Any
from urllib.parse import quote

import trio

from .. import join_host_port

__all__ = ["serve_udp_forward"]

logger = logging.getLogger("hijack.forward")

#: Datagrams a flow holds while its WebSocket opens.
QUEUE = 64
MAX_DATAGRAM = 65507
#: A datagram's source, as recvfrom gives it.
Address = tuple[Any, ...]


async def serve_udp_forward(
    listen: tuple[str, int],
    via: str,
    target: tuple[str, int],
    *,
    auth: tuple[str, str] | None = None,
    idle_timeout: float = 60.0,
    max_flows: int = 1024,
    connect_timeout: float = 30.0,
    task_status: trio.TaskStatus[trio.socket.SocketType] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Relay datagrams to ``listen`` through ``via`` to ``target`` until
    cancelled; ``task_status.started()`` gets the bound UDP socket."""
    from ..upgrades.wsbridge import SUBPROTOCOL
    from .wsclient import WebSocketRefused, connect_websocket

    if not via.startswith(("ws://", "wss://")):
        raise ValueError(f"--udp needs --via as a ws:// or wss:// URL: {via!r}")
    separator = "&" if "?" in via else "?"
    url = f"{via}{separator}udp={quote(join_host_port(*target), safe='[]:')}"
    host, port = listen
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_DGRAM)
    flows: dict[Address, trio.MemorySendChannel[bytes]] = {}

    async def flow(source: Address, queue: trio.MemoryReceiveChannel[bytes]) -> None:
        """One source's WebSocket, from its first datagram to its end."""
        try:
            with trio.fail_after(connect_timeout):
                websocket = await connect_websocket(
                    url,
                    subprotocols=[SUBPROTOCOL],
                    auth=auth,
                    max_message_size=MAX_DATAGRAM,
                )
        except (OSError, WebSocketRefused, trio.TooSlowError) as exc:
            logger.warning("UDP flow %s: no WebSocket to %s: %s", source, via, exc)
            return
        async with websocket, trio.open_nursery() as nursery:
            scope = nursery.cancel_scope
            scope.deadline = trio.current_time() + idle_timeout

            async def up() -> None:
                async for datagram in queue:
                    await websocket.send(datagram)
                    scope.deadline = trio.current_time() + idle_timeout

            async def down() -> None:
                from ..upgrades.websocket import ConnectionClosed

                while True:
                    try:
                        message = await websocket.receive()
                    except ConnectionClosed:
                        scope.cancel()
                        return
                    if isinstance(message, bytes):
                        await sock.sendto(message, source)
                        scope.deadline = trio.current_time() + idle_timeout

            nursery.start_soon(up)
            nursery.start_soon(down)

    async def run_flow(
        source: Address, queue: trio.MemoryReceiveChannel[bytes]
    ) -> None:
        try:
            async with queue:
                await flow(source, queue)
        finally:
            channel = flows.pop(source, None)
            if channel is not None:
                channel.close()

    async with trio.open_nursery() as nursery:
        with sock:
            await sock.bind((host, port))
            task_status.started(sock)
            while True:
                data, source = await sock.recvfrom(MAX_DATAGRAM)
                channel = flows.get(source)
                if channel is None:
                    if len(flows) >= max_flows:
                        continue  # bounded: a new source waits for a free flow
                    channel, queue = trio.open_memory_channel[bytes](QUEUE)
                    flows[source] = channel
                    nursery.start_soon(run_flow, source, queue)
                # The flow is behind or over: UDP may drop a datagram.
                with contextlib.suppress(trio.WouldBlock, trio.BrokenResourceError):
                    channel.send_nowait(data)
