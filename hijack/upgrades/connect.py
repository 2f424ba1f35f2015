"""CONNECT tunnels: a forward proxy as a hijack handler.

``ConnectProxy`` answers ``CONNECT host:port`` requests: it checks the target
against a :class:`ConnectPolicy` (resolving it once), dials the checked
address, answers ``200`` and relays bytes both ways. The bytes the client sent
right behind the CONNECT head (typically a TLS ClientHello) are replayed to
the upstream first, by the :class:`~hijack.Hijacked` stream.

Answers: bad target or a request body -> 400, missing or wrong
``Proxy-Authorization`` -> 407, too many tunnels -> 503 (429 for a client's
or a user's own bound), destination refused by the policy (or the user's
rules) -> 403, name unresolvable, connection refused or a parent proxy
failing -> 502, resolve plus connect slower than ``connect_timeout`` -> 504.
Other methods go to ``fallback`` or get 405.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import logging
from dataclasses import dataclass, field

import trio

from .. import (
    Handler,
    HTTPError,
    HubTunnel,
    RelayStats,
    Request,
    Response,
    Throttle,
    TunnelHook,
    format_address,
    join_host_port,
    relay,
)
from ..state.registry import tunnels
from ..tunnel._dial import Dialer, dial_tcp, open_checked
from ..tunnel._upstream import ProxyVersion, check_proxy_version, prepare_upstream
from ..tunnel.limits import TunnelLease, TunnelLimits
from ..tunnel.parent_proxy import Routes
from ..tunnel.policy import (
    BadConnectTarget,
    ConnectError,
    ConnectPolicy,
    ConnectRefused,
    Resolver,
    UpstreamError,
    is_non_global,
    parse_connect_target,
)
from ..tunnel.users import Users, authenticate

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

DEFAULT_POLICY = ConnectPolicy()  # frozen: safe to share
NO_THROTTLE: tuple[Throttle | None, Throttle | None] = (None, None)


@dataclass(slots=True)
class _Tunnel:
    """What the log line of one CONNECT says."""

    client: str
    target: str
    started: float
    outcome: str = "error"
    reason: str = ""
    address: str = ""
    user: str = ""
    route: str = ""
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
    ``on_tunnel(outcome, port, stats, user)`` is called when each CONNECT
    ends (metrics use it), with the outcome of its log line and the user
    (None without a users file).

    ``users`` (:class:`~hijack.tunnel.users.Users`) replaces ``auth``: each
    user has a password and rules on top of ``policy`` (407, then 403).
    ``routes`` (:class:`~hijack.tunnel.parent_proxy.Routes`) sends
    destinations through a parent proxy. ``limits``
    (:class:`~hijack.tunnel.limits.TunnelLimits`) bounds tunnels per client
    address and per user (429) and their bandwidth.

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
        users: Users | None = None,
        routes: Routes | None = None,
        limits: TunnelLimits | None = None,
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
        if users is not None and auth is not None:
            raise ValueError("give auth (one user) or users, not both")
        self.users = users
        self.routes = routes
        self.limits = limits
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
        policy = self.policy
        user = None
        if self.users is not None:
            try:
                user = await authenticate(
                    request, self.users, proxy=True, realm=self.realm
                )
            except HTTPError as challenge:
                tunnel.outcome = "407"
                tunnel.reason = "proxy authentication required"
                # Returned, not raised: the client may retry on this
                # connection with credentials.
                return challenge.response()
            tunnel.user = user.name
            policy = self.users.policy_for(user, policy)
        elif not self._authorized(request):
            tunnel.outcome = "407"
            tunnel.reason = "proxy authentication required"
            return self._challenge()
        if self._open >= self.max_tunnels:
            raise _Busy(f"{self._open} tunnels open")
        lease = (
            await self.limits.acquire_async(_client_host(request), user)
            if self.limits is not None
            else None
        )
        self._open += 1
        try:
            upstream = await self._open_upstream(host, port, policy, tunnel)
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
            throttle = NO_THROTTLE if lease is None else lease.throttle
            record = tunnels.open(
                "connect", tunnel.client, tunnel.target, tunnel.user, tunnel.stats
            )
            # A throttled tunnel keeps the task relay: the hub's limiter seam
            # is one limiter per tunnel, the limits here are per direction.
            if (
                self.hand_over
                and throttle == NO_THROTTLE
                and hijacked.can_hand_to_hub(upstream)
            ):
                record.hand_over(
                    hijacked.hand_to_hub(
                        upstream,
                        idle_timeout=self.idle_timeout,
                        stats=tunnel.stats,
                        on_close=functools.partial(self._tunnel_ended, tunnel, lease),
                    )
                )
                tunnel.handed = True
                return None
            # Inline, not in a helper coroutine: a frame more would live as
            # long as the tunnel (~0.4 KiB per idle tunnel, measured).
            with record.scope():
                await relay(
                    hijacked,
                    upstream,
                    idle_timeout=self.idle_timeout,
                    stats=tunnel.stats,
                    throttle=throttle,
                )
            tunnel.outcome = "idle-timeout" if tunnel.stats.timed_out else "ok"
            return None
        finally:
            if not tunnel.handed:
                self._open -= 1
                if lease is not None:
                    lease.release()

    def _tunnel_ended(
        self, tunnel: _Tunnel, lease: TunnelLease | None, ended: HubTunnel
    ) -> None:
        """The hub closed a handed-over tunnel: count and log it as a relay
        that returned (or, at the end of a shutdown grace, was cancelled)."""
        self._open -= 1
        if lease is not None:
            lease.release()
        tunnel.outcome = _HUB_OUTCOMES.get(ended.reason, "ok")
        self._log(tunnel)

    async def _open_upstream(
        self, host: str, port: int, policy: ConnectPolicy, tunnel: _Tunnel
    ) -> trio.abc.Stream:
        """Check, resolve once, dial a checked address (directly or through
        a parent): the caller owns the stream returned. The deadline covers
        the lookup and every dial."""
        if self.routes is not None:
            tunnel.route = "direct"
            parent = self.routes.parent_for(host)
            if parent is not None:
                tunnel.route = f"via {parent}"
        try:
            with trio.fail_after(self.connect_timeout):
                dialed = await open_checked(
                    host,
                    port,
                    policy,
                    routes=self.routes,
                    resolver=self._resolver,
                    dial=self._dial,
                )
                tunnel.address = dialed.address
                return dialed.stream
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
            self.on_tunnel(tunnel.outcome, tunnel.port, stats, tunnel.user or None)
        logger.info(
            "CONNECT %s%s -> %s%s%s %s%s up=%d down=%d %.3fs",
            tunnel.client,
            f" user={tunnel.user}" if tunnel.user else "",
            tunnel.target,
            f" ({tunnel.address})" if tunnel.address else "",
            f" {tunnel.route}" if tunnel.route else "",
            tunnel.outcome,
            f" [{tunnel.reason}]" if tunnel.reason else "",
            stats.a_to_b,
            stats.b_to_a,
            duration,
            extra={
                "client": tunnel.client,
                "user": tunnel.user,
                "route": tunnel.route,
                "target": tunnel.target,
                "outcome": tunnel.outcome,
                "upstream_address": tunnel.address,
                "bytes_up": stats.a_to_b,
                "bytes_down": stats.b_to_a,
                "duration": duration,
            },
        )


def _client_host(request: Request) -> str:
    """The client's address without its port: what per-client limits count."""
    address = request.connection.remote_address
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address or "-")


# A hub tunnel's end reason -> the outcome a relay() would have logged.
_HUB_OUTCOMES = {"idle-timeout": "idle-timeout", "closed": "error"}


class _Busy(ConnectError):
    status = 503


class _Timeout(ConnectError):
    status = 504
