"""TCP through a WebSocket, on a site that also serves pages.

    python examples/ws_tunnel.py UPSTREAM_HOST:PORT [listen port]

Listens on 127.0.0.1:8080 by default: ``/`` is a page, ``/tunnel`` a
WebSocket bridge to the upstream (websockify-compatible: noVNC can use it).
Behind a reverse proxy that lets only HTTP and WebSockets through, reach an
SSH server this way:

    python examples/ws_tunnel.py 127.0.0.1:22
    hijack forward --mode websocket --via ws://127.0.0.1:8080/tunnel \\
        --listen 127.0.0.1:2222
    ssh -p 2222 localhost
    # or, with no local port: ssh -o ProxyCommand='hijack forward
    #   --mode websocket --via ws://127.0.0.1:8080/tunnel --listen -' localhost
"""

from __future__ import annotations

import logging
import sys

import trio

import hijack
from hijack.upgrades.wsbridge import WebSocketBridge

PAGE = b"A WebSocket at /tunnel carries TCP to the upstream.\n"


def make_handler(upstream: tuple[str, int]) -> hijack.Handler:
    # Close a tunnel idle for 10 minutes; keepalive pings (every 20 s by
    # default) keep a quiet one alive through proxies meanwhile.
    bridge = WebSocketBridge(upstream, idle_timeout=600)

    async def site(request: hijack.Request) -> hijack.Response | None:
        if request.path == "/tunnel":
            return await bridge(request)  # 426 unless it is a WebSocket
        if request.path == "/":
            return hijack.Response(200, {"content-type": "text/plain"}, PAGE)
        raise hijack.HTTPError(404)

    return site


async def main(upstream: tuple[str, int], port: int) -> None:
    server = hijack.Server(make_handler(upstream))
    print(f"ws://127.0.0.1:{port}/tunnel -> {upstream}", file=sys.stderr)
    await server.serve_tcp(port, "127.0.0.1")


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 3:
        sys.exit(__doc__)
    # One line per tunnel on "hijack.wsbridge": client, upstream, bytes, time.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    listen_port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
    try:
        trio.run(main, hijack.split_host_port(sys.argv[1]), listen_port)
    except* KeyboardInterrupt:  # Ctrl-C: just stop
        pass  # (except*: trio may raise it inside an exception group)
