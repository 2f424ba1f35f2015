"""``hijack demo``: echo, CONNECT proxy and ``Upgrade: tcp`` on one port,
tunnelling to itself so it works with nothing else running."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

from .._exchange import Handler
from .._message import Request, Response
from ..tunnel.lifecycle import TunnelHook
from ._command import Command, HandlerContext, StartupError

__all__ = ["COMMAND", "demo_handler"]


def demo_handler(
    port: int,
    on_tunnel: TunnelHook | None = None,
    on_websocket_close: Callable[[Any], None] | None = None,
) -> Handler:
    """Everything on one port. The CONNECT proxy and the TCP upgrade both
    reach this very server (127.0.0.1:port), so a tunnel works out of the
    box with nothing else running."""
    from ..upgrades.connect import ConnectPolicy, ConnectProxy
    from ..upgrades.tcp import TCPUpgrade, is_tcp_upgrade
    from ..upgrades.websocket import make_echo_handler

    echo = make_echo_handler(on_close=on_websocket_close)
    tcp = TCPUpgrade(("127.0.0.1", port), on_tunnel=on_tunnel)
    proxy = ConnectProxy(
        ConnectPolicy(allowed_ports=frozenset({port}), allow=("127.0.0.1",)),
        on_tunnel=on_tunnel,
    )

    async def demo(request: Request) -> Response | None:
        if request.method == "CONNECT" and request.protocol is None:
            return await proxy(request)
        if is_tcp_upgrade(request):
            return await tcp(request)
        if request.path == "/hello":
            text = f"hello from hijack, connection {request.connection.id}\n"
            return Response(200, {"content-type": "text/plain"}, text.encode())
        return await echo(request)

    # Its WebSockets work over HTTP/2 too (RFC 8441): see Server(http2=True).
    demo.serves_extended_connect = True  # type: ignore[attr-defined]
    return demo


def check(args: argparse.Namespace) -> None:
    if args.unix is not None:
        raise StartupError("--unix: the demo tunnels to itself over TCP; use --listen")


def build_handler(args: argparse.Namespace, context: HandlerContext) -> Handler:
    assert context.port is not None  # check() refused --unix
    return demo_handler(
        context.port, context.hooks.on_tunnel, context.hooks.on_websocket_close
    )


def hint(where: str) -> str:
    return (
        f"try: curl {where}/hello\n"
        f"     curl -p -x {where} {where}/hello   (CONNECT tunnel)\n"
        f"     open {where}/ in a browser (WebSocket echo)"
    )


COMMAND = Command(
    name="demo",
    help="all of the above on one port, tunnelling to itself",
    description="WebSocket echo (GET / in a browser), CONNECT proxy and "
    "Upgrade: tcp on one port; tunnels may reach this server itself, so "
    "they work with nothing else running.",
    groups=("server",),
    check=check,
    handler=build_handler,
    hint=hint,
)
