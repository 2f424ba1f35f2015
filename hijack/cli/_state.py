"""The command's options for shared limit state and the admin listener
(option groups ``state`` and ``admin``: ``--state``,
``--state-password-file``, ``--state-ttl``, ``--state-timeout``,
``--state-unavailable``, ``--admin``, ``--admin-token-file``), their
start-up checks, and the state object of a serving process (kept by the
Service in ``context.kept["state"]``).

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
from ._command import StartupError

if TYPE_CHECKING:
    from ..state._shared_memory import Table

__all__ = [
    "admin_group",
    "check",
    "open_state",
    "read_token",
    "release_worker",
    "shared_table",
    "start_state",
    "state_group",
]

logger = logging.getLogger("hijack.state")


def _state_url(text: str) -> str:
    scheme = urllib.parse.urlsplit(text).scheme
    if scheme not in ("redis", "rediss", "unix"):
        raise argparse.ArgumentTypeError(
            f"expected redis://[user:pass@]HOST:PORT/DB, rediss://... or "
            f"unix:///PATH, got {scheme or text!r}"
        )
    return text


def state_group() -> argparse.ArgumentParser:
    """Where the limits are counted (proxy and tcp)."""
    parser = argparse.ArgumentParser(add_help=False)
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
    return parser


def admin_group() -> argparse.ArgumentParser:
    """The admin listener (proxy, tcp and wsbridge)."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group("the admin listener")
    group.add_argument(
        "--admin",
        type=_admin_address,
        metavar="[HOST:]PORT",
        help="serve the admin API (GET /tunnels, DELETE /tunnels/ID, GET "
        "/users) there (a bare PORT: on 127.0.0.1); needs --admin-token-file",
    )
    group.add_argument(
        "--admin-token-file",
        metavar="FILE",
        help="the admin API's bearer token, first line of FILE",
    )
    return parser


def _admin_address(text: str) -> tuple[str, int]:
    """``HOST:PORT``, or a bare ``PORT`` on loopback (the default host)."""
    from ._arguments import parse_host_port

    if text.isdigit():
        text = f"127.0.0.1:{text}"
    return parse_host_port(text, allow_zero=True)


def read_token(path: str | None) -> bytes:
    """The admin token: the first line of ``path`` (StartupError if none)."""
    if path is None:
        raise StartupError("--admin needs --admin-token-file FILE")
    try:
        with open(path, "rb") as file:
            token = file.readline().strip()
    except OSError as exc:
        raise StartupError(
            f"--admin-token-file {path}: {exc.strerror or exc}"
        ) from None
    if len(token) < 16:
        raise StartupError(
            f"--admin-token-file {path}: the token needs 16 characters or more "
            "(try: head -c 24 /dev/urandom | base64)"
        )
    return token


def check(args: argparse.Namespace) -> None:
    """What the state and admin options refuse (StartupError), before
    anything is bound; again on every reload."""
    if getattr(args, "admin", None) is not None:
        read_token(args.admin_token_file)
    if getattr(args, "state", None):
        if args.state_ttl <= 0 or args.state_timeout <= 0:
            raise StartupError("--state-ttl and --state-timeout must be > 0")
        try:
            import coredis  # noqa: F401
        except ImportError:
            raise StartupError(
                "--state redis:// needs coredis: pip install 'hijack[redis]'"
            ) from None
        _password(args)
    elif getattr(args, "state_password_file", None):
        raise StartupError("--state-password-file needs --state URL")


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
        raise StartupError(
            f"--state-password-file {path}: {exc.strerror or exc}"
        ) from None


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


def open_state(args: argparse.Namespace) -> State | None:
    """The state a serving process counts its limits in: Redis with
    ``--state``; in a worker of ``--workers N`` with limits, the
    supervisor's table; else None (the limits count in the process)."""
    if getattr(args, "state", None):
        from ..state._redis import RedisState

        return RedisState(
            args.state,
            password=_password(args),
            ttl=args.state_ttl,
            timeout=args.state_timeout,
            fail_open=args.state_unavailable == "open",
        )
    from ..state._shared_memory import SharedState

    return SharedState.from_environment()


async def start_state(
    nursery: trio.Nursery, state: State | None, metrics: Any = None
) -> None:
    """Run the upkeep of ``state`` before the server serves; its
    availability goes into ``metrics`` (if any). Redis refusing us (a wrong
    password, a wrong database) is a StartupError."""
    if state is None:
        return
    from ..state._redis import RedisState, StateStartError

    if isinstance(state, RedisState) and metrics is not None:
        state.on_availability = _availability_metric(metrics)
    try:
        await nursery.start(state.serve)
    except StateStartError as exc:
        raise StartupError(str(exc)) from None


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
