"""Connection identity and the connection state machine.

A :class:`Connection` is created for every accepted stream and lives until the
stream is closed: by the HTTP layer (state CLOSED) or, after a hijack, by
whoever owns the hijacked stream. The state rules are Go's ``ConnState``:

    NEW -> ACTIVE | CLOSED
    ACTIVE -> IDLE | HIJACKED | CLOSED
    IDLE -> ACTIVE | CLOSED
    HIJACKED, CLOSED: terminal

HIJACKED is the last *HTTP* state. Unlike Go, the server keeps tracking a
hijacked connection (``hijacked_open``) until its owner closes it, so the
counts of open HTTP and open hijacked connections are always exact.
"""

from __future__ import annotations

import enum
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ._plain_socket import find_socket

if TYPE_CHECKING:
    from ._config import Limits
    from ._proxyproto import ProxyHeader

logger = logging.getLogger("hijack")

__all__ = [
    "ConnState",
    "Connection",
    "PeerCredentials",
    "PeerInfo",
    "StateHook",
    "TLSInfo",
]


class ConnState(enum.Enum):
    """A connection's state, as Go's ``http.ConnState`` (see the module doc
    for the transitions). ``HIJACKED`` and ``CLOSED`` are final."""

    NEW = "new"
    ACTIVE = "active"
    IDLE = "idle"
    HIJACKED = "hijacked"
    CLOSED = "closed"


_ALLOWED: dict[ConnState, frozenset[ConnState]] = {
    ConnState.NEW: frozenset({ConnState.ACTIVE, ConnState.CLOSED}),
    ConnState.ACTIVE: frozenset({ConnState.IDLE, ConnState.HIJACKED, ConnState.CLOSED}),
    ConnState.IDLE: frozenset({ConnState.ACTIVE, ConnState.CLOSED}),
    ConnState.HIJACKED: frozenset(),
    ConnState.CLOSED: frozenset(),
}

StateHook = Callable[["Connection", ConnState], None]


class _Driver(Protocol):
    """What the server asks of the HTTP driver of a connection."""

    def request_shutdown(self) -> None: ...


@dataclass(frozen=True, slots=True)
class PeerCredentials:
    """The peer process of a UNIX socket, as the kernel saw it at connect()."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True, slots=True)
class TLSInfo:
    """What the TLS handshake settled: protocol ``version`` ("TLSv1.3"),
    ``cipher`` name, ``alpn_protocol``, the ``server_name`` the client asked
    for with SNI (None if it sent none), and the client's
    ``peer_certificate`` (``getpeercert()``; None unless the context asks
    for client certificates)."""

    version: str | None
    cipher: str | None
    alpn_protocol: str | None
    server_name: str | None
    peer_certificate: dict[str, Any] | None


def read_peer_credentials(sock: trio.socket.SocketType) -> PeerCredentials | None:
    """SO_PEERCRED of a UNIX socket; None for other sockets (or off Linux)."""
    if sock.family != getattr(socket, "AF_UNIX", None):
        return None
    so_peercred = getattr(socket, "SO_PEERCRED", None)
    if so_peercred is None:  # pragma: no cover - not Linux
        return None
    fmt = "3i"
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, so_peercred, struct.calcsize(fmt))
    except OSError:
        return None
    pid, uid, gid = struct.unpack(fmt, raw)
    return PeerCredentials(pid=pid, uid=uid, gid=gid)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """Who is at the other end of a stream that has no socket to ask (an
    in-memory test stream, a stream your own transport made).

    A transport stream with a ``describe_peer(connection) -> PeerInfo``
    method is asked once, when its Connection is made and before any hook
    sees it; the Connection then shows these fields (``remote_address`` is
    also its ``peer_address``: no balancer; ``tls`` is what
    ``connection.tls`` answers). Unset fields are what a memory stream
    gives: None. ``hijack.testing``'s streams are such streams."""

    remote_address: Any = None
    local_address: Any = None
    peer_credentials: PeerCredentials | None = None
    tls: TLSInfo | None = None


