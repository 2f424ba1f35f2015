"""One life cycle for every tunnel, whichever protocol asked for it.

CONNECT, ``Upgrade: tcp``, the WebSocket bridge (and SOCKS5, reverse
tunnels) each speak their own handshake, but between the request and the
end the steps are the same, so they live here once:

1. **judge**: the destination against the policy (every resolved address),
   the caller having found the user (:func:`~hijack.tunnel.users.authenticate`);
2. **limit**: the tunnels open at once, then a lease from
   :class:`~hijack.tunnel.limits.TunnelLimits` (per client, per user,
   bandwidth);
3. **dial**: a checked address, directly or through a parent proxy, within
   ``connect_timeout``; TCP keepalive and the PROXY protocol header, if
   asked, on the upstream;
4. **answer**: the protocol's own yes (``200``, ``101``, a WebSocket
   handshake, a SOCKS5 reply), given only once the upstream accepted;
5. **relay**: handed to the server's relay hub when both ends are plain
   sockets and nothing throttles them, else :func:`~hijack.relay` (or the
   protocol's own relay, for a WebSocket);
6. **end**: one :class:`TunnelRecord`, logged once and passed once to
   ``on_tunnel``, with one :class:`Outcome` whatever the protocol.

A refusal at any step before the answer raises a
:class:`~hijack.tunnel.policy.ConnectError` with an HTTP status (the
vocabulary the policy already speaks); each protocol turns it into its own
answer (an HTTP error, a SOCKS5 reply code). The outcome is named after what
happened, not after the answer, so a dashboard reads one vocabulary for
every kind of tunnel.
"""

from __future__ import annotations

import enum
import functools
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from .. import (
    Connection,
    Hijacked,
    HubTunnel,
    RelayStats,
    Request,
    Response,
    Throttle,
    format_address,
    join_host_port,
    relay,
)
from ..state.registry import tunnels
from ._dial import Dialer, dial_tcp, open_checked
from ._upstream import ProxyVersion, check_proxy_version, prepare_upstream
from .limits import TunnelLease, TunnelLimits
from .parent_proxy import Routes
from .policy import ConnectError, ConnectPolicy, Resolver, UpstreamError
from .users import User

__all__ = [
    "TRUSTED_UPSTREAM",
    "Answer",
    "OpenStream",
    "Outcome",
    "OwnRelay",
    "TunnelBusy",
    "TunnelHook",
    "TunnelLife",
    "TunnelRecord",
    "TunnelTimeout",
    "client_host",
    "ended_from_outside",
    "hijack_with",
    "outcome_for_status",
]


class Outcome(enum.StrEnum):
    """How a tunnel ended: the ``outcome`` of its log line and of the
    ``hijack_tunnels_total`` metric, the same word for every kind."""

    #: Both sides ended (EOF or a close): the normal end.
    OK = "ok"
    #: No byte either way for ``idle_timeout``.
    IDLE_TIMEOUT = "idle-timeout"
    #: A side broke (a reset, a broken pipe) after the answer. The task
    #: relay cannot tell this from a normal end: only hub tunnels report it.
    ERROR = "error"
    #: Ended from outside: the server's shutdown grace ran out, or an operator.
    CANCELLED = "cancelled"
    #: Malformed request (400).
    BAD_REQUEST = "bad-request"
    #: No or wrong credentials (401, 407).
    UNAUTHORIZED = "unauthorized"
    #: The policy or the user's rules refuse the destination (403).
    REFUSED = "refused"
    #: No such target (404: an unknown bridge token).
    UNKNOWN_TARGET = "unknown-target"
    #: A client's or a user's own bound (429).
    LIMITED = "limited"
    #: The server's bound on tunnels open at once (503).
    BUSY = "busy"
    #: The destination could not be reached: no such name, refused,
    #: unreachable, or a parent proxy failing (502).
    UNREACHABLE = "unreachable"
    #: Resolving and dialling took longer than ``connect_timeout`` (504).
    TIMEOUT = "timeout"


_BY_STATUS = {
    400: Outcome.BAD_REQUEST,
    401: Outcome.UNAUTHORIZED,
    403: Outcome.REFUSED,
    404: Outcome.UNKNOWN_TARGET,
    407: Outcome.UNAUTHORIZED,
    429: Outcome.LIMITED,
    502: Outcome.UNREACHABLE,
    503: Outcome.BUSY,
    504: Outcome.TIMEOUT,
}

