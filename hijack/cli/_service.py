"""How the ``hijack`` command runs as a service: the options every server
command shares, its listeners (bound, or inherited from systemd or the
supervisor), TLS, the metrics listener, signals and SIGHUP reloads.

The serving code itself stays in ``_cli._serve``; this module gives it the
pieces, and runs the supervisor when ``--workers`` is above 1.

Reload (SIGHUP). One process: the command line and ``--config`` file are
parsed again and the handler is rebuilt by the subcommand's own builder
(``args.run``), so whatever a builder reads (the policy, a users file) is
reloaded; the certificates are loaded again into the same SSL context, so
new handshakes use them. Open connections keep the handler they started
with. With workers the supervisor replaces the workers one by one instead,
each new worker reading everything afresh.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import socket
import ssl
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import trio

from .._access_log import JSONAccessFormatter, access_logger
from .._address import join_host_port
from .._listeners import UnixSocketListener, open_unix_listener
from .._server import Server
from .._systemd import listeners_from_fds, notify, systemd_listen_fds
from ._admin import start_supervisor_admin, workers_admin_dir
from ._arguments import parse_host_port
from ._metrics import MULTIPROC_ENV, Health, mark_worker_dead, metrics_handler
from ._state import release_worker, shared_table
from ._supervisor import (
    WORKER_FDS_ENV,
    Supervisor,
    WorkerStartError,
    signal_ready,
    watch_lifeline,
    worker_command,
)

__all__ = [
    "Opened",
    "add_serving_options",
    "inherited_fds",
    "open_listeners",
    "open_signals",
    "run_supervisor",
    "serve_signals",
    "setup_access_log",
    "tls_context",
    "watch_lifeline",
]

logger = logging.getLogger("hijack")


def add_serving_options(parser: argparse.ArgumentParser) -> None:
    """The options of every server command (added to the shared parent)."""
    group = parser.add_argument_group("deployment")
    group.add_argument(
        "--config",
        metavar="FILE.toml",
        help="read options from a TOML file (keys are the long option names: "
        'listen = "0.0.0.0:8080"); options on the command line win',
    )
    group.add_argument(
        "--workers",
        type=int,
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
        "(needs hijack[metrics])",
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
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="on SIGTERM, time in-flight requests and tunnels get to finish "
        "(default: 10)",
    )
    parser.set_defaults(on_tunnel=None, on_websocket_close=None)


def setup_access_log(fmt: str) -> None:
    """``clf`` goes to the root handler like other logs; ``json`` gets its
    own stderr handler (bare JSON lines); ``off`` silences the logger."""
    if fmt == "off":
        access_logger.setLevel(logging.WARNING)
    elif fmt == "json":
        handler = logging.StreamHandler()
        handler.setFormatter(JSONAccessFormatter())
        access_logger.addHandler(handler)
        access_logger.propagate = False


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise SystemExit("hijack: --tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise SystemExit(
            f"hijack: cannot load --tls-cert {args.tls_cert} --tls-key "
            f"{args.tls_key}: {exc}"
        ) from None
    return context


def inherited_fds() -> list[int]:
    """Listening fds handed over by the supervisor or by systemd."""
    from_supervisor = os.environ.pop(WORKER_FDS_ENV, "")
    if from_supervisor:
        return [int(fd) for fd in from_supervisor.split(",")]
    return systemd_listen_fds()


@dataclass(slots=True)
class Opened:
    listeners: list[Any]
    where: str
    port: int | None


async def open_listeners(
    args: argparse.Namespace, fds: Sequence[int], *, tls: bool
) -> Opened:
    if fds:
        listeners: list[Any] = listeners_from_fds(fds)
    elif args.unix:
        listeners = [await open_unix_listener(args.unix)]
    else:
        host, port = args.listen
        listeners = await trio.open_tcp_listeners(port, host=host)
    sock = listeners[0].socket
    name = sock.getsockname()
    if isinstance(listeners[0], UnixSocketListener):  # bound elsewhere, renamed
        return Opened(listeners, f"unix:{listeners[0].path}", None)
    if sock.family == socket.AF_UNIX:
        return Opened(listeners, f"unix:{name}", None)
    scheme = "https" if tls else "http"
    return Opened(listeners, f"{scheme}://{join_host_port(*name[:2])}", name[1])


def open_signals() -> contextlib.AbstractContextManager[AsyncIterator[int]]:
    """The signals a serving process handles. Open them before it says it
    serves (the listening line, READY): until then a SIGHUP or SIGTERM would
    get the default action, which kills the process on the spot."""
    return trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def serve_signals(
    signals: AsyncIterator[int],
    server: Server,
    nursery: trio.Nursery,
    *,
    health: Health,
    reload: Callable[[], None],
) -> None:
    """SIGHUP: ``reload()``. SIGINT/SIGTERM: not ready, ``STOPPING=1``,
    graceful shutdown; a second one cancels ``nursery`` (stop now)."""
    async for signum in signals:
        if signum != signal.SIGHUP:
            break
        try:
            reload()
            logger.info("reloaded")
        except (Exception, SystemExit) as exc:
            logger.error("reload failed, keeping the running configuration: %s", exc)
    health.ready = False
    notify("STOPPING=1")
    print("shutting down (Ctrl-C again to stop now)", file=sys.stderr, flush=True)
    async with trio.open_nursery() as inner:

        async def second_signal() -> None:
            async for signum in signals:
                if signum != signal.SIGHUP:
                    nursery.cancel_scope.cancel()
                    inner.cancel_scope.cancel()
                    return

        inner.start_soon(second_signal)
        await server.shutdown()
        inner.cancel_scope.cancel()


async def serve_metrics(
    nursery: trio.Nursery, address: tuple[str, int], health: Health, metrics: Any
) -> Server:
    """Start the ``--metrics`` listener; it reports its address."""
    # Probes every few seconds would drown the access log: kept off it.
    server = Server(metrics_handler(health, metrics), access_log=False)
    host, port = address
    listeners = await nursery.start(server.serve_tcp, port, host)
    name = listeners[0].socket.getsockname()
    print(f"metrics on http://{name[0]}:{name[1]}/metrics", flush=True)
    return server


def ready(health: Health) -> None:
    """This process serves now: tell the supervisor or systemd."""
    health.serving = health.ready = True
    signal_ready()
    notify("READY=1")


# -- the supervisor (--workers N) ----------------------------------------------


def run_supervisor(args: argparse.Namespace, argv: Sequence[str]) -> None:
    try:
        trio.run(_supervise, args, list(argv))
    except BaseExceptionGroup as group:  # from the supervisor's nurseries
        failed = group.subgroup(WorkerStartError)
        if failed is None:
            raise
        first: BaseException = failed
        while isinstance(first, BaseExceptionGroup):
            first = first.exceptions[0]
        raise SystemExit(f"hijack: {first}") from None


async def _supervise(args: argparse.Namespace, argv: list[str]) -> None:
    tls_context(args)  # a bad certificate: one clear error, before any worker
    fds = systemd_listen_fds()
    own: list[Any] = []
    if not fds:
        opened = await open_listeners(args, (), tls=args.tls_cert is not None)
        own = opened.listeners
        fds = [listener.socket.fileno() for listener in own]
        where = opened.where
    else:
        where = f"{len(fds)} socket(s) from systemd"
    multiproc_dir = None
    if args.metrics is not None:
        multiproc_dir = tempfile.mkdtemp(prefix="hijack-metrics-")
        os.environ[MULTIPROC_ENV] = multiproc_dir
    health = Health(serving=True)
    table = shared_table(args)  # the workers' shared limits, if any
    admin_dir = workers_admin_dir(args)  # the workers' admin sockets, if any

    def on_worker_exit(pid: int) -> None:
        mark_worker_dead(pid)
        if table is not None:
            release_worker(table, pid)

    def on_readiness(is_ready: bool) -> None:
        health.ready = is_ready
        if not is_ready:  # stop queueing connections nobody will accept
            for listener in own:
                listener.socket.close()

    supervisor = Supervisor(
        worker_command(argv),
        fds,
        args.workers,
        grace=args.shutdown_grace,
        on_readiness=on_readiness,
        on_worker_exit=on_worker_exit,
        pass_fds=() if table is None else (table.fd,),
    )
    try:
        async with trio.open_nursery() as nursery:
            metrics_server = None
            if args.metrics is not None:
                metrics_server = await serve_metrics(
                    nursery, args.metrics, health, None
                )
            if admin_dir is not None:
                await start_supervisor_admin(nursery, args, admin_dir)
            async with trio.open_nursery() as workers:
                await workers.start(supervisor.run)
                print(
                    f"hijack {args.command} listening on {where} "
                    f"({args.workers} workers: {' '.join(map(str, supervisor.pids))})",
                    flush=True,
                )
            if metrics_server is not None:
                await metrics_server.shutdown(grace=0)
            nursery.cancel_scope.cancel()  # the admin listener
    finally:
        if admin_dir is not None:
            shutil.rmtree(admin_dir, ignore_errors=True)
        for listener in own:
            await trio.aclose_forcefully(listener)
        if multiproc_dir is not None:
            shutil.rmtree(multiproc_dir, ignore_errors=True)
