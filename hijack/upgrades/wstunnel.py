"""WebSocket tunnels whose client names the destination: TCP or UDP.

:class:`WebSocketTunnel` accepts a WebSocket at ``path`` with one query
parameter naming where it goes:

* ``?tcp=HOST:PORT``: a TCP connection; the bytes travel in binary messages
  both ways (as :mod:`hijack.upgrades.wsbridge`). ``hijack forward --listen
  socks5://...`` uses it for every SOCKS5 CONNECT.
* ``?udp=HOST:PORT``: a UDP flow; each binary message is one datagram, each
  datagram from the destination one message back. ``hijack forward --udp``
  uses it (wstunnel's WireGuard-over-WebSocket case). The UDP socket is
  connected to the checked address, so the kernel drops datagrams from
  anyone else.

The destination is judged by the same :class:`ConnectPolicy` as CONNECT
(every resolved address; the checked one is dialled), users authenticate
with ``Authorization: Basic`` (401 otherwise) and get their own rules,
and :class:`~hijack.tunnel.limits.TunnelLimits` counts each WebSocket as a
tunnel. Refusals before the ``101``: 400 (no or bad target), 401, 403
(policy), 429 (limits), 502 (no connection), 504 (too slow). UDP goes
direct, never through a parent proxy (none here relays datagrams). One
INFO line per tunnel on ``hijack.wstunnel``; ``on_tunnel`` as on
:class:`~hijack.upgrades.connect.ConnectProxy`.
"""

from __future__ import annotations

import logging
import socket
from urllib.parse import parse_qs

import trio

from .. import Handler, HTTPError, RelayStats, Request, Response, relay
from ..tunnel.lifecycle import (
    Outcome,
    TunnelHook,
    TunnelLife,
    TunnelRecord,
    client_host,
)
from ..tunnel.limits import TunnelLease, TunnelLimits
from ..tunnel.parent_proxy import Routes
from ..tunnel.policy import ConnectError, ConnectPolicy, parse_connect_target
from ..tunnel.users import User, Users, authenticate
from .websocket import (
    ConnectionClosed,
    WebSocket,
    WebSocketHandshakeError,
    accept_websocket,
    check_websocket_request,
    is_websocket_request,
)
from .wsbridge import SUBPROTOCOL, WebSocketStream

__all__ = ["MAX_DATAGRAM", "WebSocketTunnel"]

logger = logging.getLogger("hijack.wstunnel")

#: The largest UDP payload over IPv4; a bigger message closes with 1009.
MAX_DATAGRAM = 65507

# What the client is told (no OS detail, nor what a name resolved to).
_DETAILS = {
    403: "destination not allowed",
    502: "cannot reach the destination",
    504: "the destination did not answer in time",
}


