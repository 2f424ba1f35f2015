"""``hijack socks``, and the SOCKS5 and UDP pieces of ``hijack proxy``
(``--socks``, ``--websocket-tunnel``) and ``hijack forward``
(``--listen socks5://``, ``--udp``).

A server command serves SOCKS5 through the core Server's ``sniff`` hook:
the handler it builds is a :class:`SocksFront`, an HTTP handler that also
offers ``sniff`` (the Service passes a handler's ``sniff`` to the Server,
and again on every reload), so a SIGHUP rebuilds the SOCKS side with the
rest.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import ipaddress
import os
import signal
import sys
from typing import Any

from .._address import join_host_port
from .._exchange import Handler, StreamHandler
from .._message import HTTPError, Request, Response
from . import _team
from ._arguments import listen_address, positive_float, positive_int, user_pass
from ._command import Command, HandlerContext, StartupError
from ._options import add_policy_options, connect_policy

__all__ = [
    "COMMAND",
    "SocksFront",
    "SocksListen",
    "add_forward_options",
    "add_proxy_options",
    "check_forward",
    "check_no_auth",
    "forward_listen",
    "run_forward",
    "with_socks",
]


class SocksFront:
    """An HTTP handler that also serves SOCKS5: ``sniff`` (for
    ``Server(sniff=...)``) takes connections whose first byte is 0x05
    (every connection when ``only``), ``http`` answers the rest (None: a
    SOCKS-only port, where no connection reaches HTTP)."""

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


# -- building ---------------------------------------------------------------------


def _socks_server(
    args: argparse.Namespace,
    context: HandlerContext,
    policy: Any,
    options: dict[str, Any],
) -> Any:
    from ..socks import SocksServer

    return SocksServer(
        policy,
        udp=not args.no_udp,
        udp_idle_timeout=args.udp_idle_timeout,
        **_team.tunnel_options(args, context),
        **options,
    )


def build_handler(args: argparse.Namespace, context: HandlerContext) -> Handler:
    """``hijack socks``: every connection is SOCKS5."""
    options = _team.handler_options(args, context)
    server = _socks_server(args, context, connect_policy(args), options)
    return SocksFront(server, None, only=True)


def with_socks(
    args: argparse.Namespace,
    context: HandlerContext,
    http: Any,
    fallback: Handler | None = None,
) -> Handler:
    """``hijack proxy``'s handler with what this module adds: WebSocket
    tunnels (``--websocket-tunnel``) and SOCKS5 on the same port
    (``--socks``), sharing the CONNECT proxy ``http``'s policy, users,
    routes and limits; other requests go to ``fallback`` (default:
    ``http``)."""
    options = {
        "users": http.users,
        "routes": http.life.routes,
        "limits": http.life.limits,
    }
    handler: Handler = http if fallback is None else fallback
    if args.websocket_tunnel:
        from ..upgrades.wstunnel import WebSocketTunnel

        handler = WebSocketTunnel(
            http.policy,
            path=args.websocket_tunnel,
            connect_timeout=args.connect_timeout,
            idle_timeout=args.idle_timeout,
            udp_idle_timeout=args.udp_idle_timeout,
            on_tunnel=context.hooks.on_tunnel,
            fallback=handler,
            **options,
        )
    if not args.socks:
        return handler
    # The CONNECT proxy's policy object: built once, judged alike.
    server = _socks_server(args, context, http.policy, options)
    return SocksFront(server, handler, only=False)


def check_no_auth(args: argparse.Namespace) -> None:
    """SOCKS5 without authentication only where no one else can reach it:
    a loopback or UNIX listener, unless ``--socks-without-auth`` says so."""
    if args.command != "socks" and not args.socks:
        return
    if args.auth or args.users or args.socks_without_auth or args.unix is not None:
        return
    host = args.listen[0]
    loopback = host == "localhost"
    with contextlib.suppress(ValueError):  # a name: only localhost counts
        loopback = loopback or ipaddress.ip_address(host).is_loopback
    if not loopback or os.environ.get("LISTEN_FDS"):
        raise StartupError(
            "SOCKS5 without authentication listens on loopback only; give "
            "--users FILE or --auth USER:PASS, or --socks-without-auth"
        )


def _check(args: argparse.Namespace) -> None:
    _team.check_with_state(args)
    check_no_auth(args)


# -- the options ------------------------------------------------------------------


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
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="end a UDP association (or a WebSocket UDP flow) with no datagram "
        "either way for this long (default: 60)",
    )


def add_proxy_options(parser: argparse.ArgumentParser) -> None:
    """``hijack proxy --socks``, ``--websocket-tunnel`` and the options they
    share with ``hijack socks``."""
    parser.add_argument(
        "--socks",
        action="store_true",
        help="also answer SOCKS5 on the same port (told apart by the first "
        "byte), with the same policy, users and limits",
    )
    parser.add_argument(
        "--websocket-tunnel",
        metavar="PATH",
        help="also serve WebSocket tunnels at PATH: ?tcp=HOST:PORT (hijack "
        "forward --listen socks5://... --via ws://...) and ?udp=HOST:PORT "
        "(hijack forward --udp), judged by the same policy, users and limits",
    )
    _socks_options(parser)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_policy_options(parser)
    parser.add_argument(
        "--auth",
        type=user_pass,
        metavar="USER:PASS",
        help="require RFC 1929 username/password with these credentials",
    )
    parser.add_argument(
        "--connect-timeout",
        type=positive_float,
        default=10.0,
        metavar="SECONDS",
        help="time to reach the destination before answering 06 (default: 10)",
    )
    parser.add_argument(
        "--max-tunnels",
        type=positive_int,
        default=1000,
        metavar="N",
        help="tunnels and UDP associations open at once (default: 1000)",
    )
    _socks_options(parser)


COMMAND = Command(
    name="socks",
    help="SOCKS5 proxy (CONNECT, UDP ASSOCIATE) with the CONNECT policy",
    description="A SOCKS5 proxy (RFC 1928, username/password RFC 1929). "
    "Destinations are judged by the same policy as 'hijack proxy': port 443 "
    "only and no loopback, private or other non-global destination unless "
    "allowed. Without --users or --auth it listens on loopback only.",
    groups=("server", "tunnel", "chaining", "team", "state", "admin"),
    add_arguments=add_arguments,
    check=_check,
    handler=build_handler,
)


# -- hijack forward: the local SOCKS5 server and UDP -------------------------------


class SocksListen(tuple[str, int]):
    """``--listen socks5://HOST:PORT`` of ``hijack forward``."""

    def __new__(cls, host: str, port: int) -> SocksListen:
        return super().__new__(cls, (host, port))


