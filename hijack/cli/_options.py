"""The option groups several commands share, each built once per parser
and handed to the commands that name it (``Command.groups``).

``server``: every HTTP server command (where it listens, PROXY protocol
in, the deployment options: --config, --workers, --metrics, TLS...).
``tunnel``: commands that relay to an upstream (--idle-timeout,
--send-proxy-protocol). ``chaining`` and ``team``: see ``_team``.
``add_policy_options`` is the CONNECT policy's flags, for the commands that
judge destinations (proxy, wsbridge --targets).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TYPE_CHECKING

from . import _state, _team
from ._arguments import (
    host_or_net,
    listen_address,
    non_negative_float,
    parse_host_port,
    port_number,
    positive_float,
    positive_int,
    trusted_sender,
)

if TYPE_CHECKING:  # imported where used: a command loads only its own
    from ..tunnel.policy import ConnectPolicy

from ._http2 import add_http2_option

__all__ = ["DEFAULT_LISTEN", "GROUPS", "add_policy_options", "connect_policy"]

DEFAULT_LISTEN = "127.0.0.1:8080"


def server_group() -> argparse.ArgumentParser:
    server = argparse.ArgumentParser(add_help=False)
    where = server.add_mutually_exclusive_group()
    where.add_argument(
        "--listen",
        type=listen_address,
        default=listen_address(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"TCP address to listen on (default: {DEFAULT_LISTEN}; port 0 picks "
        "a free port; [::1]:PORT for IPv6)",
    )
    where.add_argument(
        "--unix",
        metavar="PATH",
        help="listen on a UNIX socket at PATH instead (mode 0660)",
    )
    server.add_argument(
        "--proxy-protocol",
        type=trusted_sender,
        action="append",
        default=[],
        metavar="NET",
        help="connections from NET (a balancer: 10.0.0.0/8, ::1, or 'unix' for "
        "every UNIX socket peer) must begin with a PROXY protocol v1/v2 header "
        "naming the client; others are served as they are (repeatable)",
    )
    group = server.add_argument_group("deployment")
    group.add_argument(
        "--config",
        metavar="FILE.toml",
        help="read options from a TOML file (keys are the long option names: "
        'listen = "0.0.0.0:8080"); options on the command line win',
    )
    group.add_argument(
        "--workers",
        type=positive_int,
        default=1,
        metavar="N",
        help="serve with N processes sharing the listening socket; a "
        "supervisor restarts dead ones (default: 1, no supervisor)",
    )
    group.add_argument(
        "--metrics",
        type=lambda t: parse_host_port(t, allow_zero=True),
        metavar="HOST:PORT",
        help="serve Prometheus /metrics, /healthz and /readyz there "
        "(needs the metrics extra)",
    )
    group.add_argument(
        "--access-log-format",
        choices=["clf", "json", "off"],
        default="clf",
        help="one line per HTTP request on logger hijack.access (default: clf)",
    )
    group.add_argument("--tls-cert", metavar="FILE", help="serve TLS: certificate")
    group.add_argument("--tls-key", metavar="FILE", help="serve TLS: private key")
    group.add_argument(
        "--shutdown-grace",
        type=non_negative_float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, time in-flight requests and tunnels get to finish "
        "(default: 10)",
    )
    add_http2_option(group)
    return server


def tunnel_group() -> argparse.ArgumentParser:
    tunnel = argparse.ArgumentParser(add_help=False)
    tunnel.add_argument(
        "--idle-timeout",
        type=positive_float,
        default=300.0,
        metavar="SECONDS",
        help="close a tunnel with no byte either way for this long (default: 300)",
    )
    tunnel.add_argument(
        "--send-proxy-protocol",
        type=int,
        choices=[1, 2],
        metavar="1|2",
        help="begin every upstream connection with a PROXY protocol header of "
        "this version naming the client (for HAProxy accept-proxy, nginx "
        "proxy_protocol)",
    )
    return tunnel


#: name -> builder of the parent parser holding the group's options.
GROUPS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "server": server_group,
    "tunnel": tunnel_group,
    "chaining": _team.chaining_group,
    "team": _team.team_group,
    "state": _state.state_group,
    "admin": _state.admin_group,
}


def add_policy_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """--allow-port, --allow, --deny, --allow-private: the CONNECT policy.
    ``prefix`` starts each help text (wsbridge: "with --targets: ")."""
    parser.add_argument(
        "--allow-port",
        type=port_number,
        action="append",
        metavar="N",
        help=f"{prefix}allow port N (repeatable; default: 443 only)",
    )
    parser.add_argument(
        "--allow",
        type=host_or_net,
        action="append",
        default=[],
        metavar="HOST_OR_NET",
        help=f"{prefix}always allow this host name (.example.com: and "
        "subdomains) or network (10.0.0.0/8), even if not global (repeatable)",
    )
    parser.add_argument(
        "--deny",
        type=host_or_net,
        action="append",
        default=[],
        metavar="HOST_OR_NET",
        help=f"{prefix}always refuse this host name or network; deny wins (repeatable)",
    )
    parser.add_argument(
        "--allow-private",
        action="store_true",
        help=f"{prefix}allow loopback, private and other non-global destinations",
    )


def connect_policy(args: argparse.Namespace) -> ConnectPolicy:
    """The policy the flags of ``add_policy_options`` describe."""
    from ..tunnel.policy import ConnectPolicy

    return ConnectPolicy(
        allowed_ports=frozenset(args.allow_port or [443]),
        allow_private=args.allow_private,
        allow=tuple(args.allow),
        deny=tuple(args.deny),
    )
