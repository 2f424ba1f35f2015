"""The ``hijack`` command's options for a proxy shared by a team: users,
parent proxies and limits (``--users``, ``--upstream-proxy``, ``--direct``,
``--max-tunnels-per-*``, ``--*-bandwidth``),
as option groups (``chaining``, ``team``) the proxy and tcp commands
take, and how those options survive a SIGHUP reload."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any

from ._arguments import host_or_net, positive_int
from ._command import HandlerContext, StartupError

__all__ = [
    "byte_rate",
    "chaining_group",
    "check",
    "handler_options",
    "parent_proxy",
    "team_group",
    "tunnel_options",
]


def byte_rate(text: str) -> int:
    """``500000``, ``500k``, ``2M``, ``1G``: bytes per second (SI units)."""
    scale = {"k": 10**3, "m": 10**6, "g": 10**9}.get(text[-1:].lower(), 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = int(float(number) * scale)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(
            f"expected bytes/s like 500k, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError("a bandwidth limit is at least 1 byte/s")
    return value


def parent_proxy(text: str) -> Any:
    from ..tunnel.parent_proxy import ParentProxy

    try:
        return ParentProxy.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def tunnel_options(args: argparse.Namespace, context: HandlerContext) -> dict[str, Any]:
    """What ``hijack proxy`` and ``hijack socks`` give their tunnel servers
    alike (``ConnectProxy``, ``SocksServer``) from the command line."""
    return {
        "auth": args.auth,
        "connect_timeout": args.connect_timeout,
        "idle_timeout": args.idle_timeout,
        "max_tunnels": args.max_tunnels,
        "send_proxy_protocol": args.send_proxy_protocol,
        "on_tunnel": context.hooks.on_tunnel,
    }


def handler_options(
    args: argparse.Namespace, context: HandlerContext
) -> dict[str, Any]:
    """users, routes and limits for the proxy and tcp handlers. Called again
    on every reload (SIGHUP): the users file is re-read into the same
    ``Users`` and the same ``TunnelLimits`` takes the new bounds, both kept
    in ``context.kept``, so the open tunnels stay counted (and their user's
    buckets shared) by the limits the new handler uses. A broken users file
    raises StartupError: at start-up the command stops, on a reload the
    running rules stay."""
    from ..tunnel.limits import TunnelLimits
    from ..tunnel.parent_proxy import Routes
    from ..tunnel.users import Users, UsersFileError, load_users

    options: dict[str, Any] = {}
    kept = context.kept
    if args.users:
        path = Path(args.users).resolve()
        users = kept.get("users")
        try:
            if users is None or users.path != path:
                users = Users(path)
            else:
                load_users(path)  # a broken file fails the reload, said once
                users.reload()
        except UsersFileError as exc:
            raise StartupError(f"--users {exc}") from None
        options["users"] = kept["users"] = users
    if args.upstream_proxy or args.direct:
        options["routes"] = Routes(args.upstream_proxy, direct=args.direct)
        logging.getLogger("hijack.parent").info("routes: %r", options["routes"])
    bounds = {
        "per_client": args.max_tunnels_per_client,
        "per_user": args.max_tunnels_per_user,
        "tunnel_bandwidth": args.tunnel_bandwidth,
        "user_bandwidth": args.user_bandwidth,
    }
    if any(v is not None for v in bounds.values()) or args.users:
        limits = kept.get("limits")
        if limits is None:
            # Counted in the process's state if the Service gave it one
            # (the workers' table, Redis); else here.
            limits = kept["limits"] = TunnelLimits(**bounds, state=kept.get("state"))
        else:
            for name, value in bounds.items():
                setattr(limits, name, value)
        options["limits"] = limits
    return options


def check(args: argparse.Namespace) -> None:
    """What the team options refuse together."""
    if args.direct and args.upstream_proxy is None:
        raise StartupError(
            "--direct names what bypasses --upstream-proxy; give --upstream-proxy"
        )


def check_with_state(args: argparse.Namespace) -> None:
    """The team options' checks, then the state and admin options'."""
    from . import _state

    check(args)
    _state.check(args)


def chaining_group() -> argparse.ArgumentParser:
    """``--upstream-proxy`` (proxy, tcp and forward)."""
    chaining = argparse.ArgumentParser(add_help=False)
    chaining.add_argument(
        "--upstream-proxy",
        type=parent_proxy,
        metavar="URL",
        help="reach destinations through this parent proxy: http://[user:pass@]"
        "host:port (CONNECT), socks5://host:port (hijack resolves and checks "
        "every address) or socks5h://host:port (the parent resolves names; "
        "only the name can be checked)",
    )
    return chaining


def team_group() -> argparse.ArgumentParser:
    """Users, routes and limits (proxy and tcp)."""
    team = argparse.ArgumentParser(add_help=False)
    team.add_argument(
        "--direct",
        type=host_or_net,
        action="append",
        default=[],
        metavar="HOST_OR_NET",
        help="with --upstream-proxy: go direct to this host name (.example.com: "
        "and subdomains) or network (for targets written as addresses); "
        "everything else goes through the parent (repeatable)",
    )
    team.add_argument(
        "--users",
        metavar="FILE",
        help="TOML users file: per-user password hashes (hijack hash-password) "
        "and rules; reloaded on SIGHUP",
    )
    team.add_argument(
        "--max-tunnels-per-client",
        type=positive_int,
        metavar="N",
        help="tunnels one client address may have open (429 beyond)",
    )
    team.add_argument(
        "--max-tunnels-per-user",
        type=positive_int,
        metavar="N",
        help="tunnels one user may have open (429 beyond; max_tunnels in the "
        "users file overrides it per user)",
    )
    team.add_argument(
        "--tunnel-bandwidth",
        type=byte_rate,
        metavar="BYTES_PER_S",
        help="bandwidth limit of every tunnel, each direction (500k, 2M...)",
    )
    team.add_argument(
        "--user-bandwidth",
        type=byte_rate,
        metavar="BYTES_PER_S",
        help="bandwidth shared by all the tunnels of one user, each direction "
        "(bandwidth in the users file overrides it per user)",
    )
    return team
