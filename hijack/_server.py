"""The Server: listeners, one task per connection, limits, graceful shutdown.

Structure (hypercorn's, in trio terms): each ``serve_*`` call runs an accept
nursery inside a connection nursery. Shutdown cancels the accept nursery,
closes the listeners, sets the server's one shutdown signal (every
connection's ``shutdown_requested`` is that event: hijacked owners see it),
ends the keep-alive waits of idle HTTP connections, lets in-flight requests
finish, waits up to the grace period, then cancels what is left and closes
hijacked streams still open.

One registry: ``_connections`` maps id -> Connection, and each Connection
knows who holds its stream: its HTTP driver, or its hijacked stream (any
owner that reports the close, not only a task).
"""

from __future__ import annotations

import errno
import itertools
import logging
import math
import ssl
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import trio

from ._accept import SocketAcceptor, socket_acceptor
from ._access_log import AccessRecord, RequestHook, access_logger, log_access
from ._config import Limits
from ._connection import Connection, ConnState, StateHook
from ._deadlines import DeadlineTimer
from ._exchange import Handler, Sniffer, StreamHandler
from ._h2 import ConnectionLoop, choose_protocol
from ._http import HTTPConnection
from ._hub import Hub
from ._hub import available as hub_available
from ._keepalive import set_tcp_keepalive
from ._listeners import UnixSocketListener, open_unix_listener
from ._proxyproto import ProxyHeader, ProxyProtocol, ProxyProtocolError
from ._reuse_port import open_tcp_listeners_reuse_port
from ._tls import handshake, wrap_server_side

__all__ = ["Server", "Sniffer", "StreamHandler"]

logger = logging.getLogger("hijack")

# Out of file descriptors or memory: log, wait, and accept again (trio's rule).
ACCEPT_CAPACITY_ERRNOS = {errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS}
ACCEPT_CAPACITY_SLEEP = 0.1

ConnectHook = Callable[[Connection], None]