class WebSocketTunnel:
    """A handler for ``?tcp=`` and ``?udp=`` WebSocket tunnels at ``path``
    (other requests go to ``fallback``, or get 404). See the module doc.

    TCP tunnels run the one tunnel life cycle (kind ``wstunnel``); a UDP
    flow is judged and counted the same way and ends in the same record
    (kind ``wstunnel-udp``)."""

    def __init__(
        self,
        policy: ConnectPolicy,
        *,
        path: str = "/tunnel",
        users: Users | None = None,
        routes: Routes | None = None,
        limits: TunnelLimits | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float | None = 300.0,
        udp_idle_timeout: float = 60.0,
        on_tunnel: TunnelHook | None = None,
        fallback: Handler | None = None,
    ) -> None:
        self.policy = policy
        self.path = path
        self.users = users
        self.udp_idle_timeout = udp_idle_timeout
        self.fallback = fallback
        self.life = TunnelLife(
            "wstunnel",
            logger,
            limits=limits,
            routes=routes,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            on_tunnel=on_tunnel,
        )

    async def __call__(self, request: Request) -> Response | None:
        if request.path != self.path or not is_websocket_request(request):
            if self.fallback is not None:
                return await self.fallback(request)
            raise HTTPError(404)
        record = self.life.begin(request.connection, "-")
        try:
            return await self._serve(request, record)
        except WebSocketHandshakeError as exc:
            record.refuse(exc.status, str(exc))
            return exc.response()
        except HTTPError as exc:
            record.refuse(exc.status, exc.detail)
            raise
        except ConnectError as exc:
            record.refuse(exc.status, exc.reason)
            raise HTTPError(exc.status, _DETAILS.get(exc.status, exc.reason)) from None
        finally:
            self.life.end(record)

    async def _serve(self, request: Request, record: TunnelRecord) -> Response | None:
        check_websocket_request(request)
        policy = self.policy
        user = None
        if self.users is not None:
            try:
                user = await authenticate(request, self.users, proxy=False)
            except HTTPError as challenge:
                record.refuse(401, "credentials required")
                return challenge.response()
            record.user = user.name
            policy = self.users.policy_for(user, policy)
        kind, host, port = _target(request)
        record.target = f"{host}:{port}"
        if kind == "udp":
            record.kind = "wstunnel-udp"
            record.port = port
            await self._udp(request, host, port, policy, user, record)
            return None

        async def answer(upstream: trio.abc.Stream) -> trio.abc.Stream:
            return WebSocketStream(await self._accept(request))

        await self.life.run(
            record,
            request.connection,
            host=host,
            port=port,
            policy=policy,
            user=user,
            answer=answer,
            own_relay=self._relay,
        )
        return None

    async def _relay(
        self, client: trio.abc.Stream, upstream: trio.abc.Stream, stats: RelayStats
    ) -> tuple[Outcome, str]:
        assert isinstance(client, WebSocketStream)
        async with client.websocket:
            await relay(
                client, upstream, idle_timeout=self.life.idle_timeout, stats=stats
            )
        return (Outcome.IDLE_TIMEOUT if stats.timed_out else Outcome.OK), ""

    async def _udp(
        self,
        request: Request,
        host: str,
        port: int,
        policy: ConnectPolicy,
        user: User | None,
        record: TunnelRecord,
    ) -> None:
        """Judge, count, connect a UDP socket to the checked address, then
        relay messages and datagrams until either side ends."""
        try:
            with trio.fail_after(self.life.connect_timeout):
                addresses = await policy.resolve(host, port)
        except trio.TooSlowError:
            raise HTTPError(504, _DETAILS[504]) from None
        address = addresses[0]
        record.address = str(address)
        lease: TunnelLease | None = None
        if self.life.limits is not None:
            lease = await self.life.limits.acquire_async(
                client_host(request.connection), user
            )
        try:
            family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
            with trio.socket.socket(family, socket.SOCK_DGRAM) as sock:
                try:
                    await sock.connect((str(address), port))
                except OSError as exc:
                    raise HTTPError(502, _DETAILS[502]) from exc
                websocket = await self._accept(request, max_message_size=MAX_DATAGRAM)
                async with websocket:
                    await _relay_datagrams(
                        websocket, sock, self.udp_idle_timeout, record
                    )
        finally:
            if lease is not None:
                lease.release()

    async def _accept(
        self, request: Request, *, max_message_size: int = 1024 * 1024
    ) -> WebSocket:
        return await accept_websocket(
            request,
            subprotocols=[SUBPROTOCOL],
            max_message_size=max_message_size,
            compression=None,
        )


def _target(request: Request) -> tuple[str, str, int]:
    """``("tcp" | "udp", host, port)`` from the query; 400 otherwise."""
    query = parse_qs(request.query)
    named = [(kind, query[kind]) for kind in ("tcp", "udp") if kind in query]
    if len(named) != 1 or len(named[0][1]) != 1:
        raise HTTPError(400, "name one destination: ?tcp=HOST:PORT or ?udp=HOST:PORT")
    kind, [target] = named[0]
    try:
        host, port = parse_connect_target(target)
    except ConnectError as exc:
        raise HTTPError(400, exc.reason) from None
    return kind, host, port


async def _relay_datagrams(
    websocket: WebSocket,
    sock: trio.socket.SocketType,
    idle_timeout: float,
    record: TunnelRecord,
) -> None:
    """Messages to datagrams and back until either side ends or nothing
    moves for ``idle_timeout``. No queue: each is sent before the next read."""
    stats = record.stats
    counts = [0, 0]
    async with trio.open_nursery() as nursery:
        scope = nursery.cancel_scope
        scope.deadline = trio.current_time() + idle_timeout

        async def up() -> None:
            while True:
                try:
                    message = await websocket.receive()
                except ConnectionClosed:
                    break
                if isinstance(message, str):
                    continue  # a datagram is bytes: text is not one
                try:
                    await sock.send(message)
                except OSError:
                    continue  # refused or unreachable: UDP goes on
                counts[0] += 1
                stats.a_to_b += len(message)
                scope.deadline = trio.current_time() + idle_timeout
            scope.cancel()

        async def down() -> None:
            while True:
                try:
                    data = await sock.recv(65535)
                except OSError:
                    continue  # an ICMP error reported on the socket
                try:
                    await websocket.send(data)
                except ConnectionClosed:
                    break
                counts[1] += 1
                stats.b_to_a += len(data)
                scope.deadline = trio.current_time() + idle_timeout
            scope.cancel()

        nursery.start_soon(up)
        nursery.start_soon(down)
    stats.timed_out = scope.cancelled_caught and trio.current_time() >= scope.deadline
    record.outcome = Outcome.IDLE_TIMEOUT if stats.timed_out else Outcome.OK
    record.detail = f"datagrams={counts[0]}/{counts[1]}"
