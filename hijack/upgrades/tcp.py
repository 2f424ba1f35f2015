"""``Upgrade: tcp``: turn an HTTP request into a raw TCP stream to one upstream.

The Docker raw-stream style: the client sends a request with
``Connection: Upgrade`` and ``Upgrade: tcp``; the server dials its upstream,
answers ``101 Switching Protocols`` and from then on relays bytes both ways.
The client side (``open_tunnel``, a local forwarder) is in
:mod:`hijack.client.forward`.
"""

from __future__ import annotations

import logging

from .. import Handler, HTTPError, Request, Response, join_host_port
from ..tunnel._upstream import ProxyVersion
from ..tunnel.lifecycle import TRUSTED_UPSTREAM, TunnelHook, TunnelLife, hijack_with
from ..tunnel.limits import TunnelLimits
from ..tunnel.parent_proxy import Routes
from ..tunnel.policy import ConnectError, ConnectPolicy
from ..tunnel.users import Users, authenticate

__all__ = ["TCPUpgrade", "is_tcp_upgrade"]

logger = logging.getLogger("hijack.tcp")


UPGRADE_HEADERS = [("Connection", "Upgrade"), ("Upgrade", "tcp")]
SWITCHED = Response(101, headers=UPGRADE_HEADERS)

#: The operator chose the upstream, so any port and address may be reached;
#: a user's own deny, ports and allow_public = false still apply on top of this.
UPSTREAM_POLICY: ConnectPolicy = TRUSTED_UPSTREAM


def is_tcp_upgrade(request: Request) -> bool:
    """True if ``request`` asks for ``Connection: Upgrade`` + ``Upgrade: tcp``
    (token match, case-insensitive, in any of the listed values)."""
    headers = request.headers
    return "upgrade" in headers.tokens("connection") and "tcp" in headers.tokens(
        "upgrade"
    )


class TCPUpgrade:
    """A hijack handler relaying ``Upgrade: tcp`` requests to ``upstream``.

    The upstream is dialled *before* answering, so a client only ever sees
    ``101`` when there is something at the other end: refused or unreachable
    -> ``502``, slower than ``connect_timeout`` -> ``504``. Bytes the client
    sent right behind its request are replayed to the upstream first. A relay
    with no byte either way for ``idle_timeout`` seconds (``None``: never) is
    closed. Requests without the upgrade go to ``fallback``, or get ``426``.
    ``send_proxy_protocol=1`` or ``2`` begins every stream with a PROXY
    protocol header of that version naming the client.
    A request body is refused with ``400``: it would otherwise leak into the
    stream.

    Resource handling: the handler owns both streams and the relay closes both
    when it returns (EOF both ways, an error, the idle timeout, or a cancel,
    e.g. the server's shutdown grace running out). With ``hand_over`` (the
    default) a stream between plain sockets goes to the server's relay hub
    instead (Linux): the handler returns at once and the hub closes both on
    the same events. One log line per stream on the ``hijack.tcp`` logger.

    ``users``: require ``Authorization: Basic`` (401 with
    ``WWW-Authenticate``: this endpoint is an origin server to its client),
    and refuse (403) a user whose rules (deny, ports, allow_public = false)
    exclude the upstream.
    ``routes``: reach the upstream through a parent proxy. ``limits``: tunnels
    per client address and per user (429) and bandwidth.
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        connect_timeout: float = 10.0,
        idle_timeout: float | None = 300.0,
        fallback: Handler | None = None,
        users: Users | None = None,
        routes: Routes | None = None,
        limits: TunnelLimits | None = None,
        send_proxy_protocol: ProxyVersion | None = None,
        on_tunnel: TunnelHook | None = None,
        hand_over: bool = True,
    ) -> None:
        self.upstream = upstream
        self.users = users
        self.fallback = fallback
        self.life = TunnelLife(
            "tcp",
            logger,
            limits=limits,
            routes=routes,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            send_proxy_protocol=send_proxy_protocol,
            on_tunnel=on_tunnel,
            hand_over=hand_over,
        )

    def __repr__(self) -> str:
        host, port = self.upstream
        return f"<TCPUpgrade upstream={join_host_port(host, port)}>"

    async def __call__(self, request: Request) -> Response | None:
        if not is_tcp_upgrade(request):
            if self.fallback is not None:
                return await self.fallback(request)
            needs = "this endpoint needs Connection: Upgrade, Upgrade: tcp"
            return HTTPError(426, needs, UPGRADE_HEADERS).response()
        host, port = self.upstream
        record = self.life.begin(request.connection, join_host_port(host, port))
        try:
            if request.has_body:
                record.refuse(400, "a request body")
                raise HTTPError(400, "an Upgrade: tcp request carries no body")
            user = None
            policy = None  # the operator's upstream, dialled as configured
            if self.users is not None:
                try:
                    user = await authenticate(request, self.users, proxy=False)
                except HTTPError as challenge:
                    record.refuse(401, "authentication required")
                    return challenge.response()  # the connection stays usable
                policy = self.users.policy_for(user, UPSTREAM_POLICY)
            await self.life.run(
                record,
                request.connection,
                host=host,
                port=port,
                policy=policy,
                user=user,
                answer=hijack_with(request, SWITCHED),
            )
        except ConnectError as exc:
            record.refuse(exc.status, exc.reason)
            failure = _FAILURES.get(exc.status, "cannot connect to upstream {}")
            raise HTTPError(exc.status, failure.format(record.target)) from None
        finally:
            self.life.end(record)
        return None


#: What the client is told (no OS detail: the log line has it).
_FAILURES = {
    403: "upstream not allowed",
    429: "too many tunnels",
    504: "upstream {} did not answer in time",
}
