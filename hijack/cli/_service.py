"""How an HTTP server command runs: :class:`Service` owns one serving
process (its listeners, TLS, metrics, signals, reloads and readiness);
:func:`supervise` runs ``--workers N`` of them; :func:`run_server` picks
one and turns whatever went wrong at start-up into one StartupError.

Start-up order: everything that reads the command line, a file or an
optional extra (``check``, TLS, the metrics extra) is done before any
socket is bound; the handler is built right after binding (the demo needs
the port it got), and if that fails the listeners are closed again (a
UNIX socket file removed) before the error is reported.

Reload (SIGHUP). One process: the command line and ``--config`` file are
parsed again, checked, and the handler rebuilt by the command's own
builder, so whatever a builder reads (the policy, a users file, a targets
file) is reloaded; the certificates are loaded again into the same SSL
context, so new handshakes use them. Open connections keep the handler they
started with. Anything wrong: one log line, the running configuration
stays. With workers the supervisor replaces the workers one by one instead,
each new worker reading everything afresh (after the supervisor checked the
new configuration itself).
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
from .._config import Limits
from .._exchange import Handler
from .._listeners import UnixSocketListener, open_unix_listener
from .._proxyproto import ProxyProtocol
from .._server import Server
from .._systemd import listeners_from_fds, notify, systemd_listen_fds
from . import _admin, _state
from ._command import (
    Command,
    CommandLine,
    HandlerContext,
    Hooks,
    StartupError,
    only_one,
    reason,
)
from ._http2 import http2_server_options
from ._logging import BatchedStreamHandler
from ._metrics import MULTIPROC_ENV, Health, mark_worker_dead, metrics_handler
from ._side_listener import serve_side
from ._supervisor import (
    WORKER_FDS_ENV,
    Supervisor,
    signal_ready,
    watch_lifeline,
    worker_command,
)

__all__ = ["Service", "run_server", "supervise"]

logger = logging.getLogger("hijack")


def run_server(command: Command, args: argparse.Namespace, line: CommandLine) -> int:
    """Serve ``command`` until a signal stops it: one process, or a
    supervisor and ``--workers`` processes. Raises StartupError."""
    _setup_access_log(args.access_log_format)
    if args.workers > 1 and WORKER_FDS_ENV not in os.environ:
        main: Callable[[], Any] = lambda: supervise(command, args, line)  # noqa: E731
    else:
        main = Service(command, args, line).run
    try:
        trio.run(main)
    except BaseExceptionGroup as group:  # from the service's nurseries
        raise only_one(group, StartupError, KeyboardInterrupt) from None
    return 0


def _setup_access_log(fmt: str) -> None:
    """``clf`` goes to the root handler like other logs; ``json`` gets its
    own stderr handler (bare JSON lines); ``off`` silences the logger."""
    if fmt == "off":
        access_logger.setLevel(logging.WARNING)
    elif fmt == "json":
        handler = BatchedStreamHandler(sys.stderr)
        handler.setFormatter(JSONAccessFormatter())
        access_logger.addHandler(handler)
        access_logger.propagate = False


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    """The server's SSL context from --tls-cert/--tls-key, or None."""
    if args.tls_cert is None and args.tls_key is None:
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise StartupError("--tls-cert and --tls-key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    _load_certificates(context, args)
    return context


def _load_certificates(context: ssl.SSLContext, args: argparse.Namespace) -> None:
    try:
        context.load_cert_chain(args.tls_cert, args.tls_key)
    except (OSError, ssl.SSLError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        raise StartupError(
            f"--tls-cert {args.tls_cert} --tls-key {args.tls_key}: {reason}"
        ) from None


def _metrics(args: argparse.Namespace) -> Any:
    """The process's Metrics with ``--metrics``, else None."""
    if args.metrics is None:
        return None
    from ._metrics import Metrics

    return Metrics()


@dataclass(slots=True)
class Opened:
    """Listeners, bound or inherited, and how to name where they listen."""

    listeners: list[Any]
    where: str
    port: int | None


async def open_listeners(
    args: argparse.Namespace, fds: Sequence[int], *, tls: bool
) -> Opened:
    """Bind --listen or --unix (or take ``fds``); StartupError naming the
    flag if the address cannot be had."""
    if fds:
        listeners: list[Any] = listeners_from_fds(fds)
    elif args.unix:
        try:
            listeners = [await open_unix_listener(args.unix)]
        except (OSError, ValueError) as exc:
            raise StartupError(f"--unix {args.unix}: {reason(exc)}") from None
    else:
        host, port = args.listen
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            where = join_host_port(host, port)
            raise StartupError(f"--listen {where}: {reason(exc)}") from None
    sock = listeners[0].socket
    name = sock.getsockname()
    if isinstance(listeners[0], UnixSocketListener):  # bound elsewhere, renamed
        return Opened(listeners, f"unix:{listeners[0].path}", None)
    if sock.family == socket.AF_UNIX:
        return Opened(listeners, f"unix:{name}", None)
    scheme = "https" if tls else "http"
    return Opened(listeners, f"{scheme}://{join_host_port(*name[:2])}", name[1])


def _inherited_fds() -> list[int]:
    """Listening fds handed over by the supervisor or by systemd."""
    from_supervisor = os.environ.pop(WORKER_FDS_ENV, "")
    if from_supervisor:
        return [int(fd) for fd in from_supervisor.split(",")]
    return systemd_listen_fds()


def _open_signals() -> contextlib.AbstractContextManager[AsyncIterator[int]]:
    """The signals a serving process handles. Open them before it says it
    serves (the listening line, READY): until then a SIGHUP or SIGTERM would
    get the default action, which kills the process on the spot."""
    return trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


async def _serve_metrics(
    nursery: trio.Nursery,
    address: tuple[str, int],
    health: Health,
    metrics: Any,
    served: Server | None = None,
) -> Server:
    """Start the ``--metrics`` listener; it reports its address. With
    ``served`` (one process), each scrape samples its connections first."""
    before_scrape = (lambda: None) if served is None else lambda: metrics.sample(served)
    # Probes every few seconds would drown the access log: kept off it.
    server = Server(
        metrics_handler(health, metrics, before_scrape=before_scrape),
        access_log=False,
    )
    await serve_side(nursery, server, address, "--metrics", "/metrics")
    return server


class Service:
    """One process serving an HTTP server command.

    Owns what serving needs beside the handler: the listeners (bound, or
    inherited from the supervisor or systemd), the SSL context, the PROXY
    protocol setting, the metrics and their hooks, the health flags behind
    ``/healthz`` and ``/readyz``, the signals, and the state handler
    builders keep across reloads (``context.kept``). Nothing of it lives on
    the argparse Namespace or in a module global.

    The constructor reads and checks (StartupError) but binds nothing;
    :meth:`run` binds, serves, and returns after a graceful shutdown.
    """

    def __init__(
        self, command: Command, args: argparse.Namespace, line: CommandLine
    ) -> None:
        assert command.handler is not None
        self.command = command
        self.args = args  # as started: a reload changes the handler only
        self.line = line
        self.worker = WORKER_FDS_ENV in os.environ
        self.health = Health()
        self.metrics = _metrics(args)
        hooks = Hooks()
        if self.metrics is not None:
            hooks = Hooks(
                self.metrics.on_tunnel,
                self.metrics.on_websocket_close,
                self.metrics.on_published,
            )
        self.context = HandlerContext(command.name, port=None, hooks=hooks)
        self.tls = tls_context(args)
        self.proxy_protocol = None
        if args.proxy_protocol:
            on_reject = (
                None
                if self.metrics is None
                else self.metrics.on_proxy_protocol_rejection
            )
            self.proxy_protocol = ProxyProtocol(
                args.proxy_protocol, on_reject=on_reject
            )
        self.server: Server | None = None

    def build_handler(self, args: argparse.Namespace) -> Handler:
        assert self.command.handler is not None
        return self.command.handler(args, self.context)

    async def run(self) -> None:
        with _open_signals() as signals:
            async with trio.open_nursery() as nursery:
                # The handler's files are read before anything is bound; the
                # handler itself is built once the port is known.
                _check_configuration(self.command, self.args)
                # Where the limits count (kept across reloads: leases live
                # in it); the handler's TunnelLimits find it in context.kept.
                self.context.kept["state"] = _state.open_state(self.args)
                opened = await open_listeners(
                    self.args, _inherited_fds(), tls=self.tls is not None
                )
                self.context.port = opened.port
                try:
                    handler = self.build_handler(self.args)
                except BaseException:  # the files changed meanwhile
                    for listener in opened.listeners:
                        await trio.aclose_forcefully(listener)
                    raise
                await self._serve(nursery, signals, opened, handler)

    async def _serve(
        self,
        nursery: trio.Nursery,
        signals: AsyncIterator[int],
        opened: Opened,
        handler: Handler,
    ) -> None:
        metrics = self.metrics
        server = self.server = Server(
            handler,
            limits=Limits(shutdown_grace=self.args.shutdown_grace),
            on_state=() if metrics is None else metrics.on_state,
            on_request=() if metrics is None else metrics.on_request,
            on_accept_error=None if metrics is None else metrics.on_accept_error,
            # A handler that also serves other protocols on its port (SOCKS5)
            # offers the Server's sniff hook.
            sniff=getattr(handler, "sniff", None),
            **http2_server_options(self.args),
        )
        state = self.context.kept.get("state")
        await _state.start_state(nursery, state, metrics)
        await _admin.start_admin(nursery, self.args, state)
        await nursery.start(
            lambda task_status: server.serve_listeners(
                opened.listeners,
                ssl_context=self.tls,
                proxy_protocol=self.proxy_protocol,
                task_status=task_status,
            )
        )
        metrics_server = None
        if self.worker:
            nursery.start_soon(watch_lifeline)
        if metrics is not None:
            nursery.start_soon(metrics.sample_forever, server)
            if not self.worker:  # the supervisor serves the workers' sum
                metrics_server = await _serve_metrics(
                    nursery, self.args.metrics, self.health, metrics, server
                )
        self._ready()
        if not self.worker:
            print(f"hijack {self.command.name} listening on {opened.where}", flush=True)
            if self.command.hint is not None:
                print(self.command.hint(opened.where), flush=True)
        await self._serve_signals(signals, nursery)
        if metrics_server is not None:
            await metrics_server.shutdown(grace=0)
        nursery.cancel_scope.cancel()  # the metrics sampler

    def _ready(self) -> None:
        """This process serves now: tell /readyz, the supervisor, systemd."""
        self.health.serving = self.health.ready = True
        signal_ready()
        notify("READY=1")

    def reload(self) -> None:
        """SIGHUP: read the command line and its files again; StartupError
        (the running configuration untouched) if anything is wrong."""
        assert self.server is not None
        new = self.line.reparse()
        self.command.check(new)
        if self.tls is not None:
            tls_context(new)  # the new certificates load, or nothing changes
        handler = self.build_handler(new)
        if self.tls is not None:
            _load_certificates(self.tls, new)
        self.server.handler = handler
        self.server.sniff = getattr(handler, "sniff", None)
        _warn_unapplied(self.args, new)

    async def _serve_signals(
        self, signals: AsyncIterator[int], nursery: trio.Nursery
    ) -> None:
        """SIGHUP: reload. SIGINT/SIGTERM: not ready, ``STOPPING=1``,
        graceful shutdown; a second one cancels ``nursery`` (stop now)."""
        assert self.server is not None
        async for signum in signals:
            if signum != signal.SIGHUP:
                break
            try:
                self.reload()
            except StartupError as exc:
                logger.error(
                    "reload failed, keeping the running configuration: %s", exc
                )
            else:
                logger.info("reloaded")
        self.health.ready = False
        notify("STOPPING=1")
        # One write: stderr is write-through, so print() would send the text
        # and its newline apart, and two workers' lines could run together.
        sys.stderr.write("shutting down (Ctrl-C again to stop now)\n")
        async with trio.open_nursery() as inner:

            async def second_signal() -> None:
                async for signum in signals:
                    if signum != signal.SIGHUP:
                        nursery.cancel_scope.cancel()
                        inner.cancel_scope.cancel()
                        return

            inner.start_soon(second_signal)
            await self.server.shutdown()
            inner.cancel_scope.cancel()


# -- the supervisor (--workers N) ----------------------------------------------


async def supervise(
    command: Command, args: argparse.Namespace, line: CommandLine
) -> None:
    """Bind (or inherit from systemd), check the configuration once here,
    then run ``--workers`` workers until a signal stops them."""
    # What every worker would find wrong, said here once, before anything
    # is bound or any worker started: a missing extra, a certificate, a
    # users or targets file.
    if args.metrics is not None:
        _metrics(args)
    _check_configuration(command, args)
    fds = systemd_listen_fds()
    own: list[Any] = []
    try:
        if fds:
            where = f"{len(fds)} socket(s) from systemd"
        else:
            opened = await open_listeners(args, (), tls=args.tls_cert is not None)
            own = opened.listeners
            fds = [listener.socket.fileno() for listener in own]
            where = opened.where
        await _supervise_workers(command, args, line, own, fds, where)
    finally:
        for listener in own:
            await trio.aclose_forcefully(listener)


#: What a reload cannot change: the sockets, the processes, the logging
#: and the server's limits are set up once, at start.
NEEDS_A_RESTART = (
    "listen",
    "unix",
    "workers",
    "metrics",
    "proxy_protocol",
    "access_log_format",
    "shutdown_grace",
    "log_level",
    # Built once with the Server or at start-up, not with the handler.
    "http2",
    "state",
    "state_password_file",
    "state_ttl",
    "state_timeout",
    "state_unavailable",
    "admin",
    "admin_token_file",
)


def _warn_unapplied(started: argparse.Namespace, new: argparse.Namespace) -> None:
    """One line for each option a reload was given but cannot apply."""
    for dest in NEEDS_A_RESTART:  # not every command has every option
        if getattr(new, dest, None) != getattr(started, dest, None):
            flag = "--" + dest.replace("_", "-")
            logger.warning("reload: %s changed; it applies after a restart", flag)
    if (new.tls_cert is None) != (started.tls_cert is None):
        logger.warning("reload: TLS on or off applies after a restart")


def _check_configuration(command: Command, args: argparse.Namespace) -> None:
    """Find what is wrong with ``args`` without binding anything: the
    options that go together, the certificates, the handler's files (a
    handler is built and dropped, with state of its own; the port only aims
    the demo's tunnels at itself)."""
    command.check(args)
    tls_context(args)
    assert command.handler is not None
    command.handler(args, HandlerContext(command.name, port=1))


def _check_reload(
    command: Command, started: argparse.Namespace, line: CommandLine
) -> None:
    """Before a SIGHUP replaces the workers: the new configuration works,
    and what of it the new workers cannot take is said."""
    new = line.reparse()
    _check_configuration(command, new)
    _warn_unapplied(started, new)


async def _supervise_workers(
    command: Command,
    args: argparse.Namespace,
    line: CommandLine,
    own: list[Any],
    fds: Sequence[int],
    where: str,
) -> None:
    multiproc_dir = None
    if args.metrics is not None:
        multiproc_dir = tempfile.mkdtemp(prefix="hijack-metrics-")
        os.environ[MULTIPROC_ENV] = multiproc_dir
    health = Health(serving=True)
    table = _state.shared_table(args)  # the workers' shared limits, if any
    admin_dir = _admin.workers_admin_dir(args)  # the workers' admin sockets

    def on_worker_exit(pid: int) -> None:
        mark_worker_dead(pid)
        if table is not None:
            _state.release_worker(table, pid)

    def on_readiness(is_ready: bool) -> None:
        health.ready = is_ready
        if not is_ready:  # stop queueing connections nobody will accept
            for listener in own:
                listener.socket.close()

    supervisor = Supervisor(
        worker_command(line.argv),
        fds,
        args.workers,
        grace=args.shutdown_grace,
        on_readiness=on_readiness,
        on_worker_exit=on_worker_exit,
        check_reload=lambda: _check_reload(command, args, line),
        pass_fds=() if table is None else (table.fd,),
    )
    try:
        async with trio.open_nursery() as nursery:
            metrics_server = None
            if args.metrics is not None:
                metrics_server = await _serve_metrics(
                    nursery, args.metrics, health, None
                )
            if admin_dir is not None:
                await _admin.start_supervisor_admin(nursery, args, admin_dir)
            async with trio.open_nursery() as workers:
                await workers.start(supervisor.run)
                print(
                    f"hijack {command.name} listening on {where} "
                    f"({args.workers} workers: {' '.join(map(str, supervisor.pids))})",
                    flush=True,
                )
            if metrics_server is not None:
                await metrics_server.shutdown(grace=0)
            nursery.cancel_scope.cancel()  # the admin listener
    finally:
        if multiproc_dir is not None:
            shutil.rmtree(multiproc_dir, ignore_errors=True)
        if admin_dir is not None:
            shutil.rmtree(admin_dir, ignore_errors=True)
        if table is not None:
            table.close()
