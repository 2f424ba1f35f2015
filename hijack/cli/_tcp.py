"""``hijack tcp``: ``Upgrade: tcp``, then relay to one upstream."""

from __future__ import annotations

import argparse

from .._exchange import Handler
from . import _reverse, _team
from ._arguments import parse_host_port
from ._command import Command, HandlerContext

__all__ = ["COMMAND"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--upstream",
        type=parse_host_port,
        required=True,
        metavar="HOST:PORT",
        help="the TCP address every upgraded stream is relayed to",
    )
    _reverse.add_server_options(parser)


def check(args: argparse.Namespace) -> None:
    _team.check_with_state(args)
    _reverse.check_server(args)


def build_handler(args: argparse.Namespace, context: HandlerContext) -> Handler:
    from ..upgrades.tcp import TCPUpgrade

    options = _team.handler_options(args, context)
    handler = TCPUpgrade(
        args.upstream,
        idle_timeout=args.idle_timeout,
        send_proxy_protocol=args.send_proxy_protocol,
        on_tunnel=context.hooks.on_tunnel,
        **options,
    )
    return _reverse.wrap_handler(args, context, handler, options)


COMMAND = Command(
    name="tcp",
    help="raw TCP proxy: Upgrade: tcp, then relay to an upstream",
    description="Answer 'Connection: Upgrade' + 'Upgrade: tcp' with 101 and "
    "relay the raw stream to the upstream.",
    groups=("server", "tunnel", "chaining", "team", "state", "admin"),
    add_arguments=add_arguments,
    check=check,
    handler=build_handler,
)
