"""``hijack echo``: a WebSocket echo server with a page to try it."""

from __future__ import annotations

import argparse

from .._exchange import Handler
from ._arguments import non_negative_float, positive_float, positive_int
from ._command import Command, HandlerContext

__all__ = ["COMMAND"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-message-size",
        type=positive_int,
        default=1024 * 1024,
        metavar="BYTES",
        help="bigger incoming messages (inflated size) close with 1009 "
        "(default: 1048576)",
    )
    parser.add_argument(
        "--no-compression",
        action="store_true",
        help="never negotiate permessage-deflate (on by default)",
    )
    parser.add_argument(
        "--ping-interval",
        type=non_negative_float,
        default=20.0,
        metavar="SECONDS",
        help="keepalive ping every SECONDS, 0 for none (default: 20)",
    )
    parser.add_argument(
        "--ping-timeout",
        type=positive_float,
        default=20.0,
        metavar="SECONDS",
        help="close with 1011 when a pong takes longer (default: 20)",
    )


def build_handler(args: argparse.Namespace, context: HandlerContext) -> Handler:
    from ..upgrades.websocket import make_echo_handler

    return make_echo_handler(
        max_message_size=args.max_message_size,
        compression=None if args.no_compression else "deflate",
        ping_interval=args.ping_interval or None,  # 0 turns keepalive off
        ping_timeout=args.ping_timeout,
        on_close=context.hooks.on_websocket_close,
    )


COMMAND = Command(
    name="echo",
    help="WebSocket echo server with a page to try it in a browser",
    description="A WebSocket echo server: GET / serves a page that opens a "
    "WebSocket to this server and echoes what you type.",
    groups=("server",),
    add_arguments=add_arguments,
    handler=build_handler,
)
