"""A local SOCKS5 server whose every CONNECT travels through a hijack
server: ``hijack forward --listen socks5://127.0.0.1:1080 --via ...``, the
``ssh -D`` of hijack (wstunnel's ``-L socks5``, chisel's ``socks``).

``via`` is either ``(host, port)`` of a CONNECT proxy (``hijack proxy``:
each SOCKS5 CONNECT becomes ``CONNECT host:port``) or a ``ws://`` /
``wss://`` URL of a :class:`~hijack.upgrades.wstunnel.WebSocketTunnel`
(each becomes a WebSocket to ``URL?tcp=host:port``). Names are sent as
names: the hijack server resolves and judges them with its policy.

No authentication on the local side (it listens on loopback); BIND and UDP
ASSOCIATE are answered ``07``. The server's refusal comes back as a reply
code: 403 and 429 -> ``02``, 502 -> ``04``, 504 -> ``06``, anything else
(the server unreachable, 401/407) -> ``01``. One INFO line per CONNECT on
``hijack.forward``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import quote

import trio

from .. import Hub, join_host_port
from ..socks import codec
from ..socks.codec import AuthMethod, Command, Reply, SocksError
from ..tunnel._http_tunnel import TunnelError, open_http_tunnel
from ._relaying import relay_through, start_hub

if TYPE_CHECKING:
    from ..tunnel.parent_proxy import ParentProxy

__all__ = ["open_via", "serve_socks_forward"]

logger = logging.getLogger("hijack.forward")

M = TypeVar("M")

HANDSHAKE_TIMEOUT = 10.0
_STATUS_REPLIES = {
    403: Reply.NOT_ALLOWED,
    429: Reply.NOT_ALLOWED,
    502: Reply.HOST_UNREACHABLE,
    504: Reply.TTL_EXPIRED,
}


async def open_via(
    via: tuple[str, int] | str,
    target: tuple[str, int],
    *,
    auth: tuple[str, str] | None = None,
    upstream_proxy: ParentProxy | None = None,
) -> trio.abc.HalfCloseableStream:
    """A stream to ``target`` through the hijack server at ``via`` (see the
    module doc). Raises :class:`~hijack.client.forward.TunnelError` (the
    server said no) or
    ``OSError``; the caller owns the stream."""
    if isinstance(via, str):
        from ..upgrades.wsbridge import SUBPROTOCOL, WebSocketStream
        from .wsclient import WebSocketRefused, connect_websocket

        separator = "&" if "?" in via else "?"
        url = f"{via}{separator}tcp={quote(join_host_port(*target), safe='[]:')}"
        try:
            websocket = await connect_websocket(
                url, subprotocols=[SUBPROTOCOL], auth=auth
            )
        except WebSocketRefused as exc:
            raise TunnelError(exc.status, exc.reason, exc.body) from None
        return WebSocketStream(websocket)
    return await open_http_tunnel(
        via, target, "connect", auth=auth, upstream_proxy=upstream_proxy
    )


async def serve_socks_forward(
    listen: tuple[str, int],
    via: tuple[str, int] | str,
    *,
    auth: tuple[str, str] | None = None,
    upstream_proxy: ParentProxy | None = None,
    connect_timeout: float = 30.0,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve SOCKS5 on ``listen`` until cancelled; ``task_status.started()``
    gets the listeners. A cancel closes them and every forwarded
    connection."""
    host, port = listen
    listeners = await trio.open_tcp_listeners(port, host=host)
    hub: Hub | None = None

    async def serve(local: trio.SocketStream) -> None:
        async with local:
            await _serve_one(local, via, auth, upstream_proxy, connect_timeout, hub)

    async with trio.open_nursery() as nursery:
        hub = await start_hub(nursery)
        await trio.serve_listeners(serve, listeners, task_status=task_status)


async def _serve_one(
    local: trio.SocketStream,
    via: tuple[str, int] | str,
    auth: tuple[str, str] | None,
    upstream_proxy: ParentProxy | None,
    connect_timeout: float,
    hub: Hub | None,
) -> None:
    buffer = bytearray()
    try:
        with trio.fail_after(HANDSHAKE_TIMEOUT):
            methods = await _read(local, buffer, codec.parse_greeting)
            if AuthMethod.NO_AUTH not in methods:
                await local.send_all(codec.encode_method(AuthMethod.NO_ACCEPTABLE))
                return
            await local.send_all(codec.encode_method(AuthMethod.NO_AUTH))
            request = await _read(local, buffer, codec.parse_request)
    except (SocksError, trio.TooSlowError, trio.BrokenResourceError, EOFError) as exc:
        reply = exc.reply if isinstance(exc, SocksError) else None
        if reply is not None:
            await _answer(local, reply)
        return
    target = join_host_port(request.host, request.port)
    if request.command is not Command.CONNECT:
        await _answer(local, Reply.COMMAND_NOT_SUPPORTED)
        return
    try:
        with trio.fail_after(connect_timeout):
            tunnel = await open_via(
                via,
                (request.host, request.port),
                auth=auth,
                upstream_proxy=upstream_proxy,
            )
    except (TunnelError, OSError, trio.TooSlowError) as exc:
        status = exc.status if isinstance(exc, TunnelError) else 0
        reply = _STATUS_REPLIES.get(status, Reply.GENERAL_FAILURE)
        if isinstance(exc, trio.TooSlowError):
            reply = Reply.TTL_EXPIRED
        logger.info("SOCKS5 CONNECT %s refused: %s", target, exc or "timeout")
        await _answer(local, reply)
        return
    try:
        await local.send_all(codec.encode_reply(Reply.SUCCEEDED))
        if buffer:
            await tunnel.send_all(bytes(buffer))
    except (trio.BrokenResourceError, OSError):
        await trio.aclose_forcefully(tunnel)
        return
    logger.info("SOCKS5 CONNECT %s via %s", target, via)
    await relay_through(hub, local, tunnel)


async def _read(
    stream: trio.abc.ReceiveStream,
    buffer: bytearray,
    parse: Callable[[bytearray], tuple[M, int] | None],
) -> M:
    """The next message ``parse`` reads (the greeting and the request are
    bounded by the codec, so ``buffer`` is too)."""
    while True:
        parsed = parse(buffer)
        if parsed is not None:
            message, size = parsed
            del buffer[:size]
            return message
        data = await stream.receive_some(4096)
        if not data:
            raise EOFError
        buffer += data


async def _answer(stream: trio.abc.SendStream, reply: Reply) -> None:
    with contextlib.suppress(trio.BrokenResourceError, OSError):
        await stream.send_all(codec.encode_reply(reply))