class Server:
    """An HTTP/1.1 server whose handlers can hijack their connection.

    ``handler(request)`` returns a :class:`~hijack.Response` (or ``None`` after
    ``request.hijack()`` or ``request.start_response()``).

    ``on_state(connection, state)`` hooks are called once per state
    transition, in order (Go's ``Server.ConnState``). ``on_connect(connection)``
    runs when a connection opens, before any byte is read, to fill
    ``connection.context`` (Go's ``ConnContext``); if it raises, the
    connection is closed. ``on_request(record)`` hooks get an
    :class:`~hijack.AccessRecord` when each HTTP exchange ends (the same
    record the ``hijack.access`` logger writes; ``access_log=False`` keeps
    this server off that logger, e.g. for a health-check listener).
    ``on_accept_error(exc)`` sees every ``OSError`` from ``accept()`` (the
    capacity ones, EMFILE and friends, are logged once and retried; others
    end the accept loop), e.g. to count them.

    ``sniff(first_bytes)`` serves other protocols on the same port (SOCKS5
    next to HTTP): it is called once per connection with the bytes of its
    first read (after TLS, if any; at least one byte, within
    ``limits.head_timeout``) and returns None to serve HTTP as usual, or a
    :data:`~hijack.StreamHandler` that takes the connection as it is:
    ``await stream_handler(hijacked)`` gets a :class:`~hijack.Hijacked`
    (its ``buffered`` holds every byte read) and the connection goes ACTIVE
    then HIJACKED, with no HTTP exchange. The ownership rules of
    ``request.hijack()`` hold (closed when the stream handler returns unless
    detached or handed to the hub). The HTTP layer's own first read is the
    one sniffed: HTTP pays one call of ``sniff`` per connection, nothing per
    request.

    Attributes: ``handler``, ``sniff`` (both may be replaced while serving,
    e.g. on a reload) and ``limits`` (:class:`~hijack.Limits`), as
    given. With an ``ssl_context``, the server installs its own
    ``sni_callback`` on it (chaining to one already there) to record each
    client's SNI in ``connection.tls.server_name``.

    ``http2=True`` serves HTTP/2 too (see ``hijack/_h2.py``): on TLS
    listeners when the client picks ``h2`` by ALPN (the server then sets the
    context's ALPN protocols to ``h2, http/1.1``), on plain ones when it
    opens with the HTTP/2 preface (prior knowledge). ``extended_connect``:
    advertise SETTINGS_ENABLE_CONNECT_PROTOCOL (RFC 8441: WebSockets and
    other protocols over an HTTP/2 stream); default: if the handler says it
    serves it (``handler.serves_extended_connect``, set by the shipped
    WebSocket handlers), never otherwise.
    """

    def __init__(
        self,
        handler: Handler,
        *,
        limits: Limits | None = None,
        on_state: StateHook | Sequence[StateHook] = (),
        on_connect: ConnectHook | None = None,
        on_request: RequestHook | Sequence[RequestHook] = (),
        on_accept_error: Callable[[OSError], object] | None = None,
        access_log: bool = True,
        sniff: Sniffer | None = None,
        http2: bool = False,
        extended_connect: bool | None = None,
    ) -> None:
        self.handler = handler
        self.sniff = sniff
        self.http2 = http2
        self.extended_connect = (
            bool(getattr(handler, "serves_extended_connect", False))
            if extended_connect is None
            else extended_connect
        )
        self.limits = limits or Limits()
        self._state_hooks: tuple[StateHook, ...] = (
            (on_state,) if callable(on_state) else tuple(on_state)
        )
        self._on_connect = on_connect
        self._request_hooks: tuple[RequestHook, ...] = (
            (on_request,) if callable(on_request) else tuple(on_request)
        )
        self._on_accept_error = on_accept_error
        self._access_log = access_log
        self._ids = itertools.count(1)
        self._connections: dict[int, Connection] = {}
        self._capacity = trio.Semaphore(self.limits.max_connections)
        # The one shutdown signal: every connection's shutdown_requested.
        self._shutdown_started = trio.Event()
        self._shutdown_deadline = math.inf
        self._serving = 0
        self._stopped = trio.Event()
        self._stopped.set()
        self._closed_one = trio.Event()
        # The relay hub tunnels are handed to (Linux): run by the first
        # serve_* call, closed by it.
        self._hub: Hub | None = None
        # The head and idle deadlines of HTTP waits on plain sockets: run by
        # the first serve_* call (a wait falls back to a cancel scope of its
        # own when it is not running).
        self._deadlines = DeadlineTimer()

    # -- what the server knows ---------------------------------------------

    @property
    def shutting_down(self) -> bool:
        """True once :meth:`shutdown` was called."""
        return self._shutdown_started.is_set()

    @property
    def connections(self) -> list[Connection]:
        """A snapshot of the open connections: every accepted stream not
        closed yet, in any state (new, active, idle, hijacked and still open
        at its owner); a TLS connection counts from accept, handshake
        included. ``open_http_connections + open_hijacked_connections ==
        len(connections)``."""
        return list(self._connections.values())

    @property
    def open_http_connections(self) -> int:
        """Open connections the HTTP layer still holds: new (TLS handshake
        included), active or idle."""
        return sum(1 for c in self._connections.values() if not c.hijacked_open)

    @property
    def open_hijacked_connections(self) -> int:
        """Hijacked connections whose owner has not closed the stream yet
        (detached ones included)."""
        return sum(1 for c in self._connections.values() if c.hijacked_open)

    @property
    def open_hijacked_streams(self) -> int:
        """Hijacked HTTP/2 streams whose owner has not closed them yet (their
        connections count among ``open_http_connections``: the connection
        itself was not handed over)."""
        return sum(
            getattr(c._driver, "hijacked_streams", 0)
            for c in self._connections.values()
        )

    @property
    def hub(self) -> Hub | None:
        """The relay hub this server runs while serving (Linux), where
        :meth:`Hijacked.hand_to_hub` sends tunnels; None elsewhere."""
        return self._hub

    @property
    def reporting(self) -> bool:
        """Whether anyone wants exchange records (so none is built in vain)."""
        return bool(self._request_hooks) or (
            self._access_log and access_logger.isEnabledFor(logging.INFO)
        )

    def report(self, record: AccessRecord) -> None:
        if self._access_log:
            log_access(record)
        for hook in self._request_hooks:
            try:
                hook(record)
            except Exception:
                logger.exception("on_request hook %r failed", hook)

    # -- serving -------------------------------------------------------------

    async def serve_tcp(
        self,
        port: int = 8080,
        host: str | None = "127.0.0.1",
        *,
        ssl_context: ssl.SSLContext | None = None,
        backlog: int = 4096,
        proxy_protocol: ProxyProtocol | None = None,
        reuse_port: bool = False,
        task_status: trio.TaskStatus[
            list[trio.SocketListener]
        ] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on TCP (``host=None`` or ``""``: every interface, IPv4 and
        IPv6). ``task_status.started()`` gets the listeners: read the bound
        port from ``listeners[0].socket.getsockname()``. ``proxy_protocol``:
        see :meth:`serve_listeners`.

        ``reuse_port``: set ``SO_REUSEPORT`` so several processes (each with
        its own Server) serve one fixed port; the kernel spreads connections.
        Inherited sockets (systemd, a supervisor) go to
        :meth:`serve_listeners` through :func:`hijack.listeners_from_fds`."""
        if reuse_port:
            listeners = await open_tcp_listeners_reuse_port(port, host, backlog=backlog)
        else:
            listeners = await trio.open_tcp_listeners(port, host=host, backlog=backlog)
        await self.serve_listeners(
            listeners,
            ssl_context=ssl_context,
            proxy_protocol=proxy_protocol,
            task_status=task_status,
        )

    async def serve_unix(
        self,
        path: str,
        *,
        mode: int = 0o660,
        ssl_context: ssl.SSLContext | None = None,
        proxy_protocol: ProxyProtocol | None = None,
        task_status: trio.TaskStatus[
            list[UnixSocketListener]
        ] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on a UNIX socket created with ``mode`` (see
        :func:`open_unix_listener`); the file is removed at shutdown."""
        listener = await open_unix_listener(path, mode=mode)
        await self.serve_listeners(
            [listener],
            ssl_context=ssl_context,
            proxy_protocol=proxy_protocol,
            task_status=task_status,
        )

    async def serve_listeners(
        self,
        listeners: Iterable[trio.abc.Listener[Any]],
        *,
        ssl_context: ssl.SSLContext | None = None,
        proxy_protocol: ProxyProtocol | None = None,
        task_status: trio.TaskStatus[Any] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Serve on any trio Listeners until :meth:`shutdown` finishes.

        ``proxy_protocol``: a :class:`ProxyProtocol` naming the trusted
        balancers; their connections must begin with a PROXY protocol header
        (read at accept, before TLS), which sets ``remote_address``.

        Resource handling: the listeners are closed on return, and every
        connection stream too (hijacked ones when their owner closes them, or
        at the end of the shutdown grace period).
        """
        listeners = list(listeners)
        if ssl_context is not None and self.http2:
            ssl_context.set_alpn_protocols(["h2", "http/1.1"])
        if self._serving == 0:
            self._stopped = trio.Event()
        self._serving += 1
        hub = None
        try:
            async with trio.open_nursery() as connection_nursery:
                if self._hub is None and hub_available():
                    hub = self._hub = Hub()
                    await connection_nursery.start(hub.serve)
                if not self._deadlines.running:
                    await connection_nursery.start(self._deadlines.serve)
                async with trio.open_nursery() as accept_nursery:
                    for listener in listeners:
                        accept_nursery.start_soon(
                            self._accept_loop,
                            listener,
                            connection_nursery,
                            ssl_context,
                            proxy_protocol,
                        )
                    task_status.started(listeners)
                    await self._shutdown_started.wait()
                    accept_nursery.cancel_scope.cancel()
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
                with trio.move_on_at(self._shutdown_deadline):
                    while self._connections:
                        await self._closed_one.wait()
                # Grace is over: close hijacked streams whose owners are still
                # at it (a hub tunnel is the owner of a handed-over one), and
                # cancel handlers still running. Every one is marked cut first:
                # a relay woken by its closed socket reads the mark to know it
                # was ended from outside, not by its peer.
                cut = list(self._connections.values())
                for connection in cut:
                    connection._cut = True
                for connection in cut:
                    if connection._hijacked is not None:
                        await trio.aclose_forcefully(connection._hijacked)
                connection_nursery.cancel_scope.cancel()
        finally:
            if hub is not None:
                self._hub = None
            # Shielded: when this task is cancelled from outside, an unshielded
            # close raises Cancelled and the bookkeeping below never runs, so a
            # shutdown() waiting on _stopped would wait forever.
            with trio.CancelScope(shield=True):
                for listener in listeners:
                    await trio.aclose_forcefully(listener)
            self._serving -= 1
            if self._serving == 0:
                self._stopped.set()

    async def shutdown(self, grace: float | None = None) -> None:
        """Graceful shutdown, Go's ``Server.Shutdown`` plus hijacked
        connections: stop accepting and close the listeners; close idle
        connections now (one accepted but still silent gets 1 s to send its
        first request, Go's ``StateNew`` rule); let in-flight requests finish
        (their response says ``Connection: close``); set ``shutdown_requested``, the
        one event every connection shares, so owners of hijacked streams can
        say goodbye in their protocol; after ``grace`` seconds (default
        ``limits.shutdown_grace``) cancel the handlers still running and
        close the hijacked streams still open. Returns when every
        ``serve_*`` call has returned. Calling it again just waits."""
        if not self._shutdown_started.is_set():
            grace = self.limits.shutdown_grace if grace is None else grace
            self._shutdown_deadline = trio.current_time() + grace
            self._shutdown_started.set()
            for connection in list(self._connections.values()):
                if connection._driver is not None:
                    connection._driver.request_shutdown()
        await self._stopped.wait()

    # -- internals -------------------------------------------------------------

    def _forget(self, connection: Connection) -> None:
        """Called once per connection when its stream is closed."""
        if self._connections.pop(connection.id, None) is not None:
            self._capacity.release()
            self._closed_one.set()
            self._closed_one = trio.Event()

    async def _accept_loop(
        self,
        listener: trio.abc.Listener[Any],
        nursery: trio.Nursery,
        ssl_context: ssl.SSLContext | None,
        proxy_protocol: ProxyProtocol | None,
    ) -> None:
        local_path = listener.path if isinstance(listener, UnixSocketListener) else None
        # A plain listening socket: several connections per wake-up.
        acceptor = socket_acceptor(listener, self.limits)
        try:
            await self._accept_connections(
                listener, acceptor, nursery, local_path, ssl_context, proxy_protocol
            )
        finally:
            if acceptor is not None:
                acceptor.close()

    async def _accept_connections(
        self,
        listener: trio.abc.Listener[Any],
        acceptor: SocketAcceptor | None,
        nursery: trio.Nursery,
        local_path: str | None,
        ssl_context: ssl.SSLContext | None,
        proxy_protocol: ProxyProtocol | None,
    ) -> None:
        failing = False  # log a capacity episode once, not every 0.1 s
        while True:
            try:  # no scheduler pass while there is room (accept yields)
                self._capacity.acquire_nowait()
            except trio.WouldBlock:
                await self._capacity.acquire()
            try:
                if acceptor is not None:
                    stream: trio.abc.Stream = await acceptor.accept()
                else:
                    stream = await listener.accept()
            except OSError as exc:
                self._capacity.release()
                if self._on_accept_error is not None:
                    self._on_accept_error(exc)
                if exc.errno in ACCEPT_CAPACITY_ERRNOS:
                    logger.log(
                        logging.DEBUG if failing else logging.ERROR,
                        "accept failed (%s); retrying in %.1fs",
                        errno.errorcode.get(exc.errno or 0, exc.errno),
                        ACCEPT_CAPACITY_SLEEP,
                    )
                    failing = True
                    await trio.sleep(ACCEPT_CAPACITY_SLEEP)
                    continue
                raise
            except BaseException:
                self._capacity.release()
                raise
            if failing:
                logger.warning("accept works again")
                failing = False
            nursery.start_soon(
                self._serve_connection,
                stream,
                local_path,
                ssl_context,
                proxy_protocol,
                acceptor is not None and acceptor.keepalive_set,
            )

    async def _serve_connection(
        self,
        stream: trio.abc.Stream,
        local_path: str | None,
        ssl_context: ssl.SSLContext | None,
        proxy_protocol: ProxyProtocol | None = None,
        keepalive_set: bool = False,
    ) -> None:
        if not keepalive_set:  # else inherited from the listening socket
            set_tcp_keepalive(stream, self.limits)
        proxy_header = None
        if proxy_protocol is not None:
            # Before the Connection exists: its hooks must see the client.
            try:
                proxy_header = await proxy_protocol.read_header(stream)
            except BaseException as exc:  # refused, or cancelled at shutdown
                self._capacity.release()
                await trio.aclose_forcefully(stream)
                if isinstance(exc, ProxyProtocolError):
                    return
                raise
        if ssl_context is not None:
            stream = wrap_server_side(stream, ssl_context)
        connection = self._new_connection(stream, local_path, proxy_header)
        connection._keepalive = self.limits  # what its TCP socket was given
        await self._drive(connection)

    def _new_connection(
        self,
        stream: trio.abc.Stream,
        local_path: str | None = None,
        proxy_header: ProxyHeader | None = None,
    ) -> Connection:
        """A Connection of this server for ``stream``: its id, hooks, the
        one shutdown event, and the registry's close callback. Its identity
        (addresses, credentials) comes from the socket, if any; a caller may
        set it before :meth:`_drive`."""
        return Connection(
            next(self._ids),
            stream,
            self._state_hooks,
            local_path,
            self._forget,
            self._shutdown_started,
            proxy_header=proxy_header,
        )

    async def _drive(self, connection: Connection) -> None:
        """Serve ``connection`` (registered here) until the HTTP layer is
        done with it: closed, or hijacked and now its owner's. The caller
        holds one unit of ``_capacity``; it is released when the connection
        closes (``_forget``)."""
        self._connections[connection.id] = connection
        stream = connection.stream
        try:
            if self._on_connect is not None:
                self._on_connect(connection)
            if isinstance(stream, trio.SSLStream):
                timeout = self.limits.tls_handshake_timeout
                if not await handshake(stream, connection, timeout):
                    return
            driver: ConnectionLoop
            if self.http2:
                chosen = await choose_protocol(self, connection)
                if chosen is None:
                    return
                driver = chosen
            else:
                driver = HTTPConnection(self, connection)
            connection._driver = driver
            if self.shutting_down:
                driver.request_shutdown()
            await driver.serve()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            logger.debug("connection %d failed: %r", connection.id, exc)
        except Exception:
            logger.exception("connection %d failed", connection.id)
        finally:
            if connection.state not in (ConnState.HIJACKED, ConnState.CLOSED):
                with trio.CancelScope(shield=True):
                    await trio.aclose_forcefully(stream)
                connection._set_state(ConnState.CLOSED)
