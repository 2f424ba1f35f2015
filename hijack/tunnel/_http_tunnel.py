"""The client half of an HTTP tunnel: ``CONNECT host:port`` to a proxy, or
``GET`` with ``Upgrade: tcp`` to a :class:`~hijack.upgrades.tcp.TCPUpgrade`.

It lives with the tunnel pieces, not with the forward client, because a
parent proxy speaking HTTP is dialled with it too
(:class:`~hijack.tunnel.parent_proxy.ParentProxy`): the client commands
build on it, the server side's dialer does as well.
"""

from __future__ import annotations

import base64
from typing import Literal, Protocol

import h11
import trio

from .. import ReplayStream, join_host_port, set_tcp_keepalive

__all__ = ["HTTPMode", "TunnelError", "open_http_tunnel"]

HTTPMode = Literal["connect", "upgrade"]


class StreamOpener(Protocol):
    """What can reach the hijack server for us: a parent proxy."""

    async def connect(self, host: str, port: int) -> trio.abc.Stream: ...


# An error answer's body is kept (this much of it) for the exception message.
MAX_ERROR_BODY = 1024


class TunnelError(Exception):
    """The server refused the tunnel. ``status`` is the HTTP status it
    answered, or 0 when it did not answer with valid HTTP; ``reason`` says
    why; ``body`` holds the start of its error body, if any."""

    def __init__(self, status: int, reason: str, body: bytes = b"") -> None:
        self.status = status
        self.reason = reason
        self.body = body
        text = body.decode("utf-8", "replace")
        # It comes from the network and ends up on a terminal: printable only.
        detail = "".join(c if c.isprintable() else " " for c in text).strip()
        super().__init__(
            f"tunnel refused: {status} {reason}" + (f" ({detail})" if detail else "")
            if status
            else f"tunnel failed: {reason}"
        )


def build_request(
    via: tuple[str, int],
    target: tuple[str, int] | None,
    mode: HTTPMode,
    auth: tuple[str, str] | None,
    path: str,
) -> h11.Request:
    if mode == "connect":
        if target is None:
            raise ValueError("connect mode needs a target (host, port)")
        authority = join_host_port(*target)
        method, request_target = "CONNECT", authority
        headers = [("Host", authority)]
        auth_header = "Proxy-Authorization"
    elif mode == "upgrade":
        if target is not None:
            raise ValueError("upgrade mode takes no target: the server picks it")
        method, request_target = "GET", path
        headers = [
            ("Host", join_host_port(*via)),
            ("Connection", "Upgrade"),
            ("Upgrade", "tcp"),
        ]
        auth_header = "Authorization"
    else:
        raise ValueError(f"mode must be 'connect' or 'upgrade', not {mode!r}")
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode("ascii")
        headers.append((auth_header, f"Basic {token}"))
    return h11.Request(method=method, target=request_target, headers=headers)


async def _next_event(conn: h11.Connection, stream: trio.abc.Stream) -> object:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
        data = await stream.receive_some()
        if not data:
            raise TunnelError(0, "the server closed the connection mid-answer")
        conn.receive_data(bytes(data))


async def _error_body(conn: h11.Connection, stream: trio.abc.Stream) -> bytes:
    """Up to MAX_ERROR_BODY bytes of an error answer's body, best effort."""
    body = b""
    try:
        while len(body) < MAX_ERROR_BODY:
            event = await _next_event(conn, stream)
            if not isinstance(event, h11.Data):
                break
            body += event.data
    except (h11.RemoteProtocolError, trio.BrokenResourceError, TunnelError):
        pass  # a close-delimited body ends this way too
    return body[:MAX_ERROR_BODY]


async def handshake(
    stream: trio.abc.Stream,
    request: h11.Request,
    mode: HTTPMode,
    *,
    protocol: str = "tcp",
) -> bytes:
    """Send ``request``, read the answer's head; return the bytes behind it.
    In upgrade mode the answer must switch to ``protocol`` (the reverse
    tunnels' client asks for another one than ``tcp``)."""
    conn = h11.Connection(h11.CLIENT)
    await stream.send_all(conn.send(request) + conn.send(h11.EndOfMessage()))
    while True:
        try:
            event = await _next_event(conn, stream)
        except h11.RemoteProtocolError as exc:
            raise TunnelError(0, f"bad answer from the server: {exc}") from exc
        if isinstance(event, h11.InformationalResponse) and event.status_code != 101:
            continue  # 100 Continue and friends: the real answer follows
        if not isinstance(event, h11.InformationalResponse | h11.Response):
            raise TunnelError(0, f"unexpected {type(event).__name__} from the server")
        if mode == "upgrade":
            wanted = event.status_code == 101
        else:
            wanted = 200 <= event.status_code < 300
        reason = event.reason.decode("latin-1")
        if not wanted:
            body = await _error_body(conn, stream)
            raise TunnelError(event.status_code, reason, body)
        if mode == "upgrade":
            upgrade = {
                v.strip().lower()
                for name, value in event.headers
                if name == b"upgrade"
                for v in value.decode("latin-1").split(",")
            }
            if upgrade != {protocol}:
                raise TunnelError(101, f"switched to {sorted(upgrade)}, not {protocol}")
        # h11 is now in SWITCHED_PROTOCOL: what it did not parse is tunnel data.
        return bytes(conn.trailing_data[0])


async def open_http_tunnel(
    via: tuple[str, int],
    target: tuple[str, int] | None,
    mode: HTTPMode,
    *,
    auth: tuple[str, str] | None = None,
    path: str = "/",
    upstream_proxy: StreamOpener | None = None,
) -> trio.abc.HalfCloseableStream:
    """Dial ``via`` (directly or through ``upstream_proxy``), ask it for a
    tunnel and return the stream behind the answer; see
    :func:`hijack.client.forward.open_tunnel`, which documents the modes."""
    request = build_request(via, target, mode, auth, path)
    stream: trio.abc.Stream
    if upstream_proxy is not None:
        stream = await upstream_proxy.connect(*via)
    else:
        stream = await trio.open_tcp_stream(*via)
    # A client behind a NAT is who loses an idle tunnel: keep the flow warm.
    set_tcp_keepalive(stream)
    try:
        prefix = await handshake(stream, request, mode)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return ReplayStream(stream, prefix)
