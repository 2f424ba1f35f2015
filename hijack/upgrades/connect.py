"""CONNECT tunnels: a forward proxy as a hijack handler.

``ConnectProxy`` answers ``CONNECT host:port`` requests: it checks the target
against a :class:`ConnectPolicy` (resolving it once), dials the checked
address, answers ``200`` and relays bytes both ways. The bytes the client sent
right behind the CONNECT head (typically a TLS ClientHello) are replayed to
the upstream first, by the :class:`~hijack.Hijacked` stream.

Answers: bad target or a request body -> 400, missing or wrong
``Proxy-Authorization`` -> 407, too many tunnels -> 503, destination refused
by the policy -> 403, name unresolvable or connection refused -> 502, resolve
plus connect slower than ``connect_timeout`` -> 504. Other methods go to
``fallback`` or get 405.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

from .. import (
    Handler,
    HTTPError,
    HubTunnel,
    RelayStats,
    Request,
    Response,
    TunnelHook,
    format_address,
    join_host_port,
    relay,
)
from ._policy import (
    BadConnectTarget,
    ConnectError,
    ConnectPolicy,
    ConnectRefused,
    IPAddress,
    Resolver,
    UpstreamError,
    is_non_global,
    parse_connect_target,
)
from ._upstream import ProxyVersion, check_proxy_version, prepare_upstream

__all__ = [
    "BadConnectTarget",
    "ConnectError",
    "ConnectPolicy",
    "ConnectProxy",
    "ConnectRefused",
    "Dialer",
    "UpstreamError",
    "dial_tcp",
    "is_non_global",
    "parse_connect_target",
]

logger = logging.getLogger("hijack.connect")

Dialer = Callable[[IPAddress, int], Awaitable[trio.abc.Stream]]

DEFAULT_POLICY = ConnectPolicy()  # frozen: safe to share


async def dial_tcp(address: IPAddress, port: int) -> trio.abc.Stream:
    """Connect to an already checked IP address.

    One socket, one connect: ``trio.open_tcp_stream`` would run its
    happy-eyeballs machinery (a nursery and a task per attempt) for an
    address that needs none, a measurable share of a tunnel's set-up."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((str(address), port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)  # sets TCP_NODELAY


@dataclass(slots=True)
class _Tunnel:
    """What the log line of one CONNECT says."""

    client: str
    target: str
    started: float
    outcome: str = "error"
    reason: str = ""
    address: str = ""
    port: int | None = None
    stats: RelayStats = field(default_factory=RelayStats)
    #: Handed to the server's relay hub: its end is logged from on_close.
    handed: bool = False


