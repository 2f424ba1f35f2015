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

import logging
from typing import TYPE_CHECKING, Literal

import trio

from .. import Hub, join_host_port
from ..tunnel._http_tunnel import TunnelError, build_request, open_http_tunnel
from ._relaying import relay_through, start_hub

if TYPE_CHECKING:
    from ..tunnel.parent_proxy import ParentProxy

__all__ = ["Mode", "TunnelError", "open_tunnel", "serve_forward"]

logger = logging.getLogger("hijack.forward")

Mode = Literal["connect", "upgrade", "websocket"]


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
    :class:`~hijack.tunnel.parent_proxy.ParentProxyError`.
    """
    if mode == "websocket" and upstream_proxy is not None:
        raise ValueError("websocket mode cannot go through an upstream proxy yet")
    if mode == "websocket":
        return await _open_websocket_tunnel(via, target, auth)
    if isinstance(via, str):
        raise ValueError(f"{mode} mode takes via as (host, port), not a URL")
    return await open_http_tunnel(
        via, target, mode, auth=auth, path=path, upstream_proxy=upstream_proxy
    )


async def _open_websocket_tunnel(
    via: tuple[str, int] | str,
    target: tuple[str, int] | None,
    auth: tuple[str, str] | None,
) -> trio.abc.HalfCloseableStream:
    from ..upgrades.wsbridge import SUBPROTOCOL, WebSocketStream
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
        build_request(via, target, mode, auth, "/")
    host, port = ("127.0.0.1", listen) if isinstance(listen, int) else listen
    listeners = await trio.open_tcp_listeners(port, host=host)

    hub: Hub | None = None

    async def forward(local: trio.SocketStream) -> None:
        from ..tunnel.parent_proxy import ParentProxyError

        try:
            tunnel = await open_tunnel(
                via, target, mode, auth=auth, upstream_proxy=upstream_proxy
            )
        except (OSError, TunnelError, ParentProxyError) as exc:
            where = via if isinstance(via, str) else join_host_port(*via)
            logger.warning("cannot open a tunnel via %s: %s", where, exc)
            await trio.aclose_forcefully(local)
            return
        await relay_through(hub, local, tunnel)

    async with trio.open_nursery() as nursery:
        hub = await start_hub(nursery)
        await trio.serve_listeners(forward, listeners, task_status=task_status)