# A hub tunnel's end reason -> the outcome.
_BY_HUB_REASON = {
    "eof": Outcome.OK,
    "error": Outcome.ERROR,
    "idle-timeout": Outcome.IDLE_TIMEOUT,
    "closed": Outcome.CANCELLED,
}


def outcome_for_status(status: int) -> Outcome:
    """The outcome of a tunnel refused with HTTP ``status``."""
    return _BY_STATUS.get(status, Outcome.ERROR)


class TunnelBusy(ConnectError):
    """The server's bound on tunnels open at once."""

    status = 503


class TunnelTimeout(ConnectError):
    """Resolving plus dialling took longer than ``connect_timeout``."""

    status = 504


@dataclass(slots=True, eq=False)
class TunnelRecord:
    """What is known of one tunnel, filled in as it goes; at its end the
    log line and ``on_tunnel`` are made from it.

    ``kind`` names the protocol (``connect``, ``tcp``, ``wsbridge``, ...);
    ``client`` the client's address as logged; ``target`` the destination as
    asked (``host:port``); ``address`` what was dialled; ``route``
    ``direct`` or ``via <parent>`` when routes are configured; ``detail`` a
    protocol's own note on the end (a WebSocket close code)."""

    kind: str
    client: str
    target: str
    connection_id: int = 0
    started: float = field(default_factory=trio.current_time)
    port: int | None = None
    user: str = ""
    address: str = ""
    route: str = ""
    outcome: Outcome = Outcome.ERROR
    reason: str = ""
    detail: str = ""
    stats: RelayStats = field(default_factory=RelayStats)
    #: Held by the relay hub: its end is reported from the hub's callback.
    handed: bool = False
    ended: bool = False

    def refuse(self, status: int, reason: str) -> None:
        """Note a refusal answered with ``status`` (the first one counts)."""
        if self.outcome is Outcome.ERROR and not self.reason:
            self.outcome = outcome_for_status(status)
            self.reason = reason

    @property
    def duration(self) -> float:
        return trio.current_time() - self.started


#: ``on_tunnel(record)``: called once per tunnel when it ends (refused ones
#: included), e.g. to count it in metrics.
TunnelHook = Callable[[TunnelRecord], None]

#: The protocol's yes, given the open upstream: returns the client's side
#: of the tunnel (a :class:`~hijack.Hijacked`, a stream).
Answer = Callable[[trio.abc.Stream], Awaitable[trio.abc.Stream]]


def hijack_with(request: Request, response: Response) -> Answer:
    """The answer of an HTTP upgrade: ``request.hijack(response)``."""

    async def answer(upstream: trio.abc.Stream) -> trio.abc.Stream:
        return await request.hijack(response)

    return answer


#: A protocol's own relay (a WebSocket's): moves bytes until the tunnel ends,
#: closes both streams, returns the outcome and a detail for the log.
OwnRelay = Callable[
    [trio.abc.Stream, trio.abc.Stream, RelayStats], Awaitable[tuple[Outcome, str]]
]

#: Dial a fixed upstream by name (``trio.open_tcp_stream``).
OpenStream = Callable[[str, int], Awaitable[trio.abc.Stream]]

_NO_THROTTLE: tuple[Throttle | None, Throttle | None] = (None, None)


