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
import hashlib
import hmac
import logging

import trio

from .. import Handler, HTTPError, Request, Response
from ..tunnel._dial import Dialer, dial_tcp
from ..tunnel._upstream import ProxyVersion
from ..tunnel.lifecycle import TunnelHook, TunnelLife, TunnelRecord, hijack_with
from ..tunnel.limits import TunnelLimits
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
ESTABLISHED = Response(200, reason="Connection established")


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
    ``on_tunnel(record)`` gets each CONNECT's
    :class:`~hijack.tunnel.lifecycle.TunnelRecord` when it ends (metrics use
    it); the steps, outcomes and the log line are
    :class:`~hijack.tunnel.lifecycle.TunnelLife`'s, shared by every tunnel.

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
        if users is not None and auth is not None:
            raise ValueError("give auth (one user) or users, not both")
        self.policy = policy
        self.realm = realm
        self.fallback = fallback
        self.users = users
        self.life = TunnelLife(
            "connect",
            logger,
            max_tunnels=max_tunnels,
            limits=limits,
            routes=routes,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            send_proxy_protocol=send_proxy_protocol,
            on_tunnel=on_tunnel,
            hand_over=hand_over,
            resolver=resolver,
            dial=dial,
        )
        self._credentials: bytes | None = None
        if auth is not None:
            user, password = auth
            if ":" in user:
                raise ValueError("a Basic auth user name cannot contain ':'")
            # Compare digests: constant time, and the length leaks nothing.
            token = f"{user}:{password}".encode()
            self._credentials = hashlib.sha256(token).digest()

    @property
    def open_tunnels(self) -> int:
        """Tunnels being set up (past the auth check) or relaying now."""
        return self.life.open_tunnels

    async def __call__(self, request: Request) -> Response | None:
        if request.method != "CONNECT":
            if self.fallback is not None:
                return await self.fallback(request)
            refusal = HTTPError(405, "this is a CONNECT proxy", {"allow": "CONNECT"})
            return refusal.response()
        record = self.life.begin(request.connection, request.target)
        try:
            return await self._connect(request, record)
        except ConnectError as exc:
            record.refuse(exc.status, exc.reason)
            # Do not tell the client what a name resolved to.
            detail = "destination not allowed" if exc.status == 403 else exc.reason
            raise HTTPError(exc.status, detail) from None
        finally:
            self.life.end(record)

    async def _connect(self, request: Request, record: TunnelRecord) -> Response | None:
        host, port = parse_connect_target(request.target)
        record.port = port
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
                record.refuse(407, "proxy authentication required")
                # Returned, not raised: the client may retry on this
                # connection with credentials.
                return challenge.response()
            policy = self.users.policy_for(user, policy)
        elif not self._authorized(request):
            record.refuse(407, "proxy authentication required")
            return self._challenge()

        await self.life.run(
            record,
            request.connection,
            host=host,
            port=port,
            policy=policy,
            user=user,
            answer=hijack_with(request, ESTABLISHED),
        )
        return None

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
