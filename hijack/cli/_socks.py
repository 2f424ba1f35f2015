"""The command's SOCKS5 wiring: ``hijack socks`` and ``hijack proxy --socks``.

Both run the core :class:`~hijack.Server` with a ``sniff`` hook that hands
SOCKS5 connections to a :class:`~hijack.socks.SocksServer`; the HTTP handler
the command builds carries that SOCKS server (``SocksFront.socks``), so a
SIGHUP reload, which rebuilds the handler, rebuilds the SOCKS side too.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import os
import signal
from collections.abc import Callable
from typing import Any

from .._address import join_host_port
from .._exchange import Handler
from .._message import HTTPError, Request, Response
from .._server import Sniffer, StreamHandler
from . import _team

__all__ = [
    "SocksFront",
    "add_forward_options",
    "add_proxy_options",
    "add_socks_command",
    "check_arguments",
    "forward_command",
    "forward_listen",
    "sniffer",
    "socks_handler",
    "with_socks",
]


class SocksFront:
    """An HTTP handler that also serves SOCKS5 through the server's sniff
    hook: ``http`` answers HTTP (None: 400, a SOCKS-only port), ``socks``
    takes connections whose first byte is 0x05 (every connection when
    ``only``)."""

    def __init__(self, socks: Any, http: Handler | None, *, only: bool) -> None:
        self.socks = socks
        self.http = http
        self.only = only

    async def __call__(self, request: Request) -> Response | None:
        if self.http is None:  # pragma: no cover - sniff takes every connection
            raise HTTPError(400, "this port speaks SOCKS5")
        return await self.http(request)

    def sniff(self, first: bytes) -> StreamHandler | None:
        if self.only:
            return self.socks.sniff_all(first)  # type: ignore[no-any-return]
        return self.socks.sniff(first)  # type: ignore[no-any-return]


def sniffer(args: argparse.Namespace, current: Callable[[], Handler]) -> Sniffer | None:
    """The Server's ``sniff`` for this command: it asks the handler in
    service now (``current()``, replaced on reload) to sniff."""
    if args.command != "socks" and not getattr(args, "socks", False):
        return None

    def sniff(first: bytes) -> StreamHandler | None:
        handler = current()
        if isinstance(handler, SocksFront):
            return handler.sniff(first)
        return None  # pragma: no cover - the handler is always a SocksFront

    return sniff


# -- building -----------------------------------------------------------------


def _policy(args: argparse.Namespace) -> Any:
    from ..tunnel.policy import ConnectPolicy

    return ConnectPolicy(
        allowed_ports=frozenset(args.allow_port or [443]),
        allow_private=args.allow_private,
        allow=tuple(args.allow),
        deny=tuple(args.deny),
    )


def _socks_server(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    from ..socks import SocksServer

    return SocksServer(
        _policy(args),
        auth=args.auth,
        connect_timeout=args.connect_timeout,
        idle_timeout=args.idle_timeout,
        max_tunnels=args.max_tunnels,
        send_proxy_protocol=args.send_proxy_protocol,
        on_tunnel=getattr(args, "on_tunnel", None),
        udp=not args.no_udp,
        udp_idle_timeout=args.udp_idle_timeout,
        **options,
    )


def socks_handler(args: argparse.Namespace, port: int | None) -> Handler:
    """``hijack socks``: every connection is SOCKS5."""
    return SocksFront(_socks_server(args, _team.handler_options(args)), None, only=True)


def with_socks(args: argparse.Namespace, http: Any) -> Handler:
    """``hijack proxy``'s handler with what this module adds: SOCKS5 on the
    same port (``--socks``) and WebSocket tunnels (``--websocket-tunnel``),
    sharing the CONNECT proxy's policy, users, routes and limits."""
    options = {
        "users": http.users,
        "routes": http.life.routes,
        "limits": http.life.limits,
    }
    handler: Handler = http
    if args.websocket_tunnel:
        from ..upgrades.wstunnel import WebSocketTunnel

        handler = WebSocketTunnel(
            http.policy,
            path=args.websocket_tunnel,
            connect_timeout=args.connect_timeout,
            idle_timeout=args.idle_timeout,
            udp_idle_timeout=args.udp_idle_timeout,
            on_tunnel=getattr(args, "on_tunnel", None),
            fallback=http,
            **options,
        )
    if not args.socks:
        return handler
    return SocksFront(_socks_server(args, options), handler, only=False)


def check_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """SOCKS5 without authentication only where no one else can reach it:
    a loopback or UNIX listener, unless ``--socks-without-auth`` says so."""
    if args.command != "socks" and not getattr(args, "socks", False):
        return
    if args.auth or args.users or args.socks_without_auth:
        return
    if args.unix is not None:
        return
    host = args.listen[0]
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):  # a name: only localhost counts
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback or os.environ.get("LISTEN_FDS"):
        parser.error(
            f"{args.command}: SOCKS5 without authentication listens on loopback "
            "only; give --users FILE or --auth USER:PASS, or --socks-without-auth"
        )


# -- the parser -------------------------------------------------------------------


def _socks_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--socks-without-auth",
        action="store_true",
        help="accept SOCKS5 clients without authentication on a listener that "
        "is not loopback (refused otherwise without --users or --auth)",
    )
    parser.add_argument(
        "--no-udp",
        action="store_true",
        help="answer SOCKS5 UDP ASSOCIATE with 07 (command not supported)",
    )
    parser.add_argument(
        "--udp-idle-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="end a UDP association with no datagram either way for this long "
        "(default: 60)",
    )