def forward_listen(text: str) -> Any:
    """``-``, ``HOST:PORT`` or ``socks5://HOST:PORT`` (a SocksListen)."""
    if text == "-":
        return text
    if text.startswith("socks5://"):
        return SocksListen(*listen_address(text.removeprefix("socks5://")))
    return listen_address(text)


def add_forward_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--udp",
        action="store_true",
        help="forward UDP: every datagram to --listen goes to --target as one "
        "WebSocket message through --via ws://HOST:PORT/PATH (a 'hijack proxy "
        "--websocket-tunnel PATH'), one WebSocket per local source",
    )
    parser.add_argument(
        "--udp-idle-timeout",
        type=positive_float,
        default=60.0,
        metavar="SECONDS",
        help="with --udp: end a flow with no datagram either way for this "
        "long (default: 60)",
    )


def wants_forward(args: argparse.Namespace) -> bool:
    """A SOCKS5 or UDP forward (this module's), not a TCP one."""
    return isinstance(args.listen, SocksListen) or bool(args.udp)


def check_forward(args: argparse.Namespace) -> None:
    socks = isinstance(args.listen, SocksListen)
    if socks and args.udp:
        raise StartupError("--udp listens on HOST:PORT, not socks5://")
    if socks and args.target is not None:
        raise StartupError("--listen socks5://: the SOCKS5 client names the target")
    if args.udp and (args.target is None or not isinstance(args.via, str)):
        raise StartupError(
            "--udp needs --target HOST:PORT and --via ws://... or wss://..."
        )
    if args.udp and args.listen == "-":
        raise StartupError("--udp listens on HOST:PORT, not -")
    if isinstance(args.via, str) and args.upstream_proxy is not None:
        raise StartupError("--upstream-proxy works with --via HOST:PORT")


def run_forward(args: argparse.Namespace) -> int:
    """Run a SOCKS5 or UDP forward until SIGINT/SIGTERM; the exit status."""
    import trio

    try:
        trio.run(_forward, args)
    except OSError as exc:
        print(f"hijack forward: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


async def _forward(args: argparse.Namespace) -> None:
    import trio

    from ..client.socks_forward import serve_socks_forward
    from ..client.udp_forward import serve_udp_forward

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            if isinstance(args.listen, SocksListen):
                listeners = await nursery.start(
                    functools.partial(
                        serve_socks_forward,
                        (args.listen[0], args.listen[1]),
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
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()
