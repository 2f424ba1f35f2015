"""Server limits and timeouts, each with a default safe for the open internet."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Limits"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Timeouts are in seconds; ``None`` turns one off.

    head_timeout: time to receive a whole request head, counted from its first
      byte (on a new connection, from accept). Slower -> 408, close.
    idle_timeout: keep-alive wait for the next request. Longer -> close.
    body_timeout: time to receive a whole request body once the head is in.
      Slower -> 408, close.
    write_timeout: time allowed for one write to the client. Slower -> close.
    tls_handshake_timeout: time allowed for a TLS handshake.
    max_head_size: bytes in a request head (line + headers). More -> 431.
    max_target_size: bytes in the request target. More -> 414.
    max_body_size: bytes in a request body. More -> 413 (before any
      ``100 Continue`` when Content-Length says so).
    max_connections: connections open at once, hijacked ones included; the
      server stops accepting while at the limit (the kernel backlog queues).
    shutdown_grace: how long a graceful shutdown lets in-flight requests and
      hijacked connections finish before cancelling them.
    tcp_keepalive_idle / tcp_keepalive_interval / tcp_keepalive_count: TCP
      keepalive on accepted sockets (and on those the shipped upgrades dial
      for them): first probe after ``idle`` seconds without traffic, then
      every ``interval`` seconds; the connection is dropped after ``count``
      unanswered probes. ``idle=None`` leaves keepalive off. The default
      notices a vanished peer within 60 s and keeps NAT state warm (see
      ``hijack/_keepalive.py``).

    HTTP/2 (``Server(http2=True)``; see docs/reference/http2-limits.md):
    h2_max_concurrent_streams: streams open at once per connection
      (SETTINGS_MAX_CONCURRENT_STREAMS); one more is refused alone
      (RST_STREAM REFUSED_STREAM), the connection goes on.
    h2_stream_window: the receive window of each stream: the most a stream
      buffers before its reader consumes (flow control is the backpressure).
    h2_tunnel_window: the receive window of a hijacked stream (a tunnel's
      bandwidth is about one window per round trip), from the hijack on.
    h2_max_frame_size: the largest frame the peer may send
      (SETTINGS_MAX_FRAME_SIZE; fewer, bigger DATA frames for tunnels).
    h2_max_resets_per_second: RST_STREAM frames from the peer plus streams
      refused, per second on average (bursts of ten seconds' worth): rapid
      reset (CVE-2023-44487). Over it: GOAWAY ENHANCE_YOUR_CALM.
    h2_max_settings_per_second / h2_max_pings_per_second /
      h2_max_priority_per_second / h2_max_window_updates_per_second: the
      same budget for each of those frames (floods of frames h2 must answer
      or record). ``max_head_size`` bounds a header block across
      CONTINUATION frames (CVE-2024-27316) and its decoded (HPACK) size;
      ``write_timeout`` a stream whose window the peer keeps shut (the
      stream is reset); ``idle_timeout`` a connection without streams.
    """

    head_timeout: float | None = 10.0
    idle_timeout: float | None = 60.0
    body_timeout: float | None = 60.0
    write_timeout: float | None = 30.0
    tls_handshake_timeout: float | None = 10.0
    max_head_size: int = 32 * 1024
    max_target_size: int = 8 * 1024
    max_body_size: int = 16 * 1024 * 1024
    max_connections: int = 10_000
    shutdown_grace: float = 10.0
    tcp_keepalive_idle: float | None = 30.0
    tcp_keepalive_interval: float = 10.0
    tcp_keepalive_count: int = 3
    h2_max_concurrent_streams: int = 100
    h2_stream_window: int = 65535
    h2_tunnel_window: int = 1024 * 1024
    h2_max_frame_size: int = 65536
    h2_max_resets_per_second: float = 100.0
    h2_max_settings_per_second: float = 10.0
    h2_max_pings_per_second: float = 10.0
    h2_max_priority_per_second: float = 100.0
    h2_max_window_updates_per_second: float = 10_000.0
