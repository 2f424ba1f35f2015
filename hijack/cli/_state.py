"""The command's options for shared limit state and the admin listener:
``--state``, ``--state-password-file``, ``--state-ttl``,
``--state-timeout``, ``--state-unavailable``, ``--admin``,
``--admin-token-file``; and the state object of this process.

Which state a process counts in: ``--state redis://...`` (every node, and
every worker, talks to Redis); else, in a worker of ``--workers N``, the
supervisor's shared-memory table (``HIJACK_STATE_FD``); else none (the
limits count in the process, as they always did).
"""

from __future__ import annotations

import argparse
import logging
import sys
import urllib.parse
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import trio

from ..state import State

if TYPE_CHECKING:
    from ..state._shared_memory import Table

__all__ = [
    "add_admin_options",
    "add_state_options",
    "check_options",
    "process_state",
    "read_token",
    "release_worker",
    "run_reporting_state_errors",
    "shared_table",
    "start_state",
]

logger = logging.getLogger("hijack.state")

#: One state per process, kept across SIGHUP reloads (leases live in it).
_LIVE: dict[str, State | None] = {}


def _state_url(text: str) -> str:
    scheme = urllib.parse.urlsplit(text).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise argparse.ArgumentTypeError(
            f"expected redis://[user:pass@]HOST:PORT/DB, rediss://... or "
            f"unix:///PATH, got {scheme or text!r}"
        )
    return text


def add_state_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("shared limits")
    group.add_argument(
        "--state",
        type=_state_url,
        metavar="URL",
        help="count the limits in Redis, shared by every node: "
        "redis://[user@]HOST:PORT/DB, rediss://..., unix:///PATH?db=N "
        "(default: in this process; with --workers, shared by the workers)",
    )
    group.add_argument(
        "--state-password-file",
        metavar="FILE",
        help="the Redis password, first line of FILE (or give it in the "
        "--config file's state URL; never only on the command line)",
    )
    group.add_argument(
        "--state-ttl",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="a lease not renewed for this long runs out: a node that dies "
        "gives its tunnels back within it (default: 30)",
    )
    group.add_argument(
        "--state-timeout",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="bound on every Redis call (default: 1)",
    )
    group.add_argument(
        "--state-unavailable",
        choices=["closed", "open"],
        default="closed",
        help="while Redis cannot be reached: closed refuses new limited "
        "tunnels (503); open counts per node (default: closed)",
    )


def add_admin_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("the admin listener")
    group.add_argument(
        "--admin",
        type=_admin_address,
        metavar="HOST:PORT",
        help="serve the admin API (GET /tunnels, DELETE /tunnels/ID, GET "
        "/users) there; needs --admin-token-file",
    )
    group.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="the admin API's bearer token, first line of FILE",
    )


def _admin_address(text: str) -> tuple[str, int]:
    from ._arguments import parse_host_port

    return parse_host_port(text, allow_zero=True)


def read_token(path: str | None) -> bytes:
    if path is None:
        raise SystemExit("hijack: --admin needs --admin-token-file FILE")
    try:
        with open(path, "rb") as file:
            token = file.readline().strip()
    except OSError as exc:
        raise SystemExit(f"hijack: --admin-token-file {path}: {exc}") from None
    if len(token) < 16:
        raise SystemExit(
            f"hijack: --admin-token-file {path}: the token needs 16 characters "
            "or more (try: head -c 24 /dev/urandom | base64)"
        )
    return token