def add_proxy_options(proxy: argparse.ArgumentParser) -> None:
    """``hijack proxy --socks``, ``--websocket-tunnel`` and the options they
    share with ``hijack socks``."""
    proxy.add_argument(
        "--socks",
        action="store_true",
        help="also answer SOCKS5 on the same port (told apart by the first "
        "byte), with the same policy, users and limits",
    )
    proxy.add_argument(
        "--websocket-tunnel",
        metavar="PATH",
        help="also serve WebSocket tunnels at PATH: ?tcp=HOST:PORT (hijack "
        "forward --listen socks5://... --via ws://...) and ?udp=HOST:PORT "
        "(hijack forward --udp), judged by the same policy, users and limits",
    )
    _socks_options(proxy)


def add_socks_command(
    commands: Any, parents: list[argparse.ArgumentParser]
) -> argparse.ArgumentParser:
    socks: argparse.ArgumentParser = commands.add_parser(
        "socks",
        parents=parents,
        help="SOCKS5 proxy (CONNECT, UDP ASSOCIATE) with the CONNECT policy",
        description="A SOCKS5 proxy (RFC 1928, username/password RFC 1929). "
        "Destinations are judged by the same policy as 'hijack proxy': port "
        "443 only and no loopback, private or other non-global destination "
        "unless allowed. Without --users or --auth it listens on loopback only.",
    )
    socks.add_argument(
        "--allow-port",
        type=int,
        action="append",
        metavar="N",
        help="allow destinations on port N (repeatable; default: 443 only)",
    )
    socks.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HOST_OR_NET",
        help="always allow this host name (.example.com: and subdomains) or "
        "network, even if not global (repeatable)",
    )
    socks.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="HOST_OR_NET",
        help="always refuse this host name or network; deny wins (repeatable)",
    )
    socks.add_argument(
        "--allow-private",
        action="store_true",
        help="allow loopback, private and other non-global destinations",
    )
    socks.add_argument(
        "--auth",
        type=_user_pass,
        metavar="USER:PASS",
        help="require RFC 1929 username/password with these credentials",
    )
    socks.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time to reach the destination before answering 06 (default: 10)",
    )
    socks.add_argument(
        "--max-tunnels",
        type=int,
        default=1000,
        metavar="N",
        help="tunnels and UDP associations open at once (default: 1000)",
    )
    _socks_options(socks)
    socks.set_defaults(run=socks_handler)
    return socks


def _user_pass(text: str) -> tuple[str, str]:
    from ._arguments import user_pass

    return user_pass(text)


# -- hijack forward: the local SOCKS5 server and UDP -------------------------------


def forward_listen(text: str) -> Any:
    """``--listen`` of ``hijack forward``: ``-``, ``HOST:PORT`` or
    ``socks5://HOST:PORT`` (a :class:`SocksListen`)."""
    from ._arguments import listen_address

    if text == "-":
        return text
    if text.startswith("socks5://"):
        return SocksListen(*listen_address(text.removeprefix("socks5://")))
    return listen_address(text)


class SocksListen(tuple[str, int]):
    """``socks5://HOST:PORT``: serve SOCKS5 there."""

    def __new__(cls, host: str, port: int) -> SocksListen:
        return super().__new__(cls, (host, port))


def add_forward_options(forward: argparse.ArgumentParser) -> None:
    forward.add_argument(
        "--udp",
        action="store_true",
        help="forward UDP: every datagram to --listen goes to --target as one "
        "WebSocket message through --via ws://HOST:PORT/PATH (a 'hijack proxy "
        "--websocket-tunnel PATH'), one WebSocket per local source",
    )
    forward.add_argument(
        "--udp-idle-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="with --udp: end a flow with no datagram either way for this "
        "long (default: 60)",
    )


def forward_command(
    parser: argparse.ArgumentParser, args: argparse.Namespace
) -> int | None:
    """Run ``hijack forward`` when it is a SOCKS5 or UDP forward (its exit
    status); None for the other kinds."""
    import sys

    import trio

    socks = isinstance(args.listen, SocksListen)
    if not socks and not args.udp:
        return None
    if socks and args.udp:
        parser.error("forward: --udp listens on HOST:PORT, not socks5://")
    if socks and args.target is not None:
        parser.error("forward --listen socks5://: the SOCKS5 client names the target")
    if args.udp and (args.target is None or not isinstance(args.via, str)):
        parser.error(
            "forward --udp needs --target HOST:PORT and --via ws://... or wss://..."
        )
    if isinstance(args.via, str) and args.upstream_proxy is not None:
        parser.error("forward: --upstream-proxy works with --via HOST:PORT")

    async def run() -> None:
        from ..client.socks_forward import serve_socks_forward
        from ..client.udp_forward import serve_udp_forward

        async with trio.open_nursery() as nursery:
            if socks:
                listeners = await nursery.start(
                    functools.partial(
                        serve_socks_forward,
                        tuple(args.listen),
                        args.via,
                        auth=args.auth,
                        upstream_proxy=args.upstream_proxy,
                    )
                )
                host, port = listeners[0].socket.getsockname()[:2]
                where = f"socks5://{join_host_port(host, port)}"
            else:
                sock = await nursery.start(
                    functools.partial(
                        serve_udp_forward,
                        args.listen,
                        args.via,
                        args.target,
                        auth=args.auth,
                        idle_timeout=args.udp_idle_timeout,
                    )
                )
                host, port = sock.getsockname()[:2]
                where = f"udp://{join_host_port(host, port)}"
            print(f"hijack forward listening on {where}", flush=True)
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            nursery.cancel_scope.cancel()

    try:
        trio.run(run)
    except OSError as exc:
        print(f"hijack forward: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0