class TunnelLife:
    """The settings one server's tunnels share, and the life cycle that
    runs each (see the module docstring).

    ``kind`` and ``logger``: the first word and the logger of the one INFO
    line per tunnel. ``max_tunnels`` bounds tunnels open at once (503),
    counted from the limit step to the end of the relay (``open_tunnels``).
    ``limits``, ``routes``, ``send_proxy_protocol``, ``connect_timeout``,
    ``idle_timeout``, ``hand_over`` and ``on_tunnel`` are as the upgrades
    document them; ``resolver`` and ``dial`` (a checked address) and
    ``open_stream`` (a fixed upstream, by name) are there to be replaced in
    tests.

    Resource handling: :meth:`run` owns the upstream from the dial; on any
    error, refusal or cancel before the answer it closes it. After the
    answer the relay (or the hub) owns both ends and closes both.
    """

    def __init__(
        self,
        kind: str,
        logger: logging.Logger,
        *,
        max_tunnels: int | None = None,
        limits: TunnelLimits | None = None,
        routes: Routes | None = None,
        connect_timeout: float = 10.0,
        idle_timeout: float | None = 300.0,
        send_proxy_protocol: ProxyVersion | None = None,
        on_tunnel: TunnelHook | None = None,
        hand_over: bool = True,
        resolver: Resolver = trio.socket.getaddrinfo,
        dial: Dialer = dial_tcp,
        open_stream: OpenStream = trio.open_tcp_stream,
    ) -> None:
        if max_tunnels is not None and max_tunnels < 1:
            raise ValueError("max_tunnels must be >= 1")
        self.kind = kind
        self.logger = logger
        self.max_tunnels = max_tunnels
        self.limits = limits
        self.routes = routes
        self.connect_timeout = connect_timeout
        self.idle_timeout = idle_timeout
        self.send_proxy_protocol = check_proxy_version(send_proxy_protocol)
        self.on_tunnel = on_tunnel
        self.hand_over = hand_over
        self.resolver = resolver
        self.dial = dial
        self.open_stream = open_stream
        self._open = 0

    @property
    def open_tunnels(self) -> int:
        """Tunnels past the limit step and not ended yet."""
        return self._open

    def begin(self, connection: Connection, target: str) -> TunnelRecord:
        """A record for a tunnel ``connection``'s client asks for."""
        return TunnelRecord(
            kind=self.kind,
            client=format_address(connection.remote_address),
            target=target,
            connection_id=connection.id,
        )

    async def run(
        self,
        record: TunnelRecord,
        connection: Connection,
        *,
        host: str,
        port: int,
        policy: ConnectPolicy | None,
        user: User | None,
        answer: Answer,
        own_relay: OwnRelay | None = None,
    ) -> None:
        """Limit, dial, answer and relay one tunnel to ``host:port``.

        ``policy`` judges the destination (None: a fixed upstream the
        operator chose, dialled as configured unless routes send it through
        a parent). Raises :class:`~hijack.tunnel.policy.ConnectError` for a
        refusal before the answer (``record`` says which); returns when the
        tunnel ended, or at once when the hub took it. Call :meth:`end` in
        a ``finally`` around it: it reports the record once, and not while
        the hub holds the tunnel."""
        record.port = port
        if user is not None:
            record.user = user.name
        lease: TunnelLease | None = None
        try:
            if self.max_tunnels is not None and self._open >= self.max_tunnels:
                raise TunnelBusy(f"{self._open} tunnels open")
            if self.limits is not None:
                lease = await self.limits.acquire_async(client_host(connection), user)
            self._open += 1
            try:
                upstream = await self._open_upstream(record, host, port, policy)
                try:
                    try:
                        await prepare_upstream(
                            connection, upstream, self.send_proxy_protocol
                        )
                    except (trio.BrokenResourceError, OSError) as exc:
                        raise UpstreamError(
                            f"upstream {record.address or record.target}: {exc}"
                        ) from None
                    client = await answer(upstream)
                except BaseException:
                    await trio.aclose_forcefully(upstream)
                    raise
                # Listed by the admin API (when on) until it ends; ending it
                # from there cancels its relay or closes its hub tunnel.
                live = tunnels.open(
                    record.kind, record.client, record.target, record.user or None,
                    record.stats,
                )  # fmt: skip
                if own_relay is not None:
                    with live.scope():
                        record.outcome, record.detail = await own_relay(
                            client, upstream, record.stats
                        )
                    if live.ended or connection.cut:
                        record.outcome = Outcome.CANCELLED
                    return
                throttle = _NO_THROTTLE if lease is None else lease.throttle
                # A throttled tunnel keeps the task relay: the hub's limiter
                # seam is one limiter per tunnel, the limits are per direction.
                if (
                    self.hand_over
                    and throttle == _NO_THROTTLE
                    and isinstance(client, Hijacked)
                    and client.can_hand_to_hub(upstream)
                ):
                    live.hand_over(
                        client.hand_to_hub(
                            upstream,
                            idle_timeout=self.idle_timeout,
                            stats=record.stats,
                            on_close=functools.partial(self._hub_ended, record, lease),
                        )
                    )
                    record.handed = True
                    return
                with live.scope():
                    await relay(
                        client,
                        upstream,
                        idle_timeout=self.idle_timeout,
                        stats=record.stats,
                        throttle=throttle,
                    )
                timed_out = record.stats.timed_out
                record.outcome = Outcome.IDLE_TIMEOUT if timed_out else Outcome.OK
                # Ended by an operator, or cut at the end of the shutdown
                # grace: the relay saw only its streams end, as on a normal
                # end (or a broken one), but the tunnel was ended from outside.
                if live.ended or connection.cut:
                    record.outcome = Outcome.CANCELLED
            finally:
                if not record.handed:
                    self._open -= 1
                    if lease is not None:
                        lease.release()
        except ConnectError as exc:
            record.refuse(exc.status, exc.reason)
            raise
        except BaseException as exc:
            if ended_from_outside(exc, connection):
                record.outcome = Outcome.CANCELLED
            raise

    async def _open_upstream(
        self, record: TunnelRecord, host: str, port: int, policy: ConnectPolicy | None
    ) -> trio.abc.Stream:
        """Judge, resolve once and dial a checked address (directly or
        through a parent), all within ``connect_timeout``."""
        if self.routes is not None:
            parent = self.routes.parent_for(host)
            record.route = "direct" if parent is None else f"via {parent}"
        # A bare scope, not trio.fail_after (a generator context manager
        # on every tunnel's set-up path).
        with trio.CancelScope(
            deadline=trio.current_time() + self.connect_timeout
        ) as scope:
            if policy is None and self.routes is None:
                try:
                    stream = await self.open_stream(host, port)
                except OSError as exc:
                    raise UpstreamError(
                        f"cannot connect to {join_host_port(host, port)}: "
                        f"{exc.strerror or exc}"
                    ) from None
                record.address = join_host_port(host, port)
                return stream
            dialed = await open_checked(
                host,
                port,
                policy if policy is not None else TRUSTED_UPSTREAM,
                routes=self.routes,
                resolver=self.resolver,
                dial=self.dial,
            )
            record.address = dialed.address
            return dialed.stream
        assert scope.cancelled_caught
        raise TunnelTimeout(
            f"no connection to {join_host_port(host, port)} within "
            f"{self.connect_timeout}s"
        )

    def _hub_ended(
        self, record: TunnelRecord, lease: TunnelLease | None, ended: HubTunnel
    ) -> None:
        """The hub closed a handed-over tunnel: uncount and report it."""
        self._open -= 1
        if lease is not None:
            lease.release()
        record.handed = False
        record.outcome = _BY_HUB_REASON.get(ended.reason, Outcome.ERROR)
        self.end(record)

    def end(self, record: TunnelRecord) -> None:
        """Report ``record``: one log line, one ``on_tunnel`` call. Does
        nothing while the hub holds the tunnel, or the second time."""
        if record.handed or record.ended:
            return
        record.ended = True
        if self.on_tunnel is not None:
            self.on_tunnel(record)
        stats = record.stats
        duration = record.duration
        self.logger.info(
            "%s %s%s -> %s%s%s %s%s%s up=%d down=%d %.3fs",
            record.kind,
            record.client,
            f" user={record.user}" if record.user else "",
            record.target,
            f" ({record.address})"
            if record.address and record.address != record.target
            else "",
            f" {record.route}" if record.route else "",
            record.outcome.value,
            f" {record.detail}" if record.detail else "",
            f" [{record.reason}]" if record.reason else "",
            stats.a_to_b,
            stats.b_to_a,
            duration,
            extra=_log_fields(record, duration),
        )


