"""A CONNECT forward proxy, for HTTPS clients.

    python examples/connect_proxy.py [port]          # 127.0.0.1:8080 by default
    curl --proxy http://127.0.0.1:8080 https://example.com/

Tunnels go to port 443 of public addresses only (the default policy); a
client asking for a loopback or private address, or another port, gets 403.
Plain requests to the proxy itself get a short help text.
"""

from __future__ import annotations

import logging
import sys

import trio

import hijack
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy

# Who may be reached through the tunnel. Deny wins over everything.
policy = ConnectPolicy(
    allowed_ports={443, 8443},
    deny=[
        "example.net",
        ".internal.example",
    ],  # a name, and a domain with its subdomains
)


async def help_page(request: hijack.Request) -> hijack.Response:
    """Anything but CONNECT lands here."""
    return hijack.Response(
        200,
        {"content-type": "text/plain; charset=utf-8"},
        b"This is a CONNECT proxy: curl --proxy http://HOST:PORT https://...\n",
    )


async def main(port: int) -> None:
    proxy = ConnectProxy(policy, idle_timeout=120, fallback=help_page)
    server = hijack.Server(proxy)
    print(f"CONNECT proxy on http://127.0.0.1:{port}", file=sys.stderr)
    await server.serve_tcp(port, "127.0.0.1")


if __name__ == "__main__":
    # One line per tunnel: client, target, outcome, bytes each way, duration.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
    except* KeyboardInterrupt:  # Ctrl-C: just stop
        pass  # (except*: trio may raise it inside an exception group)
