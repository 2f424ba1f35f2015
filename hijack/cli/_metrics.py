"""Prometheus metrics, ``/healthz`` and ``/readyz`` (``--metrics HOST:PORT``).

prometheus-client is an optional extra (``pip install 'trio-hijack[metrics]'``):
the exposition format, histograms and, above all, its multiprocess mode are
what we would otherwise rewrite. With ``--workers`` every worker writes its
samples into memory-mapped files in ``PROMETHEUS_MULTIPROC_DIR`` (set by the
supervisor before it starts them) and the supervisor's ``/metrics`` sums
them: counters survive a worker's restart, the gauges (``livesum``) count
live workers only (the supervisor marks a dead worker's files).

Counters are incremented where things happen; the connection gauges are
sampled from the server's registry of connections (the registry is the
truth; no second bookkeeping that could drift from it): at each scrape in
one process, and every ``SAMPLE_INTERVAL`` seconds in each worker, whose
files the supervisor's scrape reads.

Names (all prefixed ``hijack_``), as listed in the README:
  connections{state}           gauge: new, active, idle, hijacked (open)
  connections_accepted_total   counter
  hijacked_open                gauge: hijacked streams their owner holds
  requests_total{status}       counter: per finished HTTP exchange
  request_duration_seconds     histogram: head's first byte to exchange end
  tunnels_total{outcome,port}  counter: CONNECT and Upgrade: tcp, at the end
  relay_bytes_total{direction} counter: up (client to upstream), down
  websocket_connections_total  counter: 101 answers to Upgrade: websocket
  websocket_messages_total{direction} counter: in, out; added when each
                               WebSocket closes
  accept_errors_total          counter: accept() failures (EMFILE...)
  proxy_protocol_rejections_total{reason} counter (PROXY protocol, in)
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import trio

from .._access_log import AccessRecord
from .._connection import Connection, ConnState
from .._message import Request, Response
from ..tunnel.lifecycle import TunnelRecord
from ._command import StartupError

if TYPE_CHECKING:
    from .._server import Server

__all__ = [
    "Health",
    "Metrics",
    "exposition",
    "metrics_handler",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
SAMPLE_INTERVAL = 1.0
#: Request durations: from a cached answer (~100 us) to a slow upstream.
DURATION_BUCKETS = (0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0)
_GAUGE_STATES = (ConnState.NEW, ConnState.ACTIVE, ConnState.IDLE)


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise StartupError(
            "--metrics needs prometheus-client: pip install 'trio-hijack[metrics]'"
        ) from None
    return prometheus_client


class Metrics:
    """The process's metrics. Plugged into the core through its hooks:
    ``Server(on_state=, on_request=, on_accept_error=)``,
    ``ProxyProtocol(on_reject=)`` and the upgrades' ``on_tunnel``; the core
    never imports this module."""

    def __init__(self) -> None:
        prom = _import_prometheus()
        prom.disable_created_metrics()  # *_created series: noise for counters
        self.registry = prom.CollectorRegistry()
        r = self.registry
        live = {"multiprocess_mode": "livesum"}
        self.connections = prom.Gauge(
            "hijack_connections", "Open connections by state", ["state"],
            registry=r, **live,
        )  # fmt: skip
        self.accepted = prom.Counter(
            "hijack_connections_accepted", "Connections accepted", registry=r
        )
        self.hijacked_open = prom.Gauge(
            "hijack_hijacked_open", "Hijacked streams still open", registry=r, **live
        )
        self.requests = prom.Counter(
            "hijack_requests", "HTTP exchanges by final status", ["status"], registry=r
        )
        self.duration = prom.Histogram(
            "hijack_request_duration_seconds", "HTTP exchange duration",
            buckets=DURATION_BUCKETS, registry=r,
        )  # fmt: skip
        self.tunnels = prom.Counter(
            "hijack_tunnels",
            "Tunnels ended, by kind (connect, tcp, wsbridge, ...), outcome "
            "(hijack.tunnel.lifecycle.Outcome) and destination port",
            ["kind", "outcome", "port"], registry=r,
        )  # fmt: skip
        # Labelled by user only for users of the users file: its size bounds
        # the cardinality (an unauthenticated tunnel has no user label).
        self.user_tunnels = prom.Counter(
            "hijack_user_tunnels", "Tunnels ended, by user and outcome",
            ["user", "outcome"], registry=r,
        )  # fmt: skip
        self.relay_bytes = prom.Counter(
            "hijack_relay_bytes", "Bytes relayed by tunnels", ["direction"],
            registry=r,
        )  # fmt: skip
        self.websockets = prom.Counter(
            "hijack_websocket_connections", "WebSocket connections opened",
            registry=r,
        )  # fmt: skip
        self.websocket_messages = prom.Counter(
            "hijack_websocket_messages", "WebSocket messages, counted at close",
            ["direction"], registry=r,
        )  # fmt: skip
        self.reverse_published = prom.Gauge(
            "hijack_reverse_published_ports",
            "Ports published by reverse-tunnel clients (forward --reverse)",
            registry=r, **live,
        )  # fmt: skip
        self.accept_errors = prom.Counter(
            "hijack_accept_errors", "accept() failures", registry=r
        )
        self.proxy_protocol_rejections = prom.Counter(
            "hijack_proxy_protocol_rejections",
            "Connections refused for a missing or bad PROXY protocol header",
            ["reason"], registry=r,
        )  # fmt: skip

    # -- hooks ---------------------------------------------------------------

    def on_accept_error(self, exc: OSError) -> None:
        """For ``Server(on_accept_error=...)``."""
        self.accept_errors.inc()

    def on_proxy_protocol_rejection(self, reason: str) -> None:
        """For ``ProxyProtocol(on_reject=...)``: a header missing, malformed,
        too slow or from an untrusted sender (``reason`` is a short fixed
        word)."""
        self.proxy_protocol_rejections.labels(reason).inc()

    def on_state(self, connection: Connection, state: ConnState) -> None:
        if state is ConnState.NEW:
            self.accepted.inc()

    def on_request(self, record: AccessRecord) -> None:
        status = "-" if record.status is None else str(record.status)
        self.requests.labels(status).inc()
        self.duration.observe(record.duration)
        if record.status == 101 and record.upgrade == "websocket":
            self.websockets.inc()

    def on_tunnel(self, record: TunnelRecord) -> None:
        """For the upgrades' ``on_tunnel``: one tunnel ended (or was refused)."""
        port = "-" if record.port is None else str(record.port)
        self.tunnels.labels(record.kind, record.outcome.value, port).inc()
        if record.user:
            self.user_tunnels.labels(record.user, record.outcome.value).inc()
        self.relay_bytes.labels("up").inc(record.stats.a_to_b)
        self.relay_bytes.labels("down").inc(record.stats.b_to_a)

    def on_websocket_close(self, ws: Any) -> None:
        """For ``websocket_handler(on_close=...)``: ``ws`` is a WebSocket."""
        self.websocket_messages.labels("in").inc(ws.messages_received)
        self.websocket_messages.labels("out").inc(ws.messages_sent)

    def on_published(self, count: int) -> None:
        """For ``ReverseRegistry(on_change=...)``: ports published now."""
        self.reverse_published.set(count)

    def sample(self, server: Server) -> None:
        counts = dict.fromkeys(_GAUGE_STATES, 0)
        hijacked = 0
        for connection in server.connections:
            if connection.hijacked_open:
                hijacked += 1
            elif connection.state in counts:
                counts[connection.state] += 1
        for state, count in counts.items():
            self.connections.labels(state.name.lower()).set(count)
        self.connections.labels("hijacked").set(hijacked)
        self.hijacked_open.set(hijacked)

    async def sample_forever(self, server: Server) -> None:
        while True:
            self.sample(server)
            await trio.sleep(SAMPLE_INTERVAL)