def check_options(args: argparse.Namespace) -> None:
    """The start-up errors of these options, found before anything starts
    (the supervisor included): one line on stderr, exit code 2."""
    try:
        if getattr(args, "admin", None) is not None:
            read_token(args.admin_token_file)
        if getattr(args, "state", None):
            if args.state_ttl <= 0 or args.state_timeout <= 0:
                raise SystemExit("hijack: --state-ttl and --state-timeout must be > 0")
            _password(args)
        elif getattr(args, "state_password_file", None):
            raise SystemExit("hijack: --state-password-file needs --state URL")
    except SystemExit as exc:
        print(exc.code, file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _password(args: argparse.Namespace) -> str | None:
    path = args.state_password_file
    if path is None:
        if urllib.parse.urlsplit(args.state).password and args.state in sys.argv:
            logger.warning(
                "state: the Redis password is on the command line, where every "
                "local user can read it: use --state-password-file or --config"
            )
        return None
    try:
        with open(path) as file:
            return file.readline().rstrip("\r\n")
    except OSError as exc:
        raise SystemExit(f"hijack: --state-password-file {path}: {exc}") from None


def _availability_metric(metrics: Any) -> Callable[[bool], None]:
    """``hijack_state_available`` (1/0) and ``hijack_state_unavailable_total``
    in the process's metrics."""
    import prometheus_client as prom

    gauge = prom.Gauge(
        "hijack_state_available",
        "1 while the shared state (Redis) answers, 0 while it does not",
        multiprocess_mode="livemin",
        registry=metrics.registry,
    )
    outages = prom.Counter(
        "hijack_state_unavailable",
        "times the shared state stopped answering",
        registry=metrics.registry,
    )
    gauge.set(1)

    def on_availability(available: bool) -> None:
        gauge.set(1 if available else 0)
        if not available:
            outages.inc()

    return on_availability


def process_state(args: argparse.Namespace) -> State | None:
    """This process's state (made once; the same after a reload)."""
    if "state" in _LIVE:
        return _LIVE["state"]
    state: State | None = None
    if getattr(args, "state", None):
        from ..state._redis import RedisState

        state = RedisState(
            args.state,
            password=_password(args),
            ttl=args.state_ttl,
            timeout=args.state_timeout,
            fail_open=args.state_unavailable == "open",
        )
    else:
        from ..state._shared_memory import SharedState

        state = SharedState.from_environment()
    _LIVE["state"] = state
    return state


async def start_state(
    nursery: trio.Nursery, args: argparse.Namespace, metrics: Any = None
) -> None:
    """Run the upkeep of this process's state (if it has one) before the
    server serves; its availability goes into ``metrics`` (if any)."""
    state = process_state(args) if getattr(args, "state", None) else _LIVE.get("state")
    from ..state._redis import RedisState

    if isinstance(state, RedisState) and metrics is not None:
        state.on_availability = _availability_metric(metrics)
    if state is not None:
        await nursery.start(state.serve)


def run_reporting_state_errors(fn: Callable[..., Any], *args: Any) -> int:
    """``trio.run(fn, *args)``; Redis refusing us at start is one line on
    stderr and exit code 2."""
    from ..state._redis import StateStartError

    try:
        trio.run(fn, *args)
    except BaseExceptionGroup as group:
        refused = group.subgroup(StateStartError)
        if refused is None:
            raise
        first: BaseException = refused
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        print(f"hijack: {first}", file=sys.stderr, flush=True)
        return 2
    except StateStartError as exc:
        print(f"hijack: {exc}", file=sys.stderr, flush=True)
        return 2
    return 0


# -- the supervisor's side (--workers N) ----------------------------------------

_LIMIT_OPTIONS = (
    "max_tunnels_per_client",
    "max_tunnels_per_user",
    "user_bandwidth",
    "users",
)


def shared_table(args: argparse.Namespace) -> Table | None:
    """In the supervisor: the table the workers count their limits in, when
    the command has limits and no ``--state`` (Redis counts for everyone).
    Its fd goes to every worker in ``HIJACK_STATE_FD``."""
    import os

    if getattr(args, "state", None) or not any(
        getattr(args, name, None) for name in _LIMIT_OPTIONS
    ):
        return None
    from ..state._shared_memory import STATE_FD_ENV, Table

    # Room for every worker twice over: a SIGHUP runs old and new at once.
    table = Table.create(columns=2 * args.workers + 8)
    os.environ[STATE_FD_ENV] = str(table.fd)
    return table


def release_worker(table: Table, pid: int) -> None:
    """A worker exited: what it counted is given back now."""
    released = table.release_owner(pid)
    if released:
        logger.info("worker %d exited: %d tunnel leases given back", pid, released)