def _log_fields(record: TunnelRecord, duration: float) -> dict[str, Any]:
    """The record as structured fields (the JSON log format shows them)."""
    return {
        "kind": record.kind,
        "client": record.client,
        "user": record.user,
        "route": record.route,
        "target": record.target,
        "outcome": record.outcome.value,
        "upstream_address": record.address,
        "bytes_up": record.stats.a_to_b,
        "bytes_down": record.stats.b_to_a,
        "duration": duration,
    }


#: A fixed upstream the operator chose, reached through a parent or judged
#: by a user's own rules: any port and address; the user's deny entries and
#: ports still apply on top of it (``Users.policy_for``).
TRUSTED_UPSTREAM = ConnectPolicy(allowed_ports=None, allow_private=True)


def ended_from_outside(exc: BaseException, connection: Connection) -> bool:
    """Whether a tunnel on ``connection`` that ended by raising ``exc`` was
    ended from outside (so is ``cancelled``): a cancel, alone or as the
    group of cancels a relay's nursery raises, or any end once the server
    cut the connection (a relay woken by a socket the server closed raises
    that socket's error, or is cancelled while it is at it)."""
    if connection.cut or isinstance(exc, trio.Cancelled):
        return True
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        return rest is None
    return False


def client_host(connection: Connection) -> str:
    """The client's address without its port: what per-client limits count."""
    address = connection.remote_address
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address or "-")
