"""Reverse tunnels, the server side: a client publishes a port here, and
every connection to that port travels back to a service next to the client.

The protocol (``hijack-reverse/1``) is in
``docs/reference/reverse-protocol.md``; its names and framing in
:mod:`hijack.tunnel.reverse_wire`. :class:`ReverseTunnels` is a handler on
the public API: a control request (``Hijack-Reverse-Publish``) opens the
public listener and lives as long as it is published; data requests
(``Hijack-Reverse-Session``) each carry one public connection.

Who owns what: the control handler owns the listener and the public
connections it accepted until a data connection takes them; the handler of
a data connection owns its public connection from then on and relays it (or
hands both to the server's relay hub). So a tunnel that is relayed survives
its control connection, and the server's shutdown grace applies to it like
to any hijacked connection.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import trio

from .. import (
    Connection,
    Handler,
    Hijacked,
    HTTPError,
    HubTunnel,
    RelayStats,
    Request,
    Response,
    Throttle,
    format_address,
    join_host_port,
    relay,
    set_tcp_keepalive,
)
from ..tunnel.bind_rules import BindRule, allowed, format_bind, parse_bind
from ..tunnel.lifecycle import (
    Outcome,
    TunnelHook,
    TunnelLife,
    TunnelRecord,
    ended_from_outside,
)
from ..tunnel.limits import TunnelLease, TunnelLimits
from ..tunnel.policy import ConnectError
from ..tunnel.reverse_wire import (
    CLAIM_HEADER,
    PROTOCOL,
    PUBLISH_HEADER,
    SESSION_HEADER,
    UPGRADE_PREFIX,
    WS_SUBPROTOCOL,
    LineReader,
    ProtocolError,
    encode,
)
from ..tunnel.users import User, Users, authenticate
from .websocket import (
    WebSocketHandshakeError,
    accept_websocket,
    is_websocket_request,
)
from .wsbridge import WebSocketStream

__all__ = ["ReverseRegistry", "ReverseTunnels", "is_reverse_request"]

logger = logging.getLogger("hijack.reverse")

Transport = Literal["http", "websocket"]
UPGRADE_HEADERS = [("Connection", "Upgrade"), ("Upgrade", PROTOCOL)]
NO_THROTTLE: tuple[Throttle | None, Throttle | None] = (None, None)
#: accept() errors that mean "out of something for now", not "listener broken":
#: logged, then accepting resumes after a pause (trio's serve_listeners does
#: the same).
CAPACITY_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
CAPACITY_PAUSE = 0.1


def _offered_subprotocols(request: Request) -> list[str]:
    return [
        name.strip()
        for value in request.headers.get_all("sec-websocket-protocol")
        for name in value.split(",")
        if name.strip()
    ]


def is_reverse_request(request: Request) -> Transport | None:
    """``"http"`` for an ``Upgrade: hijack-reverse/N`` request, ``"websocket"``
    for a WebSocket offering ``hijack-reverse.v1``, else None."""
    if any(t.startswith(UPGRADE_PREFIX) for t in request.headers.tokens("upgrade")):
        return "http"
    if is_websocket_request(request) and WS_SUBPROTOCOL in _offered_subprotocols(
        request
    ):
        return "websocket"
    return None


def _token_key(token: str) -> bytes:
    # Sessions are looked up by a hash of the token: a dict lookup compares
    # hashes first, so nothing about the real tokens leaks by timing.
    return hashlib.sha256(token.encode("utf-8", "replace")).digest()


def _peer_host(address: Any) -> str:
    return str(address[0]) if isinstance(address, tuple) and address else "-"


@dataclass(eq=False, slots=True)
class _Public:
    """A public connection on its way to a data connection."""

    stream: trio.SocketStream | None  # None once someone else owns it
    peer: Any
    local: Any
    lease: TunnelLease | None
    started: float
    taken: trio.Event = field(default_factory=trio.Event)


@dataclass(eq=False, slots=True)
class _Parked:
    """A pool data connection waiting for a public connection: its one task
    reads the connection (to see the client go) inside ``waiting``, which
    whoever hands it a public connection, or ends the tunnel, cancels.
    (One task per idle connection, not three: a published port keeps a
    pool of them.)"""

    waiting: trio.CancelScope = field(default_factory=trio.CancelScope)
    public: _Public | None = None

    def give(self, public: _Public | None) -> None:
        self.public = public
        self.waiting.cancel()


class _Published:
    """One published port: its listener, session, pool and pending claims."""

    def __init__(
        self,
        bind: tuple[str, int],
        owner: str,
        user: User | None,
        session: str,
        listener: trio.SocketListener,
        stream: trio.abc.Stream,
    ) -> None:
        self.bind = bind
        self.owner = owner
        self.user = user
        self.session = session
        self.listener = listener
        self.stream = stream
        self.parked: collections.deque[_Parked] = collections.deque()
        self.pool_size = 0  # pool connections accepted or being accepted
        self.pending: dict[str, _Public] = {}
        self.closed = trio.Event()
        self.heard = trio.Event()  # any message from the client since the ping
        self._send_lock = trio.Lock()

    @property
    def where(self) -> str:
        return format_bind(*self.bind)

    async def send(self, message: dict[str, Any], timeout: float) -> None:
        """One control message; a client that does not read within
        ``timeout`` is as gone as one that does not answer a ping."""
        with trio.fail_after(timeout):
            async with self._send_lock:
                await self.stream.send_all(encode(message))

    def take_parked(self) -> _Parked | None:
        return self.parked.popleft() if self.parked else None


class ReverseRegistry:
    """The ports published on this server, by address and by session.

    Kept apart from the handler so that a rebuilt handler (the command's
    SIGHUP reload) sees the tunnels its predecessor published.
    ``on_change(count)`` is called with the number of published ports each
    time a port is published or unpublished (a metrics gauge)."""

    def __init__(self, on_change: Callable[[int], None] | None = None) -> None:
        self.by_bind: dict[tuple[str, int], _Published | None] = {}
        self.by_session: dict[bytes, _Published] = {}
        self.by_owner: collections.Counter[str] = collections.Counter()
        self.on_change = on_change

    @property
    def published(self) -> list[str]:
        """The published addresses (``host:port``), sorted."""
        return sorted(format_bind(*bind) for bind in self.by_bind)

    def reserve(self, bind: tuple[str, int], owner: str, limit: int | None) -> None:
        if bind in self.by_bind:
            raise HTTPError(409, f"{format_bind(*bind)} is published already")
        if limit is not None and self.by_owner[owner] >= limit:
            raise HTTPError(429, f"{owner} has {limit} ports published")
        self.by_bind[bind] = None
        self.by_owner[owner] += 1

    def unreserve(self, bind: tuple[str, int], owner: str) -> None:
        tunnel = self.by_bind.pop(bind, None)
        if tunnel is not None:
            self.by_session.pop(_token_key(tunnel.session), None)
            self._changed()
        self.by_owner[owner] -= 1
        if self.by_owner[owner] <= 0:
            del self.by_owner[owner]

    def add(self, tunnel: _Published) -> None:
        self.by_bind[tunnel.bind] = tunnel
        self.by_session[_token_key(tunnel.session)] = tunnel
        self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(len(self.by_session))

    def session(self, token: str) -> _Published | None:
        return self.by_session.get(_token_key(token))


class ReverseTunnels:
    """A handler that publishes ports for reverse-tunnel clients
    (``hijack-reverse/1`` over an HTTP upgrade or a WebSocket); other
    requests go to ``fallback`` (or get ``426``).

    Publishing is refused unless a rule allows the bind address and port:
    ``rules`` hold for every client (authenticated when ``users`` is given),
    a user's ``reverse`` rules for that user. Without ``users`` anyone who
    reaches the server may publish within ``rules``: serve it on loopback
    only (the command refuses otherwise).

    Bounds: ``max_published`` ports per user (per client address without
    users; 429), ``max_pool`` pool connections per port (429),
    ``max_pending`` public connections waiting for a claimed data connection
    per port (more are closed at once), ``claim_timeout`` for such a wait.
    ``limits`` counts every public connection as a tunnel of the user who
    published (per public client address, per user, bandwidth).
    ``ping_interval``/``ping_timeout``: the keepalive of the control
    connection; a client silent for ``ping_timeout`` after a ping is gone and
    its port closed. ``idle_timeout`` closes a relayed connection with no
    byte either way for that long. ``on_tunnel`` is called once per public
    connection (``outcome``, published port, stats, user). ``registry``:
    share published ports across handler instances (a reload).

    Resource handling: see the module docstring. At the server's shutdown
    every control connection gets an ``error`` message and its listener is
    closed at once; relayed connections follow the shutdown grace.
    """

    def __init__(
        self,
        rules: Sequence[BindRule] = (),
        *,
        users: Users | None = None,
        limits: TunnelLimits | None = None,
        registry: ReverseRegistry | None = None,
        fallback: Handler | None = None,
        ping_interval: float = 15.0,
        ping_timeout: float = 15.0,
        claim_timeout: float = 10.0,
        max_pool: int = 16,
        max_pending: int = 128,
        max_published: int | None = 16,
        idle_timeout: float | None = 300.0,
        on_tunnel: TunnelHook | None = None,
        hand_over: bool = True,
    ) -> None:
        self.rules = tuple(rules)
        self.users = users
        self.limits = limits
        self.registry = registry if registry is not None else ReverseRegistry()
        self.fallback = fallback
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.claim_timeout = claim_timeout
        self.max_pool = max_pool
        self.max_pending = max_pending
        self.max_published = max_published
        self.idle_timeout = idle_timeout
        self.on_tunnel = on_tunnel
        self.hand_over = hand_over
        # The one end record of every tunnel (its log line, on_tunnel): the
        # life cycle's; the steps before differ (no dial: a data connection
        # comes to us), so only its end is used.
        self._life = TunnelLife("reverse", logger, on_tunnel=on_tunnel)

    def __repr__(self) -> str:
        rules = ", ".join(str(rule) for rule in self.rules) or "per user"
        return f"<ReverseTunnels rules=[{rules}]>"

    # -- the request ----------------------------------------------------------

    async def __call__(self, request: Request) -> Response | None:
        transport = is_reverse_request(request)
        if transport is None:
            if self.fallback is not None:
                return await self.fallback(request)
            needs = f"this endpoint needs Connection: Upgrade, Upgrade: {PROTOCOL}"
            return HTTPError(426, needs, UPGRADE_HEADERS).response()
        if transport == "http" and PROTOCOL not in request.headers.tokens("upgrade"):
            speaks = f"this server speaks {PROTOCOL}"
            return HTTPError(426, speaks, UPGRADE_HEADERS).response()
        if request.has_body:
            raise HTTPError(400, "a reverse-tunnel request carries no body")
        publish = request.headers.get_all(PUBLISH_HEADER)
        session = request.headers.get_all(SESSION_HEADER)
        claim = request.headers.get_all(CLAIM_HEADER)
        if len(publish) + len(session) != 1 or len(claim) > (1 if session else 0):
            raise HTTPError(
                400,
                f"name either {PUBLISH_HEADER} or {SESSION_HEADER} (with at most "
                f"one {CLAIM_HEADER}), once",
            )
        user = None
        if self.users is not None:
            try:
                user = await authenticate(request, self.users, proxy=False)
            except HTTPError as challenge:
                return challenge.response()  # the connection stays usable
        try:
            if publish:
                await self._publish(request, transport, publish[0], user)
            else:
                await self._serve_data(
                    request, transport, session[0], claim[0] if claim else None, user
                )
        except WebSocketHandshakeError as exc:
            return exc.response()
        except HTTPError as exc:
            # Every refusal comes before the switch (nothing raises one
            # after it): answered, the connection stays usable.
            return exc.response()
        return None

    def _rules_for(self, user: User | None) -> Iterable[BindRule]:
        return self.rules if user is None else (*self.rules, *user.reverse)

    @contextlib.asynccontextmanager
    async def _upgraded(
        self, request: Request, transport: Transport
    ) -> AsyncIterator[trio.abc.HalfCloseableStream]:
        """Answer yes (``101`` or the WebSocket handshake); the byte stream."""
        if transport == "http":
            hijacked = await request.hijack(Response(101, headers=UPGRADE_HEADERS))
            set_tcp_keepalive(hijacked)
            yield hijacked
            return
        websocket = await accept_websocket(
            request,
            subprotocols=[WS_SUBPROTOCOL],
            compression=None,  # tunnelled bytes are mostly compressed already
            ping_interval=None,  # the control messages keep it alive
        )
        async with websocket:
            yield WebSocketStream(websocket)

    # -- publishing -------------------------------------------------------------

    async def _publish(
        self, request: Request, transport: Transport, text: str, user: User | None
    ) -> None:
        client = format_address(request.connection.remote_address)
        who = client if user is None else f"{client} user={user.name}"
        try:
            bind = parse_bind(text)
        except ValueError as exc:
            raise HTTPError(400, f"{PUBLISH_HEADER}: {exc}") from None
        where = format_bind(*bind)
        if not allowed(self._rules_for(user), *bind):
            logger.warning("%s may not publish %s: no rule allows it", who, where)
            raise HTTPError(403, f"publishing {where} is not allowed")
        owner = (
            user.name
            if user is not None
            else _peer_host(request.connection.remote_address)
        )
        try:
            self.registry.reserve(bind, owner, self.max_published)
        except HTTPError as exc:
            logger.warning("%s may not publish %s: %s", who, where, exc.detail)
            raise
        tunnel: _Published | None = None
        listener: trio.SocketListener | None = None

        def unpublish() -> None:
            """Idempotent. The listener first: the port refuses from this
            instant, and a new publish of it cannot race the registry."""
            nonlocal listener
            if listener is not None:
                listener.socket.close()
                listener = None
                self.registry.unreserve(bind, owner)
            if tunnel is not None:
                tunnel.closed.set()
                while tunnel.parked:  # their data connections end with it
                    tunnel.parked.popleft().give(None)

        ended = "closed"
        try:
            try:
                listener = await _listen(*bind)
            except BaseException:
                self.registry.unreserve(bind, owner)
                raise
            async with self._upgraded(request, transport) as stream:
                tunnel = _Published(
                    bind, owner, user, secrets.token_urlsafe(32), listener, stream
                )
                self.registry.add(tunnel)
                logger.info(
                    "connection %d %s published %s", request.connection.id, who, where
                )
                try:
                    ended = await self._run(tunnel, request)
                finally:
                    unpublish()
        except trio.Cancelled:
            ended = "cancelled"
            raise
        finally:
            unpublish()
            if tunnel is not None:
                logger.info(
                    "connection %d %s unpublished %s: %s",
                    request.connection.id,
                    who,
                    where,
                    ended,
                )

    async def _run(self, tunnel: _Published, request: Request) -> str:
        """Serve a published port until its control connection ends; why."""
        published = {
            "type": "published",
            "bind": tunnel.where,
            "session": tunnel.session,
            "ping_interval": self.ping_interval,
            "ping_timeout": self.ping_timeout,
            "max_pool": self.max_pool,
        }
        try:
            await tunnel.send(published, self.ping_timeout)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            return "connection lost"
        except trio.TooSlowError:
            return "client does not read"
        why = "client closed"
        async with trio.open_nursery() as nursery:

            def end(reason: str) -> None:
                nonlocal why
                why = reason
                nursery.cancel_scope.cancel()

            nursery.start_soon(self._accept, tunnel, nursery)
            nursery.start_soon(self._keepalive, tunnel, end)
            nursery.start_soon(self._watch_shutdown, tunnel, request, end)
            try:
                await self._read_control(tunnel)
            except ProtocolError as exc:
                why = f"protocol error: {exc}"
                with contextlib.suppress(Exception):
                    await tunnel.send({"type": "error", "reason": str(exc)}, 1)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                why = "connection lost"
            except trio.TooSlowError:
                why = "client does not read"
            nursery.cancel_scope.cancel()
        return why

    async def _read_control(self, tunnel: _Published) -> None:
        reader = LineReader(tunnel.stream)
        while (message := await reader.read()) is not None:
            tunnel.heard.set()
            if message["type"] == "ping":
                await tunnel.send({"type": "pong"}, self.ping_timeout)

    async def _keepalive(self, tunnel: _Published, end: Callable[[str], None]) -> None:
        while True:
            await trio.sleep(self.ping_interval)
            tunnel.heard = trio.Event()
            try:
                await tunnel.send({"type": "ping"}, self.ping_timeout)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                return end("connection lost")
            except trio.TooSlowError:
                return end("client does not read")
            with trio.move_on_after(self.ping_timeout) as waited:
                await tunnel.heard.wait()
            if waited.cancelled_caught:
                return end(f"no answer to a ping in {self.ping_timeout:g}s")

    async def _watch_shutdown(
        self, tunnel: _Published, request: Request, end: Callable[[str], None]
    ) -> None:
        await request.connection.shutdown_requested.wait()
        with contextlib.suppress(Exception):
            await tunnel.send({"type": "error", "reason": "server shutting down"}, 1)
        end("server shutting down")

    async def _accept(self, tunnel: _Published, nursery: trio.Nursery) -> None:
        while True:
            try:
                public = await tunnel.listener.accept()
            except OSError as exc:
                if exc.errno not in CAPACITY_ERRORS:
                    raise
                logger.error("%s: accept failed: %s; pausing", tunnel.where, exc)
                await trio.sleep(CAPACITY_PAUSE)
                continue
            nursery.start_soon(self._route, tunnel, public)

    async def _route(self, tunnel: _Published, stream: trio.SocketStream) -> None:
        """Give a public connection to a pool connection, or ask the client
        for a data connection and wait for it (``claim_timeout``)."""
        try:
            set_tcp_keepalive(stream)
            peer, local = stream.socket.getpeername(), stream.socket.getsockname()
        except OSError:  # reset before we looked: nothing to route
            stream.socket.close()
            return
        public = _Public(stream, peer, local, None, trio.current_time())
        if self.limits is not None:
            try:
                public.lease = await self.limits.acquire_async(
                    _peer_host(peer), tunnel.user
                )
            except ConnectError as exc:
                self._refuse(tunnel, public, Outcome.LIMITED, exc.reason)
                return
        parked = tunnel.take_parked()
        if parked is not None:
            parked.give(public)
            return
        if len(tunnel.pending) >= self.max_pending:
            self._refuse(tunnel, public, Outcome.BUSY, "too many wait for the client")
            return
        claim = secrets.token_urlsafe(32)
        tunnel.pending[claim] = public
        try:
            await tunnel.send({"type": "open", "claim": claim}, self.ping_timeout)
            with trio.move_on_after(self.claim_timeout):
                await public.taken.wait()
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the control connection is gone: it ends the tunnel
        except trio.TooSlowError:
            pass
        finally:
            # Still pending: no data connection took it (this is the one
            # place ownership is decided: whoever pops the claim owns it).
            if tunnel.pending.pop(claim, None) is not None:
                self._refuse(tunnel, public, Outcome.TIMEOUT, "no data connection came")

    def _refuse(
        self, tunnel: _Published, public: _Public, outcome: Outcome, why: str
    ) -> None:
        """Close a public connection that will not be relayed; record it."""
        if public.stream is not None:
            public.stream.socket.close()
            public.stream = None
        if public.lease is not None:
            public.lease.release()
            public.lease = None
        self._end(tunnel, public, outcome, RelayStats(), reason=why)

    # -- data connections -------------------------------------------------------

    async def _serve_data(
        self,
        request: Request,
        transport: Transport,
        session: str,
        claim: str | None,
        user: User | None,
    ) -> None:
        client = format_address(request.connection.remote_address)
        tunnel = self.registry.session(session)
        if tunnel is None or tunnel.closed.is_set():
            logger.warning("%s: data connection for an unknown session", client)
            raise HTTPError(404, "no such reverse tunnel")
        owner = None if tunnel.user is None else tunnel.user.name
        if self.users is not None and (user is None or user.name != owner):
            logger.warning(
                "%s: data connection for %s by another user", client, tunnel.where
            )
            raise HTTPError(403, "this reverse tunnel is not yours")
        if claim is not None:
            public = tunnel.pending.pop(claim, None)
            if public is None:
                raise HTTPError(404, "no such claim (it expired, or was taken)")
            public.taken.set()
            try:
                async with self._upgraded(request, transport) as stream:
                    await self._relay(tunnel, public, stream, request.connection)
            finally:
                _close_if_unrelayed(self, tunnel, public)
            return
        if tunnel.pool_size >= self.max_pool:
            raise HTTPError(429, f"{self.max_pool} pool connections already")
        tunnel.pool_size += 1
        parked = _Parked()
        try:
            async with self._upgraded(request, transport) as stream:
                tunnel.parked.append(parked)
                await self._park(parked, stream)
                with contextlib.suppress(ValueError):  # no more offers, at once
                    tunnel.parked.remove(parked)
                if parked.public is not None:
                    await self._relay(tunnel, parked.public, stream, request.connection)
        finally:
            tunnel.pool_size -= 1
            with contextlib.suppress(ValueError):
                tunnel.parked.remove(parked)
            if parked.public is not None:
                _close_if_unrelayed(self, tunnel, parked.public)

    async def _park(self, parked: _Parked, stream: trio.abc.Stream) -> None:
        """Wait for a public connection; return without one if the tunnel
        ends, or the client closes (or, against the protocol, writes)."""
        with parked.waiting, contextlib.suppress(trio.BrokenResourceError, OSError):
            await stream.receive_some(1)

    async def _relay(
        self,
        tunnel: _Published,
        public: _Public,
        stream: trio.abc.Stream,
        connection: Connection,
    ) -> None:
        """Announce ``public`` on the data connection (``stream``, of
        ``connection``) and relay the two."""
        opening = {
            "type": "open",
            "peer": _address_text(public.peer),
            "local": _address_text(public.local),
        }
        stats = RelayStats()
        try:
            await stream.send_all(encode(opening))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            self._refuse(tunnel, public, Outcome.ERROR, "the data connection broke")
            return
        throttle = NO_THROTTLE if public.lease is None else public.lease.throttle
        relayed = public.stream
        assert relayed is not None
        if (
            self.hand_over
            and throttle == NO_THROTTLE
            and isinstance(stream, Hijacked)
            and stream.can_hand_to_hub(relayed)
        ):
            hub_stats = RelayStats()

            def ended(hub_tunnel: HubTunnel) -> None:
                # The hub's a is the data connection: down is its a_to_b.
                swapped = RelayStats(hub_stats.b_to_a, hub_stats.a_to_b)
                outcome = _HUB_OUTCOMES.get(hub_tunnel.reason, Outcome.ERROR)
                if public.lease is not None:
                    public.lease.release()
                self._end(tunnel, public, outcome, swapped)

            stream.hand_to_hub(
                relayed, idle_timeout=self.idle_timeout, stats=hub_stats, on_close=ended
            )
            public.stream = None  # the hub's now
            return
        public.stream = None  # the relay's now
        outcome = Outcome.ERROR
        try:
            await relay(
                relayed,
                stream,
                idle_timeout=self.idle_timeout,
                stats=stats,
                throttle=throttle,
            )
            outcome = Outcome.IDLE_TIMEOUT if stats.timed_out else Outcome.OK
            if connection.cut:  # see TunnelLife.run: ended from outside
                outcome = Outcome.CANCELLED
        except BaseException as exc:
            if ended_from_outside(exc, connection):
                outcome = Outcome.CANCELLED
            raise
        finally:
            if public.lease is not None:
                public.lease.release()
                public.lease = None
            self._end(tunnel, public, outcome, stats)

    # -- the end record ---------------------------------------------------------

    def _end(
        self,
        tunnel: _Published,
        public: _Public,
        outcome: Outcome,
        stats: RelayStats,
        *,
        reason: str = "",
    ) -> None:
        """One end record per public connection (log line, ``on_tunnel``)."""
        record = TunnelRecord(
            kind="reverse",
            client=format_address(public.peer),
            target=tunnel.where,
            started=public.started,
            port=tunnel.bind[1],
            user="" if tunnel.user is None else tunnel.user.name,
            outcome=outcome,
            reason=reason,
            stats=stats,
        )
        self._life.end(record)


# A hub tunnel's end reason -> the outcome.
_HUB_OUTCOMES = {
    "eof": Outcome.OK,
    "error": Outcome.ERROR,
    "idle-timeout": Outcome.IDLE_TIMEOUT,
    "closed": Outcome.CANCELLED,
}


def _close_if_unrelayed(
    handler: ReverseTunnels, tunnel: _Published, public: _Public
) -> None:
    """A data handler that took ``public`` and ends before relaying it
    (cancelled, the upgrade failed) still owns it: close it, record it."""
    if public.stream is not None:
        handler._refuse(tunnel, public, Outcome.CANCELLED, "the data connection ended")


def _address_text(address: Any) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return join_host_port(str(address[0]), int(address[1]))
    return "-"


async def _listen(host: str, port: int) -> trio.SocketListener:
    """The public listener, or the HTTP answer that says why not."""
    try:
        listeners = await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        where = format_bind(host, port)
        logger.warning("cannot listen on %s: %s", where, exc)
        if exc.errno == errno.EADDRINUSE:
            raise HTTPError(409, f"{where} is in use") from None
        if exc.errno == errno.EACCES:
            raise HTTPError(403, f"the server may not listen on {where}") from None
        raise HTTPError(503, f"cannot listen on {where}") from None
    for extra in listeners[1:]:  # a literal address gives one; be sure
        extra.socket.close()
    return listeners[0]