class Connection:
    """One accepted stream, reachable from every request as ``request.connection``.

    Attributes:
      id: unique within the server, never reused.
      local_address / remote_address: ``(host, port)`` for TCP; for UNIX
        sockets ``local_address`` is the listening socket's path and
        ``remote_address`` the address the peer bound, which for a client
        socket is almost always unnamed: ``""`` (identify UNIX peers by
        ``peer_credentials`` instead). Behind a PROXY protocol header,
        ``remote_address`` is the client the balancer saw.
      peer_address: the socket's own peer (the balancer, behind one).
      proxy_header: the :class:`ProxyHeader` the connection began with, or
        None (see :class:`ProxyProtocol`).
      peer_credentials: pid/uid/gid of the peer on UNIX sockets, else None.
      socket: the underlying socket (for getsockopt), None for memory streams.
      context: a dict for per-connection data (Go's ConnContext), filled by the
        server's ``on_connect`` hook and free for handlers to use.
    """

    __slots__ = (
        "_closed",
        "_closed_event",
        "_cut",
        "_described_tls",
        "_driver",
        "_hijacked",
        "_hooks",
        "_keepalive",
        "_on_close",
        "_server_name",
        "_shutdown_requested",
        "_state",
        "context",
        "id",
        "local_address",
        "peer_address",
        "peer_credentials",
        "proxy_header",
        "remote_address",
        "socket",
        "stream",
    )

    def __init__(
        self,
        id: int,
        stream: trio.abc.Stream,
        hooks: tuple[StateHook, ...] = (),
        local_path: str | None = None,
        on_close: Callable[[Connection], None] | None = None,
        shutdown_requested: trio.Event | None = None,
        proxy_header: ProxyHeader | None = None,
    ) -> None:
        self.id = id
        self.stream = stream
        self.socket = find_socket(stream)
        self.context: dict[str, Any] = {}
        self.local_address: Any = local_path
        self.peer_address: Any = None
        self.proxy_header = proxy_header
        self.peer_credentials: PeerCredentials | None = None
        sock = self.socket
        if sock is not None:
            try:
                self.peer_address = sock.getpeername()
                if local_path is None:
                    self.local_address = sock.getsockname()
            except OSError:
                pass
            self.peer_credentials = read_peer_credentials(sock)
        # Set before the NEW hook runs: hooks judge the balancer's client.
        self.remote_address: Any = (
            proxy_header.source
            if proxy_header is not None and proxy_header.source is not None
            else self.peer_address
        )
        self._described_tls: TLSInfo | None = None
        transport = (
            stream.transport_stream if isinstance(stream, trio.SSLStream) else stream
        )
        describe_peer = getattr(transport, "describe_peer", None)
        if describe_peer is not None:  # no socket to ask: see PeerInfo
            peer: PeerInfo = describe_peer(self)
            self.remote_address = self.peer_address = peer.remote_address
            self.local_address = peer.local_address
            self.peer_credentials = peer.peer_credentials
            self._described_tls = peer.tls
        self._state = ConnState.NEW
        self._hooks = hooks
        # The keepalive settings the server gave this connection's TCP
        # socket (its Limits), or None: then copy_tcp_keepalive reads them.
        self._keepalive: Limits | None = None
        # Who holds the stream: the HTTP driver (anything with a
        # ``request_shutdown()``) while it speaks HTTP, then the hijacked
        # stream (any AsyncResource: a Hijacked, or whatever took it over)
        # until its owner reports the close with ``_mark_hijacked_closed``.
        self._driver: _Driver | None = None
        self._hijacked: trio.abc.AsyncResource | None = None
        self._server_name: str | None = None
        self._closed = False
        self._cut = False
        # Made on demand: an Event per connection is memory every idle
        # tunnel would pay for, and few callers wait for the close.
        self._closed_event: trio.Event | None = None
        self._on_close = on_close
        # The server's one shutdown signal, shared by all its connections.
        self._shutdown_requested = (
            trio.Event() if shutdown_requested is None else shutdown_requested
        )
        self._notify(ConnState.NEW)

    def __repr__(self) -> str:
        return (
            f"<Connection id={self.id} state={self._state.value} "
            f"remote={self.remote_address!r}>"
        )

    @property
    def state(self) -> ConnState:
        """The last state reported to ``on_state`` hooks."""
        return self._state

    @property
    def shutdown_requested(self) -> trio.Event:
        """Set when the server starts a graceful shutdown: one event for the
        whole server, shared by every connection. HTTP connections need not
        watch it (the server ends them); owners of hijacked streams wait on
        it to say goodbye in their own protocol."""
        return self._shutdown_requested

    @property
    def hijacked_open(self) -> bool:
        """True while a hijacked stream of this connection is not closed."""
        return self._hijacked is not None

    @property
    def cut(self) -> bool:
        """True once the server's shutdown grace ran out with this
        connection still open: the server then closes its hijacked stream
        and cancels its handler. Set before either, so the owner of a
        hijacked stream can tell that end (ended from outside) from a peer
        that went away."""
        return self._cut

    @property
    def is_open(self) -> bool:
        """False once the stream is closed, by the server or by the owner of
        the hijacked stream."""
        return not self._closed

    @property
    def tls(self) -> TLSInfo | None:
        """TLS details once the handshake is done, None on plain streams."""
        stream = self.stream
        if not isinstance(stream, trio.SSLStream):
            return self._described_tls
        try:  # trio forwards these to the SSLObject once the handshake is done
            cipher = stream.cipher()
            return TLSInfo(
                version=stream.version(),
                cipher=cipher[0] if cipher else None,
                alpn_protocol=stream.selected_alpn_protocol(),
                # On the server side trio's server_hostname is only the
                # constructor argument: the SNI is recorded at the handshake.
                server_name=self._server_name,
                peer_certificate=stream.getpeercert() or None,
            )
        except trio.NeedHandshakeError:
            return None

    async def wait_closed(self) -> None:
        """Wait until the connection's stream is closed, whoever owns it."""
        if self._closed:
            await trio.lowlevel.checkpoint()
            return
        if self._closed_event is None:
            self._closed_event = trio.Event()
        await self._closed_event.wait()

    # -- reported by the server, the HTTP driver and the hijacked stream ----

    def _set_state(self, new: ConnState) -> None:
        if new is self._state:
            return
        if new not in _ALLOWED[self._state]:
            raise RuntimeError(f"bad state transition {self._state} -> {new}")
        self._state = new
        if new is not ConnState.ACTIVE and new is not ConnState.IDLE:
            self._driver = None  # HTTP is over either way
        self._notify(new)
        if new is ConnState.CLOSED:
            self._set_closed()

    def _hijack(self, owner: trio.abc.AsyncResource) -> None:
        """The HTTP layer handed the stream to ``owner`` (a Hijacked): the
        connection stays open until the owner reports its close."""
        self._hijacked = owner
        self._set_state(ConnState.HIJACKED)

    def _set_hijacked_owner(self, owner: trio.abc.AsyncResource) -> None:
        """Someone else took the hijacked stream over (the relay hub, say):
        the server closes ``owner`` at the end of the shutdown grace, and
        ``owner`` reports the close with :meth:`_mark_hijacked_closed`."""
        if self._hijacked is not None:
            self._hijacked = owner

    def _mark_hijacked_closed(self) -> None:
        """The hijacked stream was closed: its owner is done."""
        self._hijacked = None
        self._set_closed()

    def _set_closed(self) -> None:
        if not self._closed:
            self._closed = True
            if self._closed_event is not None:
                self._closed_event.set()
            if self._on_close is not None:
                self._on_close(self)

    def _notify(self, state: ConnState) -> None:
        # A broken hook must not break the connection: log it and go on.
        for hook in self._hooks:
            try:
                hook(self, state)
            except Exception:
                logger.exception("state hook %r failed on %r", hook, state)
