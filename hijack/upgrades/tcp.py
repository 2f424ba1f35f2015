"""``Upgrade: tcp``: turn an HTTP request into a raw TCP stream to one upstream.

The Docker raw-stream style: the client sends a request with
``Connection: Upgrade`` and ``Upgrade: tcp``; the server dials its upstream,
answers ``101 Switching Protocols`` and from then on relays bytes both ways.
The client side (``open_tunnel``, a local forwarder) is in
:mod:`hijack.client.forward`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

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
from ..tunnel._dial import open_checked
from ..tunnel._upstream import ProxyVersion, check_proxy_version, prepare_upstream
from ..tunnel.limits import TunnelLease, TunnelLimits
from ..tunnel.parent_proxy import Routes
from ..tunnel.policy import ConnectError, ConnectPolicy
from ..tunnel.users import User, Users, authenticate

__all__ = ["TCPUpgrade", "is_tcp_upgrade"]

logger = logging.getLogger("hijack.tcp")


UPGRADE_HEADERS = [("Connection", "Upgrade"), ("Upgrade", "tcp")]

#: The operator chose the upstream, so any port and address may be reached;
#: a user's own deny entries and ports still apply on top of this.
UPSTREAM_POLICY = ConnectPolicy(allowed_ports=None, allow_private=True)
NO_THROTTLE: tuple[Throttle | None, Throttle | None] = (None, None)


def is_tcp_upgrade(request: Request) -> bool:
    """True if ``request`` asks for ``Connection: Upgrade`` + ``Upgrade: tcp``
    (token match, case-insensitive, in any of the listed values)."""
    headers = request.headers
    return "upgrade" in headers.tokens("connection") and "tcp" in headers.tokens(
        "upgrade"
    )


# A hub tunnel's end reason -> what the task relay's log line would say.
_HUB_OUTCOMES = {
    "eof": "closed",
    "error": "closed",
    "idle-timeout": "idle timeout",
    "closed": "cancelled",
}


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
    and refuse (403) a user whose rules (deny, ports) exclude the upstream.
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
        self.routes = routes
        self.limits = limits
        self.hand_over = hand_over
        self.send_proxy_protocol = check_proxy_version(send_proxy_protocol)
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.fallback = fallback
        self.on_tunnel = on_tunnel

    def __repr__(self) -> str:
        host, port = self.upstream
        return f"<TCPUpgrade upstream={join_host_port(host, port)}>"

    async def __call__(self, request: Request) -> Response | None:
        if not is_tcp_upgrade(request):
            if self.fallback is not None:
                return await self.fallback(request)
            needs = "this endpoint needs Connection: Upgrade, Upgrade: tcp"
            return HTTPError(426, needs, UPGRADE_HEADERS).response()
        if request.has_body:
            raise HTTPError(400, "an Upgrade: tcp request carries no body")
        user = None
        if self.users is not None:
            try:
                user = await authenticate(request, self.users, proxy=False)
            except HTTPError as challenge:
                return challenge.response()  # the connection stays usable
        lease = (
            None if self.limits is None else await _acquire(self.limits, request, user)
        )
        handed = False
        try:
            upstream = await self._dial(request, user)
            try:
                try:
                    await prepare_upstream(request, upstream, self.send_proxy_protocol)
                except (trio.BrokenResourceError, OSError) as exc:
                    where = join_host_port(*self.upstream)
                    logger.warning("upstream %s failed: %s", where, exc)
                    raise HTTPError(502, f"upstream {where} failed") from None
                hijacked = await request.hijack(Response(101, headers=UPGRADE_HEADERS))
            except BaseException:
                await trio.aclose_forcefully(upstream)
                raise
            stats = RelayStats()
            log_end = functools.partial(
                self._log_end,
                request.connection.id,
                format_address(request.connection.remote_address),
                None if user is None else user.name,
                trio.current_time(),
            )
            throttle = NO_THROTTLE if lease is None else lease.throttle
            record = tunnels.open(
                "tcp",
                format_address(request.connection.remote_address),
                join_host_port(*self.upstream),
                None if user is None else user.name,
                stats,
            )
            # A throttled stream keeps the task relay: the hub's limiter seam
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
                        stats=stats,
                        on_close=functools.partial(_hub_ended, log_end, lease),
                    )
                )
                handed = True
                return None
            outcome = "error"
            try:
                with record.scope():
                    await relay(
                        hijacked,
                        upstream,
                        idle_timeout=self.idle_timeout,
                        stats=stats,
                        throttle=throttle,
                    )
                outcome = "idle timeout" if stats.timed_out else "closed"
            except trio.Cancelled:
                outcome = "cancelled"
                raise
            finally:
                # Logged from ``finally`` so a cancelled stream (shutdown) still
                # gets its line, with the counts it reached.
                log_end(outcome, stats)
            return None
        finally:
            if lease is not None and not handed:
                lease.release()

    def _log_end(
        self,
        connection_id: int,
        peer: str,
        user: str | None,
        started: float,
        outcome: str,
        stats: RelayStats,
    ) -> None:
        if self.on_tunnel is not None:
            self.on_tunnel(outcome, self.upstream[1], stats, user)
        logger.info(
            "connection %d %s%s -> %s %s: %d bytes up, %d down, %.3fs",
            connection_id,
            peer,
            "" if user is None else f" user={user}",
            join_host_port(*self.upstream),
            outcome,
            stats.a_to_b,
            stats.b_to_a,
            trio.current_time() - started,
        )

    async def _dial(self, request: Request, user: User | None) -> trio.abc.Stream:
        host, port = self.upstream
        where = join_host_port(host, port)
        try:
            with trio.fail_after(self.connect_timeout):
                if user is None and self.routes is None:
                    return await trio.open_tcp_stream(host, port)
                policy = UPSTREAM_POLICY
                if user is not None and self.users is not None:
                    policy = self.users.policy_for(user, policy)
                dialed = await open_checked(host, port, policy, routes=self.routes)
                return dialed.stream
        except ConnectError as exc:
            failure = HTTPError(
                exc.status,
                "upstream not allowed"
                if exc.status == 403
                else f"cannot connect to upstream {where}",
            )
            why = exc.reason
        except trio.TooSlowError:
            failure = HTTPError(504, f"upstream {where} did not answer in time")
            why = f"timed out after {self.connect_timeout}s"
        except OSError as exc:
            # The client gets no OS detail; the log does.
            failure = HTTPError(502, f"cannot connect to upstream {where}")
            why = str(exc)
        logger.warning(
            "connection %d %s%s -> %s dial failed (%s): answered %d",
            request.connection.id,
            format_address(request.connection.remote_address),
            f" user={user.name}" if user is not None else "",
            where,
            why,
            failure.status,
        )
        raise failure


def _host(request: Request) -> str:
    address = request.connection.remote_address
    return str(address[0]) if isinstance(address, tuple) else str(address or "-")


async def _acquire(
    limits: TunnelLimits, request: Request, user: User | None
) -> TunnelLease:
    """Count this tunnel, or answer 429 (and log whose bound it hit)."""
    try:
        return await limits.acquire_async(_host(request), user)
    except ConnectError as exc:
        logger.warning(
            "connection %d %s refused: %s",
            request.connection.id,
            format_address(request.connection.remote_address),
            exc.reason,
        )
        raise HTTPError(exc.status, "too many tunnels") from None


def _hub_ended(
    log_end: Callable[[str, RelayStats], None],
    lease: TunnelLease | None,
    tunnel: HubTunnel,
) -> None:
    """The hub closed a handed-over stream: uncount it, log its end."""
    if lease is not None:
        lease.release()
    log_end(_HUB_OUTCOMES[tunnel.reason], tunnel.stats)
