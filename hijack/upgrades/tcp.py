"""``Upgrade: tcp``: turn an HTTP request into a raw TCP stream to one upstream.

The Docker raw-stream style: the client sends a request with
``Connection: Upgrade`` and ``Upgrade: tcp``; the server dials its upstream,
answers ``101 Switching Protocols`` and from then on relays bytes both ways.
The client side (``open_tunnel``, a local forwarder) is in
:mod:`hijack.upgrades.forward`.
"""

from __future__ import annotations

import functools
import logging

import trio

from .. import (
    Handler,
    HTTPError,
    RelayStats,
    Request,
    Response,
    TunnelHook,
    format_address,
    join_host_port,
    relay,
)
from ._upstream import ProxyVersion, check_proxy_version, prepare_upstream

__all__ = ["TCPUpgrade", "is_tcp_upgrade"]

logger = logging.getLogger("hijack.tcp")


UPGRADE_HEADERS = [("Connection", "Upgrade"), ("Upgrade", "tcp")]


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
    """

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        connect_timeout: float = 10.0,
        idle_timeout: float | None = 300.0,
        fallback: Handler | None = None,
        send_proxy_protocol: ProxyVersion | None = None,
        on_tunnel: TunnelHook | None = None,
        hand_over: bool = True,
    ) -> None:
        self.upstream = upstream
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
        upstream = await self._dial(request)
        try:
            try:
                await prepare_upstream(request, upstream, self.send_proxy_protocol)
            except (trio.BrokenResourceError, OSError) as exc:
                host, port = self.upstream
                logger.warning("upstream %s:%d failed: %s", host, port, exc)
                raise HTTPError(502, f"upstream {host}:{port} failed") from None
            hijacked = await request.hijack(Response(101, headers=UPGRADE_HEADERS))
        except BaseException:
            await trio.aclose_forcefully(upstream)
            raise
        stats = RelayStats()
        log_end = functools.partial(
            self._log_end,
            request.connection.id,
            format_address(request.connection.remote_address),
            trio.current_time(),
        )
        if self.hand_over and hijacked.can_hand_to_hub(upstream):
            hijacked.hand_to_hub(
                upstream,
                idle_timeout=self.idle_timeout,
                stats=stats,
                on_close=lambda tunnel: log_end(_HUB_OUTCOMES[tunnel.reason], stats),
            )
            return None
        outcome = "error"
        try:
            await relay(hijacked, upstream, idle_timeout=self.idle_timeout, stats=stats)
            outcome = "idle timeout" if stats.timed_out else "closed"
        except trio.Cancelled:
            outcome = "cancelled"
            raise
        finally:
            # Logged from ``finally`` so a cancelled stream (shutdown) still
            # gets its line, with the counts it reached.
            log_end(outcome, stats)
        return None

    def _log_end(
        self,
        connection_id: int,
        peer: str,
        started: float,
        outcome: str,
        stats: RelayStats,
    ) -> None:
        if self.on_tunnel is not None:
            self.on_tunnel(outcome, self.upstream[1], stats)
        logger.info(
            "connection %d %s -> %s %s: %d bytes up, %d down, %.3fs",
            connection_id,
            peer,
            join_host_port(*self.upstream),
            outcome,
            stats.a_to_b,
            stats.b_to_a,
            trio.current_time() - started,
        )

    async def _dial(self, request: Request) -> trio.SocketStream:
        host, port = self.upstream
        where = join_host_port(host, port)
        try:
            with trio.fail_after(self.connect_timeout):
                return await trio.open_tcp_stream(host, port)
        except trio.TooSlowError:
            failure = HTTPError(504, f"upstream {where} did not answer in time")
            why = f"timed out after {self.connect_timeout}s"
        except OSError as exc:
            # The client gets no OS detail; the log does.
            failure = HTTPError(502, f"cannot connect to upstream {where}")
            why = str(exc)
        logger.warning(
            "connection %d %s -> %s dial failed (%s): answered %d",
            request.connection.id,
            format_address(request.connection.remote_address),
            where,
            why,
            failure.status,
        )
        raise failure
