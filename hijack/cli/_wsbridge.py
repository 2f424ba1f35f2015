"""``hijack wsbridge``: TCP over WebSocket (websockify-compatible)."""

from __future__ import annotations

import argparse

from .._exchange import Handler
from . import _state
from ._arguments import parse_host_port
from ._command import Command, HandlerContext, StartupError, reason
from ._options import add_policy_options, connect_policy

__all__ = ["COMMAND"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    bridge_to = parser.add_mutually_exclusive_group(required=True)
    bridge_to.add_argument(
        "--upstream",
        type=parse_host_port,
        metavar="HOST:PORT",
        help="the TCP address every WebSocket is relayed to",
    )
    bridge_to.add_argument(
        "--targets",
        metavar="FILE",
        help="websockify token file ('token: host:port' lines); the client picks "
        "one with ?token=NAME; targets are checked by the CONNECT policy "
        "(--allow-port, --allow, --deny, --allow-private); re-read when it changes",
    )
    add_policy_options(parser, prefix="with --targets: ")
    parser.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="accept browsers only from this Origin (https://host[:port]; "
        "repeatable; default: any). Clients that send no Origin (not browsers) "
        "are then refused too",
    )


def check(args: argparse.Namespace) -> None:
    _state.check(args)  # --admin's token file
    if args.targets is None and (
        args.allow_port or args.allow or args.deny or args.allow_private
    ):
        raise StartupError(
            "--allow-port, --allow, --deny and --allow-private check --targets; "
            "the --upstream you name is trusted"
        )


def build_handler(args: argparse.Namespace, context: HandlerContext) -> Handler:
    from ..upgrades.wsbridge import TargetFile, WebSocketBridge

    origins = args.allow_origin or None
    if args.targets is None:
        return WebSocketBridge(
            args.upstream,
            idle_timeout=args.idle_timeout,
            allowed_origins=origins,
            send_proxy_protocol=args.send_proxy_protocol,
            on_tunnel=context.hooks.on_tunnel,
        )
    try:
        targets = TargetFile(args.targets)
    except (OSError, ValueError) as exc:
        raise StartupError(f"--targets {args.targets}: {reason(exc)}") from None
    return WebSocketBridge(
        targets=targets,
        policy=connect_policy(args),
        idle_timeout=args.idle_timeout,
        allowed_origins=origins,
        send_proxy_protocol=args.send_proxy_protocol,
        on_tunnel=context.hooks.on_tunnel,
    )


COMMAND = Command(
    name="wsbridge",
    help="TCP over WebSocket: relay each WebSocket to a TCP upstream "
    "(websockify-compatible)",
    description="Accept WebSockets (subprotocol 'binary', as websockify "
    "clients such as noVNC use) and relay each one to a new TCP connection: "
    "binary messages carry the bytes. Plain HTTP requests get 426.",
    groups=("server", "tunnel", "admin"),
    add_arguments=add_arguments,
    check=check,
    handler=build_handler,
)
