"""The client side of a tunnel through a hijack server.

:func:`open_tunnel` asks a server for a raw stream, either with
``CONNECT host:port`` (a proxy), with ``Upgrade: tcp`` (a
:class:`~hijack.upgrades.tcp.TCPUpgrade` endpoint) or as a WebSocket to a
``ws://`` or ``wss://`` URL (a :class:`~hijack.upgrades.wsbridge.WebSocketBridge`,
or websockify), and returns that stream.
:func:`serve_forward` does it for every connection to a local port. (For
stdin/stdout, ssh's ``ProxyCommand``, use the command: ``hijack forward
--listen -``; it changes process-wide state, so it is not a library call.)
"""

from __future__ import annotations

import base64
import logging
from typing import TYPE_CHECKING, Literal

import h11
import trio

from .. import Hub, ReplayStream, join_host_port, relay, set_tcp_keepalive

if TYPE_CHECKING:
    from .parent_proxy import ParentProxy

__all__ = ["Mode", "TunnelError", "open_tunnel", "serve_forward"]

logger = logging.getLogger("hijack.forward")

Mode = Literal["connect", "upgrade", "websocket"]

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


def _request(
    via: tuple[str, int],
    target: tuple[str, int] | None,
    mode: Mode,
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


async def _handshake(
    stream: trio.abc.Stream, request: h11.Request, mode: Mode
) -> bytes:
    """Send ``request``, read the answer's head; return the bytes behind it."""
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
            if upgrade != {"tcp"}:
                raise TunnelError(101, f"switched to {sorted(upgrade)}, not tcp")
        # h11 is now in SWITCHED_PROTOCOL: what it did not parse is tunnel data.
        return bytes(conn.trailing_data[0])


async def open_tunnel(
    via: tuple[str, int] | str,
    target: tuple[str, int] | None,
    mode: Mode,
    *,
    auth: tuple[str, str] | None = None,
    path: str = "/",
    upstream_proxy: ParentProxy | None = None,
) -> trio.abc.HalfCloseableStream:
    """Connect to the hijack server at ``via`` and open a raw stream through it.

    ``mode="connect"``: ``CONNECT target`` (``target`` required), accepted on
    any 2xx; ``auth`` is sent as ``Proxy-Authorization: Basic``.
    ``mode="upgrade"``: ``GET path`` with ``Upgrade: tcp`` (``target`` must be
    None: the server picks the upstream), accepted on ``101`` with
    ``Upgrade: tcp``; ``auth`` is sent as ``Authorization: Basic``.

    Raises :class:`TunnelError` if the server says no (or does not speak
    HTTP), ``OSError`` if it cannot be reached. There is no timeout of its
    own: a server that never answers keeps it waiting, so wrap it in
    ``trio.fail_after`` where that matters. The returned stream yields
    the bytes that came right behind the answer first; the caller owns it and
    must close it. On error or cancel, the connection is closed. TCP
    keepalive is on with the ``Limits()`` defaults (30 s idle).

    ``mode="websocket"``: ``via`` is a ``ws://`` or ``wss://`` URL (``target``
    must be None: the bridge picks the upstream); the bytes travel as binary
    messages with websockify's ``binary`` subprotocol offered, ``auth`` is
    sent as ``Authorization: Basic``. The stream's ``send_eof`` closes the
    WebSocket, which has no half-close (see :mod:`hijack.upgrades.wsbridge`).

    ``upstream_proxy`` (connect and upgrade modes): reach ``via`` through
    this parent proxy (a company proxy between the client and the hijack
    server); its failures raise
    :class:`~hijack.upgrades.parent_proxy.ParentProxyError`.
    """
    if mode == "websocket" and upstream_proxy is not None:
        raise ValueError("websocket mode cannot go through an upstream proxy yet")
    if mode == "websocket":
        return await _open_websocket_tunnel(via, target, auth)
    if isinstance(via, str):
        raise ValueError(f"{mode} mode takes via as (host, port), not a URL")
    request = _request(via, target, mode, auth, path)
    stream: trio.abc.Stream
    if upstream_proxy is not None:
        stream = await upstream_proxy.connect(*via)
    else:
        stream = await trio.open_tcp_stream(*via)
    # A client behind a NAT is who loses an idle tunnel: keep the flow warm.
    set_tcp_keepalive(stream)
    try:
        prefix = await _handshake(stream, request, mode)
    except BaseException:
        await trio.aclose_forcefully(stream)
        raise
    return ReplayStream(stream, prefix)


async def _open_websocket_tunnel(
    via: tuple[str, int] | str,
    target: tuple[str, int] | None,
    auth: tuple[str, str] | None,
) -> trio.abc.HalfCloseableStream:
    from .wsbridge import SUBPROTOCOL, WebSocketStream
    from .wsclient import WebSocketRefused, connect_websocket

    _check_websocket_arguments(via, target)
    assert isinstance(via, str)
    try:
        websocket = await connect_websocket(via, subprotocols=[SUBPROTOCOL], auth=auth)
    except WebSocketRefused as exc:
        raise TunnelError(exc.status, exc.reason, exc.body) from None
    return WebSocketStream(websocket)


def _check_websocket_arguments(
    via: tuple[str, int] | str, target: tuple[str, int] | None
) -> None:
    if not isinstance(via, str) or not via.startswith(("ws://", "wss://")):
        raise ValueError(f"websocket mode needs via as a ws:// or wss:// URL: {via!r}")
    if target is not None:
        raise ValueError("websocket mode takes no target: the bridge picks it")


async def serve_forward(
    listen: tuple[str, int] | int,
    via: tuple[str, int] | str,
    target: tuple[str, int] | None,
    mode: Mode,
    *,
    auth: tuple[str, str] | None = None,
    upstream_proxy: ParentProxy | None = None,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on ``listen`` (``(host, port)``, or a port on 127.0.0.1; port 0
    picks one) and tunnel every connection through ``via`` (see
    :func:`open_tunnel`): the local client talks to ``target`` unchanged.

    ``task_status.started()`` gets the listeners. Runs until cancelled; a
    cancel closes the listeners and every forwarded connection. A tunnel that
    cannot be opened is logged on ``hijack.forward`` and its local connection
    closed; the other connections are not affected. On Linux the bytes move
    in a relay hub (one task for every forwarded connection, see
    :class:`~hijack.Hub`): each small message costs no scheduler pass of its
    own; elsewhere each connection awaits :func:`~hijack.relay`.
    """
    # A bad argument fails here, once.
    if mode == "websocket":
        _check_websocket_arguments(via, target)
    elif isinstance(via, str):
        raise ValueError(f"{mode} mode takes via as (host, port), not a URL")
    else:
        _request(via, target, mode, auth, "/")
    host, port = ("127.0.0.1", listen) if isinstance(listen, int) else listen
    listeners = await trio.open_tcp_listeners(port, host=host)

    hub: Hub | None = None

    async def forward(local: trio.SocketStream) -> None:
        from .parent_proxy import ParentProxyError

        try:
            tunnel = await open_tunnel(
                via, target, mode, auth=auth, upstream_proxy=upstream_proxy
            )
        except (OSError, TunnelError, ParentProxyError) as exc:
            where = via if isinstance(via, str) else join_host_port(*via)
            logger.warning("cannot open a tunnel via %s: %s", where, exc)
            await trio.aclose_forcefully(local)
            return
        if hub is not None and hub.can_take(local, tunnel):
            await hub.relay(local, tunnel)
        else:
            await relay(local, tunnel)

    async with trio.open_nursery() as nursery:
        try:
            hub = Hub()
        except RuntimeError:  # not Linux: every connection awaits relay()
            pass
        else:
            await nursery.start(hub.serve)
        await trio.serve_listeners(forward, listeners, task_status=task_status)
