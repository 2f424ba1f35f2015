"""Reverse tunnels, the client side: publish local services on a hijack
server's ports (like ``ssh -R``).

:class:`ReverseClient` keeps one control connection per
:class:`ReverseSpec` (the port to publish and the local target), a pool of
idle data connections, and opens a claimed data connection whenever the
server asks for one; every data connection that gets a public connection is
relayed to the target. After any loss it publishes again, with exponential
back-off and jitter. The protocol is ``docs/reference/reverse-protocol.md``;
the server side is :class:`hijack.upgrades.reverse.ReverseTunnels`.
"""

from __future__ import annotations

import base64
import logging
import random
import ssl
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import h11
import trio

from .. import (
    Hub,
    ReplayStream,
    encode_proxy_header,
    join_host_port,
    set_tcp_keepalive,
    split_host_port,
)
from ..tunnel._http_tunnel import TunnelError, handshake
from ..tunnel.bind_rules import format_bind, parse_bind
from ..tunnel.reverse_wire import (
    CLAIM_HEADER,
    PROTOCOL,
    PUBLISH_HEADER,
    SESSION_HEADER,
    WS_SUBPROTOCOL,
    LineReader,
    ProtocolError,
    encode,
)
from ._relaying import relay_through, start_hub

if TYPE_CHECKING:
    from ..tunnel.parent_proxy import ParentProxy

__all__ = ["ReverseClient", "ReverseSpec", "Via", "parse_spec"]

logger = logging.getLogger("hijack.reverse.client")

#: Back-off after a loss: the first retry waits about FIRST_DELAY, each next
#: one twice as long up to ``max_delay``; the wait is drawn in [d/2, d] (jitter:
#: clients cut off together do not come back together).
FIRST_DELAY = 0.25
MAX_DELAY = 30.0
#: Until the server's ``published`` says otherwise: how long the server may
#: stay silent (ping interval + ping timeout).
DEFAULT_SILENCE = 30.0


@dataclass(frozen=True, slots=True)
class ReverseSpec:
    """Publish ``remote`` (bind host, port on the server) and relay every
    connection to it to ``target`` (host, port, reached from the client)."""

    remote: tuple[str, int]
    target: tuple[str, int]

    def __str__(self) -> str:
        return f"{format_bind(*self.remote)} -> {join_host_port(*self.target)}"


def parse_spec(text: str) -> ReverseSpec:
    """``[BIND_HOST:]PORT:HOST:PORT`` (``ssh -R``'s order) -> a spec."""
    remote_text, target_text = _split_spec(text)
    return ReverseSpec(parse_bind(remote_text), split_host_port(target_text))


def _split_spec(text: str) -> tuple[str, str]:
    # The target is the last HOST:PORT (HOST may be [v6]); the rest is the bind.
    if text.endswith("]") or ":" not in text:
        raise ValueError(f"expected [BIND_HOST:]PORT:HOST:PORT, got {text!r}")
    head, _, target_port = text.rpartition(":")
    if head.endswith("]"):
        start = head.rfind("[")
        remote, target_host = head[: max(start - 1, 0)], head[start:]
    else:
        remote, _, target_host = head.rpartition(":")
    if not remote or not target_host:
        raise ValueError(f"expected [BIND_HOST:]PORT:HOST:PORT, got {text!r}")
    return remote, f"{target_host}:{target_port}"


@dataclass(frozen=True, slots=True)
class Via:
    """Where the server is: ``http://``, ``https://``, ``ws://`` or ``wss://``
    URL (a bare ``HOST:PORT`` is ``http://``)."""

    scheme: Literal["http", "https", "ws", "wss"]
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, text: str) -> Via:
        if "://" not in text:
            text = f"http://{text}"
        url = urllib.parse.urlsplit(text)
        scheme = url.scheme.lower()
        if scheme not in ("http", "https", "ws", "wss"):
            raise ValueError(f"via must be http(s):// or ws(s)://, not {text!r}")
        if not url.hostname:
            raise ValueError(f"no host in {text!r}")
        secure = scheme in ("https", "wss")
        try:
            port = url.port or (443 if secure else 80)
        except ValueError:
            raise ValueError(f"bad port in {text!r}") from None
        path = url.path or "/"
        if url.query:
            path += f"?{url.query}"
        return cls(scheme, url.hostname, port, path)  # type: ignore[arg-type]

    @property
    def websocket(self) -> bool:
        return self.scheme in ("ws", "wss")

    @property
    def secure(self) -> bool:
        return self.scheme in ("https", "wss")

    def __str__(self) -> str:
        return f"{self.scheme}://{join_host_port(self.host, self.port)}{self.path}"


