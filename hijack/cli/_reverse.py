"""The ``hijack`` command's reverse tunnels: ``--allow-reverse`` and friends
on ``proxy`` and ``tcp`` (the server side), ``forward --reverse`` (the
client side). Kept in its own module: those commands only call in."""

from __future__ import annotations

import argparse
import ipaddress
import signal
from typing import TYPE_CHECKING, Any

import trio

from .._exchange import Handler
from ._command import HandlerContext, StartupError

if TYPE_CHECKING:
    from ..client.reverse import ReverseClient, ReverseSpec

__all__ = [
    "add_client_options",
    "add_server_options",
    "check_client",
    "check_server",
    "run_client",
    "wrap_handler",
]


def bind_rule(text: str) -> Any:
    from ..tunnel.bind_rules import BindRule

    try:
        return BindRule.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def remote_bind(text: str) -> tuple[str, int]:
    from ..tunnel.bind_rules import parse_bind

    try:
        return parse_bind(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def reverse_spec(text: str) -> ReverseSpec:
    from ..client.reverse import parse_spec

    try:
        return parse_spec(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected seconds > 0, got {text!r}")
    return value


# -- the server side ----------------------------------------------------------


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """``--allow-reverse`` and its bounds (proxy and tcp)."""
    group = parser.add_argument_group("reverse tunnels")
    group.add_argument(
        "--allow-reverse",
        type=bind_rule,
        action="append",
        default=[],
        metavar="BIND_RULE",
        help="let clients ('hijack forward --reverse') publish ports matching "
        "[HOST:]PORT[-PORT] (HOST: 127.0.0.1 unless written out; ports below "
        "1024 only by a rule that stays below 1024); repeatable. Off by "
        "default; users may also get rules in the users file (reverse = [...]). "
        "Needs --users unless the server listens on loopback only",
    )
    group.add_argument(
        "--reverse-keepalive",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="a published port closes at most this long after its client is "
        "gone without a trace (half of it between pings; default: 30)",
    )
    group.add_argument(
        "--max-published-ports",
        type=int,
        default=16,
        metavar="N",
        help="ports one user (or client address, without --users) may publish "
        "at once (429 beyond; default: 16)",
    )


#: Each worker has its own published ports: a data connection the kernel
#: hands to another worker than its control connection's would not find it.
ONE_PROCESS = "reverse tunnels need one process (--workers 1)"


def check_server(args: argparse.Namespace) -> None:
    """Anyone who reaches the server could publish without --users: allow it
    only when nobody but this host reaches it."""
    if args.max_published_ports < 1:
        raise StartupError("--max-published-ports must be >= 1")
    if args.allow_reverse and args.workers > 1:
        raise StartupError(ONE_PROCESS)
    if not args.allow_reverse or args.users:
        return
    if args.unix is not None or _is_loopback(args.listen[0]):
        return
    raise StartupError(
        f"--allow-reverse needs --users when listening on {args.listen[0]} "
        "(not loopback): anyone could publish ports"
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def wrap_handler(
    args: argparse.Namespace,
    context: HandlerContext,
    handler: Handler,
    options: dict[str, Any],
) -> Handler:
    """``handler`` behind a :class:`ReverseTunnels` when reverse tunnels may
    be published (rules on the command line, or users with rules of their
    own in the users file); ``options`` are the team options (users,
    limits).
    The registry of published ports is kept in ``context.kept``: a reloaded
    handler sees the ports its predecessor published."""
    users = options.get("users")
    per_user = users is not None and any(
        user.reverse for name in users.names if (user := users.get(name))
    )
    registry = context.kept.get("reverse registry")
    still_published = registry is not None and registry.published
    if not args.allow_reverse and not per_user and not still_published:
        return handler
    if args.workers > 1:
        raise StartupError(f"--users {args.users}: {ONE_PROCESS}")
    from ..upgrades.reverse import ReverseRegistry, ReverseTunnels

    if registry is None:
        registry = context.kept["reverse registry"] = ReverseRegistry(
            on_change=context.hooks.on_published
        )
    half = args.reverse_keepalive / 2
    return ReverseTunnels(
        args.allow_reverse,
        users=options.get("users"),
        limits=options.get("limits"),
        registry=registry,
        fallback=handler,
        ping_interval=half,
        ping_timeout=half,
        max_published=args.max_published_ports,
        idle_timeout=args.idle_timeout,
        on_tunnel=context.hooks.on_tunnel,
    )


# -- the client side ----------------------------------------------------------


def add_client_options(forward: argparse.ArgumentParser) -> None:
    """``forward --reverse`` and its options."""
    group = forward.add_argument_group("reverse tunnels (forward --reverse)")
    group.add_argument(
        "--reverse",
        action="store_true",
        help="publish --target on a port of the server (--remote) instead of "
        "listening here: every connection to that port comes back to --target "
        "(like ssh -R); --via is an http://, https://, ws:// or wss:// URL",
    )
    group.add_argument(
        "--remote",
        type=remote_bind,
        metavar="[BIND_HOST:]PORT",
        help="with --reverse: the port to publish on the server (BIND_HOST: "
        "127.0.0.1 unless given; the server's rules decide)",
    )
    group.add_argument(
        "--publish",
        type=reverse_spec,
        action="append",
        default=[],
        metavar="[BIND_HOST:]PORT:HOST:PORT",
        help="with --reverse: one more port to publish and its target, in "
        "ssh -R's order (repeatable)",
    )
    group.add_argument(
        "--pool",
        type=int,
        default=2,
        metavar="K",
        help="with --reverse: idle data connections kept open per published "
        "port, so a connection does not wait a round trip (default: 2)",
    )
    group.add_argument(
        "--send-proxy-protocol",
        type=int,
        choices=[1, 2],
        metavar="1|2",
        help="with --reverse: begin every connection to the target with a "
        "PROXY protocol header naming the remote client",
    )
    group.add_argument(
        "--reconnect-max",
        type=positive_seconds,
        default=30.0,
        metavar="SECONDS",
        help="with --reverse: the longest wait between attempts to publish "
        "again (exponential back-off with jitter; default: 30)",
    )
    if not any("--config" in action.option_strings for action in forward._actions):
        forward.add_argument(
            "--config",
            metavar="FILE.toml",
            help="read options from a TOML file (keys are the long option "
            'names: via = "wss://host/tunnel"); options on the command line win',
        )


def _specs(args: argparse.Namespace) -> list[ReverseSpec]:
    from ..client.reverse import ReverseSpec

    specs = list(args.publish)
    if args.remote is not None:
        if args.target is None:
            raise StartupError("--remote needs --target HOST:PORT")
        specs.insert(0, ReverseSpec(args.remote, args.target))
    if not specs:
        raise StartupError("name what to publish: --remote PORT --target HOST:PORT")
    return specs


def _client(args: argparse.Namespace) -> ReverseClient:
    from ..client.reverse import ReverseClient, Via

    via = args.via
    text = via if isinstance(via, str) else f"http://{via[0]}:{via[1]}"
    try:
        return ReverseClient(
            Via.parse(text),
            _specs(args),
            auth=args.auth,
            upstream_proxy=args.upstream_proxy,
            pool=args.pool,
            send_proxy_protocol=args.send_proxy_protocol,
            max_delay=args.reconnect_max,
            on_event=_print_event,
        )
    except ValueError as exc:
        raise StartupError(str(exc)) from None


def check_client(args: argparse.Namespace) -> None:
    """``forward --reverse``: what the options cannot say one by one."""
    if args.pool < 0:
        raise StartupError("--pool must be >= 0")
    _client(args)


def run_client(args: argparse.Namespace) -> int:
    """``hijack forward --reverse``: publish until SIGINT or SIGTERM."""
    trio.run(_run_until_signal, _client(args))
    return 0


def _print_event(kind: str, spec: ReverseSpec, detail: str) -> None:
    # "published" carries the address the server bound: the spec says it.
    said = f"{kind} {spec}" if kind == "published" else f"{kind} {spec}: {detail}"
    print(f"hijack forward --reverse: {said}", flush=True)


async def _run_until_signal(client: ReverseClient) -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()