def exposition(metrics: Metrics | None) -> tuple[bytes, str]:
    """The text exposition and its content type: this process's metrics, or
    with ``PROMETHEUS_MULTIPROC_DIR`` set, the sum over every worker."""
    prom = _import_prometheus()
    from prometheus_client import multiprocess

    if os.environ.get(MULTIPROC_ENV):
        registry = prom.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    elif metrics is not None:
        registry = metrics.registry
    else:
        registry = prom.CollectorRegistry()
    return prom.generate_latest(registry), prom.CONTENT_TYPE_LATEST


def mark_worker_dead(pid: int) -> None:
    """Supervisor: a worker is gone; its live gauges stop counting."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


@dataclass(slots=True)
class Health:
    """``serving``: the process serves (``/healthz``). ``ready``: it wants
    new connections (``/readyz``); off from the moment a shutdown starts,
    before the drain, so a balancer stops sending first."""

    serving: bool = False
    ready: bool = False


def metrics_handler(
    health: Health,
    metrics: Metrics | None,
    *,
    before_scrape: Callable[[], None] = lambda: None,
) -> Callable[[Request], Any]:
    """The handler of the ``--metrics`` listener. ``before_scrape()`` runs
    before each ``/metrics`` answer (one process: sample the connection
    gauges, so a scrape reads them as they are, not up to a second old)."""

    async def handle(request: Request) -> Response:
        if request.method not in ("GET", "HEAD"):
            return Response(405, [("allow", "GET, HEAD")], b"")
        if request.path == "/metrics":
            before_scrape()
            body, content_type = await trio.to_thread.run_sync(exposition, metrics)
            return Response(200, [("content-type", content_type)], body)
        if request.path in ("/healthz", "/readyz"):
            ok = health.serving if request.path == "/healthz" else health.ready
            text = b"ok\n" if ok else b"shutting down\n"
            return Response(200 if ok else 503, [("content-type", "text/plain")], text)
        return Response(404, [("content-type", "text/plain")], b"not found\n")

    return handle
