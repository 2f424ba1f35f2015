"""The ``hijack`` command's options for a proxy shared by a team: users,
parent proxies and limits (``--users``, ``--upstream-proxy``, ``--direct``,
``--max-tunnels-per-*``, ``--*-bandwidth``), how they survive a SIGHUP reload,
and ``hijack hash-password``. Kept apart from ``_cli`` so the command's
core stays readable; ``_cli`` adds these parsers as parents."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

__all__ = [
    "add_hash_password",
    "byte_rate",
    "chaining_parser",
    "handler_options",
    "hash_password_command",
    "parent_proxy",
    "team_parser",
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


#: One Users and one TunnelLimits per process, kept across SIGHUP reloads:
#: the command rebuilds its handler from the re-read options, and the open
#: tunnels must stay counted (and their user's buckets shared) by the limits
#: the new handler uses.
_LIVE: dict[str, Any] = {}


def handler_options(args: argparse.Namespace) -> dict[str, Any]:
    """users, routes and limits for the proxy and tcp handlers. Called again
    on every reload (SIGHUP): the users file is re-read into the same
    ``Users`` (a broken file fails the reload, the running rules stay, and
    the reason is logged), the limits object is kept and takes the new
    bounds."""
    from ..tunnel.limits import TunnelLimits
    from ..tunnel.parent_proxy import Routes
    from ..tunnel.users import Users, UsersFileError

    options: dict[str, Any] = {}
    if args.users:
        path = Path(args.users).resolve()
        users = _LIVE.get("users")
        if users is None or users.path != path:
            try:
                users = Users(path)
            except UsersFileError as exc:
                raise SystemExit(f"hijack {args.command}: {exc}") from None
        elif not users.reload():
            raise SystemExit(f"hijack {args.command}: users file {path} not reloaded")
        options["users"] = _LIVE["users"] = users
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
        limits = _LIVE.get("limits")
        if limits is None:
            from ._state import process_state

            limits = _LIVE["limits"] = TunnelLimits(**bounds, state=process_state(args))
        else:
            TunnelLimits(**bounds)  # the new values are checked first
            for name, value in bounds.items():
                setattr(limits, name, value)
        options["limits"] = limits
    return options


def chaining_parser() -> argparse.ArgumentParser:
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


def team_parser() -> argparse.ArgumentParser:
    """Users, routes and limits (proxy and tcp)."""
    team = argparse.ArgumentParser(add_help=False)
    team.add_argument(
        "--direct",
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
        type=int,
        metavar="N",
        help="tunnels one client address may have open (429 beyond)",
    )
    team.add_argument(
        "--max-tunnels-per-user",
        type=int,
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


def add_hash_password(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    """The ``hash-password`` subcommand."""
    hash_password = commands.add_parser(
        "hash-password",
        help="print a password hash for a users file",
        description="Read a password (prompted twice on a terminal, else the "
        "first line of stdin) and print its salted scrypt hash, for the "
        "'password' key of a users file.",
    )
    hash_password.set_defaults(run=None)


def hash_password_command() -> int:
    import getpass

    from ..tunnel.users import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("hijack hash-password: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("hijack hash-password: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0
