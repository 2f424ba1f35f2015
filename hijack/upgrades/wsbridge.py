"""TCP through WebSockets: a bridge in the manner of websockify.

:class:`WebSocketBridge` is a handler that accepts WebSocket connections and
relays each one to a new TCP connection: the bytes of every binary message
go to the upstream, the bytes the upstream sends come back as binary
messages. Browser clients written for websockify (noVNC) work unchanged:
the ``binary`` subprotocol is accepted. The upstream is one fixed address,
or picked per connection by a token (``?token=NAME``) from a
:class:`TargetFile`, where every destination is checked by the same
:class:`~hijack.upgrades.connect.ConnectPolicy` as a CONNECT tunnel.

:class:`WebSocketStream` is the piece in the middle: a trio stream over a
:class:`~hijack.upgrades.websocket.WebSocket`, so :func:`hijack.relay` moves
the bytes with its backpressure, counters and idle timeout. The client side
(``hijack forward --mode websocket``) uses it too.

A WebSocket has no half-close (RFC 6455 5.5.1: after a close frame, no data
either way), so a tunnel through one ends as a whole: when one TCP side
sends EOF, the WebSocket is closed (1000) after every byte before the EOF
went through, and the other side gets those bytes, then EOF. A client that
half-closes and still waits for an answer (``nc -N``) gets no answer through
such a tunnel; websockify behaves the same.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from urllib.parse import parse_qs

import trio

from .. import HTTPError, RelayStats, Request, Response, join_host_port, relay
from ..tunnel._upstream import ProxyVersion
from ..tunnel.lifecycle import Outcome, TunnelHook, TunnelLife
from ..tunnel.policy import (
    ConnectError,
    ConnectPolicy,
    IPAddress,
    parse_connect_target,
)
from .websocket import (
    PING_INTERVAL,
    PING_TIMEOUT,
    ConnectionClosed,
    WebSocket,
    WebSocketHandshakeError,
    accept_websocket,
    check_websocket_request,
    is_websocket_request,
)

__all__ = [
    "SUBPROTOCOL",
    "TargetFile",
    "WebSocketBridge",
    "WebSocketStream",
    "parse_targets",
]

logger = logging.getLogger("hijack.wsbridge")

#: websockify's name for "raw bytes in binary messages" (its other one,
#: ``base64`` in text messages, predates binary support in browsers).
SUBPROTOCOL = "binary"

UNSUPPORTED_DATA = 1003  # RFC 6455 7.4.1: a text message on a byte tunnel

Dial = Callable[[str, int], Awaitable[trio.abc.Stream]]


class WebSocketStream(trio.abc.HalfCloseableStream):
    """A byte stream over a WebSocket: ``send_all(data)`` sends one binary
    message, ``receive_some()`` returns the bytes of binary messages in order
    (a message larger than ``max_bytes`` is handed out in pieces) and ``b""``
    once the WebSocket is closed. Empty messages carry nothing and are
    skipped. A text message closes the WebSocket with 1003 and reads as
    EOF. ``aclose()`` closes the WebSocket with 1000, and so does
    ``send_eof()``: a WebSocket cannot half-close, so the end of our data is
    the end of the WebSocket (messages already received can still be read).

    Backpressure is the WebSocket's: ``receive_some`` reads the socket only
    when called, so a caller that stops reading stops the peer; memory is
    bounded by one message (the WebSocket's ``max_message_size``).

    ``on_eof`` (optional) is called once, when ``receive_some`` first
    reports EOF. Sending on a closed WebSocket raises
    ``trio.BrokenResourceError``, as a stream whose peer went away does.
    """

    def __init__(
        self, websocket: WebSocket, *, on_eof: Callable[[], None] | None = None
    ) -> None:
        self.websocket = websocket
        # The message being handed out, and how much of it is out already.
        self._pending = b""
        self._offset = 0
        self._on_eof = on_eof

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        if self._pending:
            await trio.lowlevel.checkpoint()  # a receive is always one
        while not self._pending:
            try:
                message = await self.websocket.receive()
            except ConnectionClosed:
                if self._on_eof is not None:
                    on_eof, self._on_eof = self._on_eof, None
                    on_eof()
                return b""
            if isinstance(message, str):
                await self.websocket.close(UNSUPPORTED_DATA, "binary messages only")
                continue  # closed now: the next receive() says so
            self._pending, self._offset = message, 0
        start, size = self._offset, len(self._pending)
        end = size if max_bytes is None else min(size, start + max_bytes)
        whole = start == 0 and end == size  # the usual case: no copy
        chunk = self._pending if whole else self._pending[start:end]
        if end == size:
            self._pending, self._offset = b"", 0  # hold no message longer
        else:
            self._offset = end
        return chunk

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self.websocket.send(bytes(data))
        except ConnectionClosed as exc:
            raise trio.BrokenResourceError(str(exc)) from None

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()

    async def send_eof(self) -> None:
        await self.websocket.close()

    async def aclose(self) -> None:
        await self.websocket.close()


# -- where a tunnel goes -------------------------------------------------------


def parse_targets(text: str, source: str = "<targets>") -> dict[str, tuple[str, int]]:
    """Read a websockify token file: one ``token: host:port`` per line
    (``[v6]:port`` for IPv6), ``#`` comments and blank lines ignored.

    Raises ``ValueError`` naming ``source`` and the line for a bad line or a
    token given twice."""
    targets: dict[str, tuple[str, int]] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        token, sep, target = line.partition(":")
        token, target = token.strip(), target.strip()
        where = f"{source}:{number}"
        if not sep or not token or any(c.isspace() for c in token):
            raise ValueError(f"{where}: expected 'token: host:port', got {line!r}")
        if token in targets:
            raise ValueError(f"{where}: token {token!r} given twice")
        try:
            targets[token] = parse_connect_target(target)
        except ConnectError as exc:
            raise ValueError(f"{where}: {exc.reason}") from None
    return targets


class TargetFile:
    """Tokens and their ``host:port`` targets, from a websockify token file.

    Read at construction (a bad file raises ``ValueError`` at once) and read
    again when the file changes (its mtime or size), as websockify does, so
    tokens can be added while the bridge runs. A change that does not parse
    is logged and the previous table kept: a half-written file does not take
    the tunnels down."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._stamp: tuple[int, int] | None = self._stat()
        self._targets = parse_targets(self.path.read_text(), str(self.path))

    def _stat(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_mtime_ns, stat.st_size

    def lookup(self, token: str) -> tuple[str, int] | None:
        """The target of ``token`` (None if unknown), after re-reading the
        file if it changed. Blocking (a stat, maybe a read): call it from a
        thread."""
        problem: Exception | None = None
        try:
            stamp: tuple[int, int] | None = self._stat()
        except OSError as exc:
            stamp, problem = None, exc  # gone: said once, until it is back
        # The stamp is recorded first: a broken version is reported once,
        # not at every handshake until the file changes again.
        if stamp != self._stamp:
            self._stamp = stamp
            if problem is None:
                try:
                    text = self.path.read_text()
                    self._targets = parse_targets(text, str(self.path))
                except (OSError, ValueError) as exc:
                    problem = exc
            if problem is not None:
                logger.warning("keeping the previous targets: %s", problem)
        return self._targets.get(token)


class WebSocketBridge:
    """A handler relaying every WebSocket connection to a new TCP connection.

    ``upstream``: the ``(host, port)`` every connection goes to; or
    ``targets``: a :class:`TargetFile` whose token the client names in the
    query (``ws://bridge/?token=vnc1``), each target checked by ``policy``
    (default: the CONNECT default, port 443 to global addresses only) and
    dialled at a checked address. Exactly one of the two.

    Answers before the WebSocket handshake: a plain request 426 (with
    ``Upgrade: websocket``); no ``token`` 400, an unknown one 404, a target
    the policy refuses 403; an upstream that refuses 502, one slower than
    ``connect_timeout`` 504. Subprotocols: ``binary`` is chosen when offered;
    a client that offers only others (websockify's ``base64``) gets 400.
    ``max_message_size``, ``allowed_origins``, ``close_timeout``,
    ``ping_interval`` and ``ping_timeout`` (keepalive: an idle tunnel behind
    nginx would otherwise be cut after its 60 s ``proxy_read_timeout``) go to
    :func:`~hijack.upgrades.websocket.accept_websocket`; compression is never
    negotiated (tunnelled bytes are mostly compressed or encrypted already).

    Resource handling: the upstream is dialled before the ``101``, so a
    client only sees a WebSocket when there is something at the other end.
    :func:`hijack.relay` then owns both and closes both: when either side
    ends (see the module docstring), on ``idle_timeout`` with no byte either
    way, on error (the WebSocket is then cut without a close frame), or on a
    cancel (the server's shutdown grace). After the WebSocket closed, the
    upstream has EOF and ``close_timeout`` seconds to close its side before
    it is cut. One INFO line per connection on ``hijack.wsbridge``.
    ``send_proxy_protocol=1`` or ``2`` begins every upstream connection with
    a PROXY protocol header of that version naming the client.
    """

    def __init__(
        self,
        upstream: tuple[str, int] | None = None,
        *,
        targets: TargetFile | None = None,
        policy: ConnectPolicy | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float | None = 300.0,
        max_message_size: int = 1024 * 1024,
        allowed_origins: Collection[str | None] | None = None,
        close_timeout: float = 5.0,
        ping_interval: float | None = PING_INTERVAL,
        ping_timeout: float | None = PING_TIMEOUT,
        dial: Dial = trio.open_tcp_stream,
        send_proxy_protocol: ProxyVersion | None = None,
        on_tunnel: TunnelHook | None = None,
    ) -> None:
        if (upstream is None) == (targets is None):
            raise ValueError("give either upstream or targets, not both or neither")
        if policy is not None and targets is None:
            raise ValueError("policy checks targets; a fixed upstream is trusted")
        self.upstream = upstream
        self.targets = targets
        self.policy = policy if policy is not None else ConnectPolicy()
        self.max_message_size = max_message_size
        self.allowed_origins = allowed_origins
        self.close_timeout = close_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self._dial = dial

        async def dial_checked(address: IPAddress, port: int) -> trio.abc.Stream:
            return await dial(str(address), port)

        self.life = TunnelLife(
            "wsbridge",
            logger,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            send_proxy_protocol=send_proxy_protocol,
            on_tunnel=on_tunnel,
            dial=dial_checked,
            open_stream=dial,
        )

    #: WebSockets over HTTP/2 too (RFC 8441): a ``Server(http2=True)``
    #: advertises Extended CONNECT for this handler.
    serves_extended_connect = True

    def __repr__(self) -> str:
        if self.upstream is not None:
            return f"<WebSocketBridge upstream={join_host_port(*self.upstream)}>"
        assert self.targets is not None
        return f"<WebSocketBridge targets={self.targets.path}>"

    async def __call__(self, request: Request) -> Response | None:
        if not is_websocket_request(request):
            return HTTPError(
                426,
                "this is a WebSocket bridge: connect with a WebSocket client",
                [
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Version", "13"),
                ],
            ).response()
        record = self.life.begin(request.connection, "-")
        try:
            # Every check before the upstream sees a connection: a refused
            # Origin must not reach it (a VNC server may count such connects
            # as failed logins).
            check_websocket_request(request, allowed_origins=self.allowed_origins)
            _check_subprotocols(request)
            host, port = await self._destination(request)
            record.target = join_host_port(host, port)

            async def answer(upstream: trio.abc.Stream) -> trio.abc.Stream:
                websocket = await accept_websocket(
                    request,
                    subprotocols=[SUBPROTOCOL],
                    max_message_size=self.max_message_size,
                    allowed_origins=self.allowed_origins,
                    close_timeout=self.close_timeout,
                    # Tunnelled bytes (TLS, SSH, VNC) are mostly compressed or
                    # encrypted already: deflate would cost CPU and zlib
                    # state per connection for next to nothing.
                    compression=None,
                    ping_interval=self.ping_interval,
                    ping_timeout=self.ping_timeout,
                )
                return WebSocketStream(websocket)

            await self.life.run(
                record,
                request.connection,
                host=host,
                port=port,
                # A fixed upstream is the operator's: dialled as configured.
                policy=None if self.upstream is not None else self.policy,
                user=None,
                answer=answer,
                own_relay=self._relay,
            )
        except WebSocketHandshakeError as exc:
            record.refuse(exc.status, str(exc))
            return exc.response()
        except HTTPError as exc:
            record.refuse(exc.status, exc.detail)
            raise
        except ConnectError as exc:
            record.refuse(exc.status, exc.reason)
            # No OS detail, nor what a name resolved to: the log line has them.
            detail = _FAILURES.get(exc.status, "{}").format(record.target)
            raise HTTPError(exc.status, detail) from None
        finally:
            self.life.end(record)
        return None

    async def _destination(self, request: Request) -> tuple[str, int]:
        """Where this connection goes: the fixed upstream, or the target of
        the token the client names."""
        if self.upstream is not None:
            return self.upstream
        assert self.targets is not None
        tokens = parse_qs(request.query).get("token", [])
        if len(tokens) != 1 or not tokens[0]:
            raise HTTPError(400, "name one target: ?token=NAME")
        target = await trio.to_thread.run_sync(self.targets.lookup, tokens[0])
        if target is None:
            raise HTTPError(404, "unknown token")
        return target

    async def _relay(
        self, client: trio.abc.Stream, upstream: trio.abc.Stream, stats: RelayStats
    ) -> tuple[Outcome, str]:
        assert isinstance(client, WebSocketStream)
        websocket = client.websocket
        # ``async with``: the server's graceful shutdown closes with 1001 (and
        # the upstream then gets its EOF like after any close).
        async with websocket:
            # Once the WebSocket has closed, the upstream has its EOF; give it
            # close_timeout to close its side (it usually does at once), then
            # cut it.
            with trio.CancelScope() as linger:

                def websocket_ended() -> None:
                    linger.deadline = trio.current_time() + self.close_timeout

                stream = WebSocketStream(websocket, on_eof=websocket_ended)
                await relay(
                    stream, upstream, idle_timeout=self.life.idle_timeout, stats=stats
                )
        if stats.timed_out:
            return Outcome.IDLE_TIMEOUT, ""
        if linger.cancelled_caught:
            return Outcome.OK, "upstream cut after close_timeout"
        return Outcome.OK, f"close {websocket.close_code}"


_FAILURES = {
    403: "destination not allowed",
    502: "cannot connect to {}",
    504: "{} did not answer in time",
}


def _check_subprotocols(request: Request) -> None:
    offered = [
        name.strip()
        for value in request.headers.get_all("sec-websocket-protocol")
        for name in value.split(",")
        if name.strip()
    ]
    if offered and SUBPROTOCOL not in offered:
        raise HTTPError(
            400, f"subprotocols {offered} not supported: offer {SUBPROTOCOL!r}"
        )
