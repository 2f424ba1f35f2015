"""``hijack proxy``: a CONNECT forward proxy with a safe policy."""

from __future__ import annotations

import argparse

from .._exchange import Handler
from . import _reverse, _socks, _team
from ._arguments import positive_float, positive_int, user_pass
from ._command import Command, HandlerContext
from ._options import add_policy_options, connect_policy

__all__ = ["COMMAND"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_policy_options(parser)
    parser.add_argument(
        "--auth",
        type=user_pass,
        metavar="USER:PASS",
        help="require Proxy-Authorization: Basic with these credentials (407)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="time to reach the upstream before answering 504 (default: 10)",
    )
    parser.add_argument(
        "--max-tunnels",
        type=positive_int,
        default=1000,
        metavar="N",
        help="tunnels open at once before answering 503 (default: 1000)",
    )
    _reverse.add_server_options(parser)
    _socks.add_proxy_options(parser)


def check(args: argparse.Namespace) -> None:
    _team.check_with_state(args)
    _reverse.check_server(args)
    _socks.check_no_auth(args)


def build_handler(args: argparse.Namespace, context: HandlerContext) -> Handler:
    from ..upgrades.connect import ConnectProxy

    options = _team.handler_options(args, context)
    proxy = ConnectProxy(
        connect_policy(args), **_team.tunnel_options(args, context), **options
    )
    # SOCKS5 outermost: the server reads its first-byte sniffer off the
    # handler it is given.
    handler = _reverse.wrap_handler(args, context, proxy, options)
    return _socks.with_socks(args, context, proxy, handler)


COMMAND = Command(
    name="proxy",
    help="CONNECT tunnel (forward proxy) with a safe policy",
    description="A CONNECT forward proxy. By default it tunnels to port 443 "
    "only, and refuses loopback, private, link-local and other non-global "
    "destinations.",
    groups=("server", "tunnel", "chaining", "team", "state", "admin"),
    add_arguments=add_arguments,
    check=check,
    handler=build_handler,
)