class _Lost(Exception):
    """The control connection ended; the message says why."""


class ReverseClient:
    """Publish every spec in ``specs`` through the server at ``via``.

    ``auth``: Basic credentials for every connection. ``upstream_proxy``:
    reach the server through this parent proxy (http/https via only).
    ``pool``: idle data connections kept per published port, so that a
    public connection does not wait a round trip (0: every one is claimed
    on demand). ``send_proxy_protocol``: begin each connection to the
    target with a PROXY protocol header (version 1 or 2) naming the public
    client. ``ssl_context``: for https/wss (default: the system's trust,
    which honours ``SSL_CERT_FILE``). ``on_event(kind, spec, detail)`` is
    called at each ``"published"`` and ``"lost"`` (the command prints them).

    :meth:`run` runs until cancelled. Resource handling: every connection it
    opens is closed when it returns; relays in progress end with it.
    """

    def __init__(
        self,
        via: Via | str,
        specs: Sequence[ReverseSpec],
        *,
        auth: tuple[str, str] | None = None,
        upstream_proxy: ParentProxy | None = None,
        pool: int = 2,
        send_proxy_protocol: Literal[1, 2] | None = None,
        ssl_context: ssl.SSLContext | None = None,
        connect_timeout: float = 10.0,
        max_delay: float = MAX_DELAY,
        on_event: Callable[[str, ReverseSpec, str], None] | None = None,
    ) -> None:
        self.via = via if isinstance(via, Via) else Via.parse(via)
        if not specs:
            raise ValueError("nothing to publish")
        if self.via.websocket and upstream_proxy is not None:
            raise ValueError("a ws:// or wss:// via cannot use an upstream proxy")
        if pool < 0:
            raise ValueError("pool must be >= 0")
        if send_proxy_protocol not in (None, 1, 2):
            raise ValueError("send_proxy_protocol must be 1, 2 or None")
        self.specs = list(specs)
        self.auth = auth
        self.upstream_proxy = upstream_proxy
        self.pool = pool
        self.send_proxy_protocol = send_proxy_protocol
        self.ssl_context = ssl_context
        self.connect_timeout = connect_timeout
        self.max_delay = max_delay
        self.on_event = on_event
        self._hub: Hub | None = None

    async def run(self) -> None:
        """Publish every spec and keep it published; runs until cancelled."""
        async with trio.open_nursery() as nursery:
            self._hub = await start_hub(nursery)
            for spec in self.specs:
                nursery.start_soon(self._keep_published, spec, nursery)

    # -- one spec -----------------------------------------------------------------

    async def _keep_published(self, spec: ReverseSpec, relays: trio.Nursery) -> None:
        delay = FIRST_DELAY
        while True:
            published = False

            def now_published() -> None:
                nonlocal published
                published = True

            try:
                await self._session(spec, relays, now_published)
                why = "ended"  # not reached: a session ends by raising
            except TunnelError as exc:
                why = str(exc)
            except (_Lost, ProtocolError) as exc:
                why = str(exc)
            except (OSError, trio.BrokenResourceError, trio.TooSlowError) as exc:
                why = _describe(exc)
            if published:
                delay = FIRST_DELAY
            wait = random.uniform(delay / 2, delay)
            logger.warning("%s: lost (%s); again in %.2fs", spec, why, wait)
            self._event("lost", spec, why)
            await trio.sleep(wait)
            delay = min(delay * 2, self.max_delay)

    async def _session(
        self, spec: ReverseSpec, relays: trio.Nursery, published: Callable[[], None]
    ) -> None:
        """One control connection: publish, serve, return or raise at its end."""
        remote = format_bind(*spec.remote)
        with trio.fail_after(self.connect_timeout):
            control = await self._open([(PUBLISH_HEADER, remote)])
        async with control:
            reader = LineReader(control)
            with trio.fail_after(self.connect_timeout):
                first = await reader.read()
            if first is None or first.get("type") != "published":
                raise ProtocolError(f"expected 'published' first, got {first!r}")
            session = first.get("session")
            if not isinstance(session, str):
                raise ProtocolError("'published' without a session")
            half = DEFAULT_SILENCE / 2
            silence = _number(first.get("ping_interval"), half) + _number(
                first.get("ping_timeout"), half
            )
            published()
            where = first.get("bind", remote)
            logger.info("%s: published on %s via %s", spec, where, self.via)
            self._event("published", spec, str(where))
            async with trio.open_nursery() as nursery:
                max_pool = first.get("max_pool")
                pool = self.pool
                if isinstance(max_pool, int) and 0 <= max_pool < pool:
                    pool = max_pool  # more would only be refused (429)
                for _ in range(pool):
                    nursery.start_soon(self._pool_member, spec, session, relays)
                why = await self._control(
                    spec, session, control, reader, silence, relays
                )
                nursery.cancel_scope.cancel()
        raise _Lost(why)

    async def _control(
        self,
        spec: ReverseSpec,
        session: str,
        control: trio.abc.Stream,
        reader: LineReader,
        silence: float,
        relays: trio.Nursery,
    ) -> str:
        """Serve the control connection; return why it ended."""
        async with trio.open_nursery() as claims:
            try:
                while True:
                    with trio.move_on_after(silence) as waited:
                        message = await reader.read()
                    if waited.cancelled_caught:
                        return f"the server was silent for {silence:g}s"
                    if message is None:
                        return "the server closed the control connection"
                    kind = message["type"]
                    if kind == "ping":
                        await control.send_all(encode({"type": "pong"}))
                    elif kind == "open" and isinstance(message.get("claim"), str):
                        claims.start_soon(
                            self._claimed, spec, session, message["claim"], relays
                        )
                    elif kind == "error":
                        return f"the server said: {message.get('reason')}"
            except ProtocolError as exc:
                return f"protocol error: {exc}"
            except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                return f"connection lost: {exc or type(exc).__name__}"
            finally:
                claims.cancel_scope.cancel()

    async def _pool_member(
        self, spec: ReverseSpec, session: str, relays: trio.Nursery
    ) -> None:
        """Keep one idle data connection open; hand each that gets a public
        connection to a relay, then open the next."""
        delay = FIRST_DELAY
        while True:
            try:
                with trio.fail_after(self.connect_timeout):
                    data = await self._open([(SESSION_HEADER, session)])
            except (OSError, TunnelError, trio.TooSlowError) as exc:
                logger.debug("%s: pool connection failed: %s", spec, exc)
                await trio.sleep(random.uniform(delay / 2, delay))
                delay = min(delay * 2, self.max_delay)
                continue
            delay = FIRST_DELAY
            try:
                opened = await _read_open(data)
            except BaseException:
                await trio.aclose_forcefully(data)
                raise
            if opened is None:  # the server let it go (a proxy's idle cut...)
                await trio.sleep(random.uniform(FIRST_DELAY / 2, FIRST_DELAY))
                continue
            relays.start_soon(self._serve, spec, *opened)

    async def _claimed(
        self, spec: ReverseSpec, session: str, claim: str, relays: trio.Nursery
    ) -> None:
        headers = [(SESSION_HEADER, session), (CLAIM_HEADER, claim)]
        try:
            with trio.fail_after(self.connect_timeout):
                data = await self._open(headers)
                try:
                    opened = await _read_open(data)
                except BaseException:
                    await trio.aclose_forcefully(data)
                    raise
        except (OSError, TunnelError, trio.TooSlowError, ProtocolError) as exc:
            logger.warning("%s: a claimed data connection failed: %s", spec, exc)
            return
        if opened is not None:
            relays.start_soon(self._serve, spec, *opened)

    async def _serve(
        self, spec: ReverseSpec, data: trio.abc.Stream, opening: dict[str, Any]
    ) -> None:
        """Relay one public connection (``data``) to the target."""
        peer = str(opening.get("peer", "-"))
        try:
            with trio.fail_after(self.connect_timeout):
                target: trio.abc.Stream = await trio.open_tcp_stream(*spec.target)
        except (OSError, trio.TooSlowError) as exc:
            logger.warning(
                "%s: public client %s: cannot reach the target: %s", spec, peer, exc
            )
            await trio.aclose_forcefully(data)
            return
        try:
            set_tcp_keepalive(target)
            if self.send_proxy_protocol is not None:
                header = encode_proxy_header(
                    self.send_proxy_protocol,
                    _address(peer),
                    _address(str(opening.get("local", "-"))),
                )
                await target.send_all(header)
        except (OSError, trio.BrokenResourceError) as exc:
            logger.warning("%s: the target failed: %s", spec, exc)
            await trio.aclose_forcefully(target)
            await trio.aclose_forcefully(data)
            return
        logger.debug("%s: public client %s", spec, peer)
        await relay_through(self._hub, data, target)

    # -- connections to the server ------------------------------------------------

    async def _open(
        self, headers: list[tuple[str, str]]
    ) -> trio.abc.HalfCloseableStream:
        """One connection to the server, switched to the protocol; raises
        :class:`TunnelError` when refused."""
        via = self.via
        if via.websocket:
            from ..upgrades.wsbridge import WebSocketStream
            from .wsclient import WebSocketRefused, connect_websocket

            url = f"{via.scheme}://{join_host_port(via.host, via.port)}{via.path}"
            try:
                websocket = await connect_websocket(
                    url,
                    subprotocols=[WS_SUBPROTOCOL],
                    extra_headers=headers,
                    auth=self.auth,
                    ssl_context=self._tls() if via.secure else None,
                )
            except WebSocketRefused as exc:
                raise TunnelError(exc.status, exc.reason, exc.body) from None
            if websocket.subprotocol != WS_SUBPROTOCOL:
                await websocket.close()
                raise TunnelError(101, f"the server did not select {WS_SUBPROTOCOL}")
            return WebSocketStream(websocket)
        stream: trio.abc.Stream
        if self.upstream_proxy is not None:
            stream = await self.upstream_proxy.connect(via.host, via.port)
        else:
            stream = await trio.open_tcp_stream(via.host, via.port)
        try:
            set_tcp_keepalive(stream)
            if via.secure:
                stream = trio.SSLStream(stream, self._tls(), server_hostname=via.host)
            request = h11.Request(
                method="GET",
                target=via.path,
                headers=[
                    ("Host", join_host_port(via.host, via.port)),
                    ("Connection", "Upgrade"),
                    ("Upgrade", PROTOCOL),
                    *self._auth_header(),
                    *headers,
                ],
            )
            rest = await handshake(stream, request, "upgrade", protocol=PROTOCOL)
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return ReplayStream(stream, rest)

    def _tls(self) -> ssl.SSLContext:
        # Made once: loading the system's trust store costs milliseconds,
        # and every data connection would pay it.
        if self.ssl_context is None:
            self.ssl_context = ssl.create_default_context()
        return self.ssl_context

    def _auth_header(self) -> list[tuple[str, str]]:
        if self.auth is None:
            return []
        token = base64.b64encode(f"{self.auth[0]}:{self.auth[1]}".encode()).decode()
        return [("Authorization", f"Basic {token}")]

    def _event(self, kind: str, spec: ReverseSpec, detail: str) -> None:
        if self.on_event is not None:
            self.on_event(kind, spec, detail)


async def _read_open(
    data: trio.abc.HalfCloseableStream,
) -> tuple[trio.abc.HalfCloseableStream, dict[str, Any]] | None:
    """Wait for the server's ``open`` line on a data connection: the
    stream (replaying what came behind the line) and the message; None (the
    stream closed) if it ended first."""
    reader = LineReader(data)
    try:
        message = await reader.read()
    except (ProtocolError, trio.BrokenResourceError, OSError):
        message = None
    if message is None or message.get("type") != "open":
        await trio.aclose_forcefully(data)
        return None
    rest = reader.rest()
    if isinstance(data, ReplayStream):  # one level, so the hub still sees a socket
        return ReplayStream(data.stream, data.take_buffered() + rest), message
    return (ReplayStream(data, rest) if rest else data), message


def _address(text: str) -> tuple[str, int] | None:
    try:
        return split_host_port(text)
    except ValueError:
        return None


def _number(value: object, default: float) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return default


def _describe(exc: BaseException) -> str:
    """Why a session failed, in one line. trio's stream errors carry the
    real reason (a certificate that does not verify) as their cause."""
    cause = exc.__cause__
    if isinstance(exc, trio.BrokenResourceError) and cause is not None:
        return f"{type(exc).__name__}: {_describe(cause)}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
