"""``--http2`` on the server commands: HTTP/2 next to HTTP/1.1 (ALPN ``h2``
with ``--tls-cert``, prior knowledge h2c without: for use behind a balancer
that speaks HTTP/2 to its backends). Extended CONNECT (RFC 8441) is
advertised only by commands whose handler serves it (``echo``,
``wsbridge``, ``demo``'s WebSocket routes): see ``Server(extended_connect=)``."""

from __future__ import annotations

import argparse
from typing import Any

__all__ = ["add_http2_option", "http2_server_options"]


def add_http2_option(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    parser.add_argument(
        "--http2",
        action="store_true",
        help="serve HTTP/2 too: ALPN h2 with TLS, prior-knowledge h2c without "
        "(WebSockets over HTTP/2 by RFC 8441, CONNECT tunnels on HTTP/2 streams)",
    )


def http2_server_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``Server`` keyword arguments for ``args``."""
    return {"http2": bool(getattr(args, "http2", False))}