class ConnectProxy:
    """A hijack handler that turns CONNECT requests into TCP tunnels.

    ``Server(ConnectProxy(ConnectPolicy(allowed_ports={443, 8443})))`` is a
    forward proxy. ``auth=("user", "password")`` requires
    ``Proxy-Authorization: Basic`` (compared in constant time; 407 with
    ``Proxy-Authenticate: Basic realm="<realm>"`` otherwise).
    ``max_tunnels`` bounds the tunnels open at once, counted from the policy
    check to the end of the relay (``open_tunnels``). ``resolver`` (called
    like ``trio.socket.getaddrinfo``) and ``dial`` are there to be replaced in
    tests. ``send_proxy_protocol=1`` or ``2`` begins every tunnel with a
    PROXY protocol header of that version naming the client
    (``connection.remote_address``) for an upstream that accepts one.
    ``on_tunnel(outcome, port, stats)`` is called when each CONNECT
    ends (metrics use it), with the outcome of its log line.

    Resource handling: the upstream stream is dialled before answering, so a
    client only sees ``200`` when the upstream accepted. The handler then
    owns both streams until it returns; :func:`~hijack.relay` closes both
    when both directions reached EOF, on ``idle_timeout`` (no byte either
    way), on error, or on a cancel (e.g. the server's shutdown grace running
    out). With ``hand_over`` (the default) a tunnel between plain sockets is
    handed to the server's relay hub instead (Linux): the handler returns
    at once, the hub closes both streams on the same events and the end is
    logged from there. One INFO line per CONNECT on the ``hijack.connect``
    logger.
    """

    def __init__(
        self,
        policy: ConnectPolicy = DEFAULT_POLICY,
        *,
        auth: tuple[str, str] | None = None,
        realm: str = "hijack",
        connect_timeout: float = 10.0,
        idle_timeout: float | None = 300.0,
        max_tunnels: int = 1000,
        fallback: Handler | None = None,
        resolver: Resolver = trio.socket.getaddrinfo,
        dial: Dialer = dial_tcp,
        send_proxy_protocol: ProxyVersion | None = None,
        on_tunnel: TunnelHook | None = None,
        hand_over: bool = True,
    ) -> None:
        if any(c in realm for c in '"\\\r\n\x00'):
            raise ValueError(
                f"realm must not contain quotes or control bytes: {realm!r}"
            )
        if max_tunnels < 1:
            raise ValueError("max_tunnels must be >= 1")
        self.policy = policy
        self.realm = realm
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.max_tunnels = max_tunnels
        self.fallback = fallback
        self.hand_over = hand_over
        self._resolver = resolver
        self._dial = dial
        self.send_proxy_protocol = check_proxy_version(send_proxy_protocol)
        self.on_tunnel = on_tunnel
        self._credentials: bytes | None = None
        if auth is not None:
            user, password = auth
            if ":" in user:
                raise ValueError("a Basic auth user name cannot contain ':'")
            # Compare digests: constant time, and the length leaks nothing.
            token = f"{user}:{password}".encode()
            self._credentials = hashlib.sha256(token).digest()
        self._open = 0

    @property
    def open_tunnels(self) -> int:
        """Tunnels being set up (past the auth check) or relaying now."""
        return self._open

    async def __call__(self, request: Request) -> Response | None:
        if request.method != "CONNECT":
            if self.fallback is not None:
                return await self.fallback(request)
            refusal = HTTPError(405, "this is a CONNECT proxy", {"allow": "CONNECT"})
            return refusal.response()
        tunnel = _Tunnel(
            client=format_address(request.connection.remote_address),
            target=request.target,
            started=trio.current_time(),
        )
        try:
            return await self._connect(request, tunnel)
        except ConnectError as exc:
            tunnel.outcome = str(exc.status)
            tunnel.reason = exc.reason
            # Do not tell the client what a name resolved to.
            detail = "destination not allowed" if exc.status == 403 else exc.reason
            raise HTTPError(exc.status, detail) from None
        finally:
            if not tunnel.handed:
                self._log(tunnel)

    async def _connect(self, request: Request, tunnel: _Tunnel) -> Response | None:
        host, port = parse_connect_target(request.target)
        tunnel.port = port
        if request.has_body:
            raise BadConnectTarget("a CONNECT request must not have a body")
        if not self._authorized(request):
            tunnel.outcome = "407"
            tunnel.reason = "proxy authentication required"
            return self._challenge()
        if self._open >= self.max_tunnels:
            raise _Busy(f"{self._open} tunnels open")
        self._open += 1
        try:
            upstream = await self._open_upstream(host, port, tunnel)
            try:
                try:
                    await prepare_upstream(request, upstream, self.send_proxy_protocol)
                except (trio.BrokenResourceError, OSError) as exc:
                    raise UpstreamError(f"upstream {tunnel.address}: {exc}") from None
                hijacked = await request.hijack(
                    Response(200, reason="Connection established")
                )
            except BaseException:
                await trio.aclose_forcefully(upstream)
                raise
            if self.hand_over and hijacked.can_hand_to_hub(upstream):
                hijacked.hand_to_hub(
                    upstream,
                    idle_timeout=self.idle_timeout,
                    stats=tunnel.stats,
                    on_close=functools.partial(self._tunnel_ended, tunnel),
                )
                tunnel.handed = True
                return None
            await relay(
                hijacked, upstream, idle_timeout=self.idle_timeout, stats=tunnel.stats
            )
            tunnel.outcome = "idle-timeout" if tunnel.stats.timed_out else "ok"
            return None
        finally:
            if not tunnel.handed:
                self._open -= 1

    def _tunnel_ended(self, tunnel: _Tunnel, ended: HubTunnel) -> None:
        """The hub closed a handed-over tunnel: count and log it as a relay
        that returned (or, at the end of a shutdown grace, was cancelled)."""
        self._open -= 1
        tunnel.outcome = _HUB_OUTCOMES.get(ended.reason, "ok")
        self._log(tunnel)

    async def _open_upstream(
        self, host: str, port: int, tunnel: _Tunnel
    ) -> trio.abc.Stream:
        """Resolve once, check, dial a checked address: the caller owns the
        stream returned. The deadline covers the lookup and every dial."""
        try:
            with trio.fail_after(self.connect_timeout):
                addresses = await self.policy.resolve(
                    host, port, resolver=self._resolver
                )
                errors = []
                for address in addresses:
                    tunnel.address = str(address)
                    try:
                        return await self._dial(address, port)
                    except OSError as exc:
                        errors.append(f"{address}: {exc.strerror or exc}")
                raise UpstreamError(
                    f"cannot connect to {join_host_port(host, port)}: "
                    + "; ".join(errors)
                )
        except trio.TooSlowError:
            raise _Timeout(
                f"no connection to {join_host_port(host, port)} within "
                f"{self.connect_timeout}s"
            ) from None

    def _authorized(self, request: Request) -> bool:
        if self._credentials is None:
            return True
        values = request.headers.get_all("proxy-authorization")
        if len(values) != 1:
            return False
        scheme, _, token = values[0].strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            given = base64.b64decode(token.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(hashlib.sha256(given).digest(), self._credentials)

    def _challenge(self) -> Response:
        # Returned, not raised: the client retries on this connection.
        challenge = {"proxy-authenticate": f'Basic realm="{self.realm}"'}
        return HTTPError(407, headers=challenge).response()

    def _log(self, tunnel: _Tunnel) -> None:
        duration = trio.current_time() - tunnel.started
        stats = tunnel.stats
        if self.on_tunnel is not None:
            self.on_tunnel(tunnel.outcome, tunnel.port, stats)
        logger.info(
            "CONNECT %s -> %s%s %s%s up=%d down=%d %.3fs",
            tunnel.client,
            tunnel.target,
            f" ({tunnel.address})" if tunnel.address else "",
            tunnel.outcome,
            f" [{tunnel.reason}]" if tunnel.reason else "",
            stats.a_to_b,
            stats.b_to_a,
            duration,
            extra={
                "client": tunnel.client,
                "target": tunnel.target,
                "outcome": tunnel.outcome,
                "upstream_address": tunnel.address,
                "bytes_up": stats.a_to_b,
                "bytes_down": stats.b_to_a,
                "duration": duration,
            },
        )


# A hub tunnel's end reason -> the outcome a relay() would have logged.
_HUB_OUTCOMES = {"idle-timeout": "idle-timeout", "closed": "error"}


class _Busy(ConnectError):
    status = 503


class _Timeout(ConnectError):
    status = 504
