"""A raw TCP proxy behind HTTP: ``Upgrade: tcp``, then bytes both ways.

    python examples/tcp_proxy.py UPSTREAM_HOST:PORT [listen port]

Listens on 127.0.0.1:8080 by default. A request with ``Connection: Upgrade``
and ``Upgrade: tcp`` gets ``101 Switching Protocols`` once the upstream
answered, and from then on the connection is a plain TCP stream to it. To use
it from any TCP client (here an SSH server as the upstream):

    python examples/tcp_proxy.py 127.0.0.1:22
    hijack forward --via 127.0.0.1:8080 --mode upgrade --listen 127.0.0.1:2222
    ssh -p 2222 localhost
    # or, with no local port: ssh -o ProxyCommand='hijack forward
    #   --via 127.0.0.1:8080 --mode upgrade --listen -' localhost
"""

from __future__ import annotations

import logging
import sys

import trio

import hijack
from hijack.upgrades.tcp import TCPUpgrade


async def help_page(request: hijack.Request) -> hijack.Response:
    """Requests without the upgrade land here (instead of a bare 426)."""
    return hijack.Response(
        200,
        {"content-type": "text/plain; charset=utf-8"},
        b"Send Connection: Upgrade and Upgrade: tcp to reach the upstream.\n",
    )


async def main(upstream: tuple[str, int], port: int) -> None:
    # Dial within 5 s (else 504), close a stream idle for 10 minutes.
    proxy = TCPUpgrade(
        upstream, connect_timeout=5, idle_timeout=600, fallback=help_page
    )
    server = hijack.Server(proxy)
    print(f"Upgrade: tcp on http://127.0.0.1:{port} -> {upstream}", file=sys.stderr)
    await server.serve_tcp(port, "127.0.0.1")


if __name__ == "__main__":
    if not 2 <= len(sys.argv) <= 3:
        sys.exit(__doc__)
    # One line per stream on "hijack.tcp": client, upstream, bytes, duration.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    listen_port = int(sys.argv[2]) if len(sys.argv) > 2 else 8080
    try:
        trio.run(main, hijack.split_host_port(sys.argv[1]), listen_port)
    except* KeyboardInterrupt:  # Ctrl-C: just stop
        pass  # (except*: trio may raise it inside an exception group)
