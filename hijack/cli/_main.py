"""The ``hijack`` command: run the upgrades that ship with the toolkit.

Every server subcommand listens on ``--listen HOST:PORT`` (default
127.0.0.1:8080) or ``--unix PATH``, prints where it listens, and exits
cleanly on Ctrl-C or SIGTERM through a graceful shutdown (a second Ctrl-C
stops at once).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import trio

from .._address import join_host_port
from .._config import Limits
from .._exchange import Handler
from .._message import Request, Response
from .._proxyproto import ProxyProtocol
from .._relay import TunnelHook
from .._server import Server
from . import _admin, _state, _team
from ._arguments import (
    listen_address,
    parse_host_port,
    trusted_sender,
    user_pass,
    via_address,
)
from ._config_file import with_config_file
from ._service import add_serving_options, run_supervisor, setup_access_log
from ._supervisor import WORKER_FDS_ENV

if TYPE_CHECKING:  # imported where used: each subcommand loads only its own
    from ..upgrades.connect import ConnectPolicy

__all__ = ["main"]

DEFAULT_LISTEN = "127.0.0.1:8080"


# -- building the handler of each subcommand ----------------------------------


def _connect_policy(args: argparse.Namespace) -> ConnectPolicy:
    """The destination policy of ``proxy`` and ``wsbridge --targets``, from
    their shared --allow-port/--allow/--deny/--allow-private flags."""
    from ..upgrades.connect import ConnectPolicy

    return ConnectPolicy(
        allowed_ports=frozenset(args.allow_port or [443]),
        allow_private=args.allow_private,
        allow=tuple(args.allow),
        deny=tuple(args.deny),
    )


def _proxy_handler(args: argparse.Namespace, port: int | None) -> Handler:
    from ..upgrades.connect import ConnectProxy

    policy = _connect_policy(args)
    return ConnectProxy(
        policy,
        auth=args.auth,
        connect_timeout=args.connect_timeout,
        idle_timeout=args.idle_timeout,
        max_tunnels=args.max_tunnels,
        send_proxy_protocol=args.send_proxy_protocol,
        on_tunnel=args.on_tunnel,
        **_team.handler_options(args),
    )


def _echo_handler(args: argparse.Namespace, port: int | None) -> Handler:
    from ..upgrades.websocket import make_echo_handler

    return make_echo_handler(
        max_message_size=args.max_message_size,
        compression=None if args.no_compression else "deflate",
        ping_interval=args.ping_interval or None,  # 0 turns keepalive off
        ping_timeout=args.ping_timeout,
        on_close=args.on_websocket_close,
    )


def _tcp_handler(args: argparse.Namespace, port: int | None) -> Handler:
    from ..upgrades.tcp import TCPUpgrade

    return TCPUpgrade(
        args.upstream,
        idle_timeout=args.idle_timeout,
        send_proxy_protocol=args.send_proxy_protocol,
        on_tunnel=args.on_tunnel,
        **_team.handler_options(args),
    )


def _wsbridge_handler(args: argparse.Namespace, port: int | None) -> Handler:
    from ..upgrades.wsbridge import TargetFile, WebSocketBridge

    origins = args.allow_origin or None
    if args.targets is None:
        if args.allow_port or args.allow or args.deny or args.allow_private:
            raise SystemExit(
                "hijack wsbridge: --allow-port, --allow, --deny and --allow-private "
                "check --targets; the --upstream you name is trusted"
            )
        return WebSocketBridge(
            args.upstream,
            idle_timeout=args.idle_timeout,
            allowed_origins=origins,
            send_proxy_protocol=args.send_proxy_protocol,
        )
    try:
        targets = TargetFile(args.targets)
    except (OSError, ValueError) as exc:
        raise SystemExit(f"hijack wsbridge: --targets: {exc}") from None
    policy = _connect_policy(args)
    return WebSocketBridge(
        targets=targets,
        policy=policy,
        idle_timeout=args.idle_timeout,
        allowed_origins=origins,
        send_proxy_protocol=args.send_proxy_protocol,
    )


def demo_handler(
    port: int,
    on_tunnel: TunnelHook | None = None,
    on_websocket_close: Callable[[Any], None] | None = None,
) -> Handler:
    """Everything on one port. The CONNECT proxy and the TCP upgrade both
    reach this very server (127.0.0.1:port), so a tunnel works out of the
    box with nothing else running."""
    from ..upgrades.connect import ConnectPolicy, ConnectProxy
    from ..upgrades.tcp import TCPUpgrade, is_tcp_upgrade
    from ..upgrades.websocket import make_echo_handler

    echo = make_echo_handler(on_close=on_websocket_close)
    tcp = TCPUpgrade(("127.0.0.1", port), on_tunnel=on_tunnel)
    proxy = ConnectProxy(
        ConnectPolicy(allowed_ports=frozenset({port}), allow=("127.0.0.1",)),
        on_tunnel=on_tunnel,
    )

    async def demo(request: Request) -> Response | None:
        if request.method == "CONNECT":
            return await proxy(request)
        if is_tcp_upgrade(request):
            return await tcp(request)
        if request.path == "/hello":
            text = f"hello from hijack, connection {request.connection.id}\n"
            return Response(200, {"content-type": "text/plain"}, text.encode())
        return await echo(request)

    return demo


def _demo_handler(args: argparse.Namespace, port: int | None) -> Handler:
    if port is None:
        raise SystemExit("hijack demo: needs --listen (it tunnels to itself)")
    return demo_handler(port, args.on_tunnel, args.on_websocket_close)


# -- running ------------------------------------------------------------------


async def _serve(
    args: argparse.Namespace,
    make_handler: Callable[[argparse.Namespace, int | None], Handler],
    reparse: Callable[[], argparse.Namespace],
) -> None:
    from . import _service as _process
    from ._metrics import Health, Metrics

    worker = WORKER_FDS_ENV in os.environ
    metrics = Metrics() if args.metrics is not None else None
    proxy = (
        ProxyProtocol(
            args.proxy_protocol,
            on_reject=None if metrics is None else metrics.on_proxy_protocol_rejection,
        )
        if args.proxy_protocol
        else None
    )
    ssl_context = _process.tls_context(args)
    health = Health()
    if metrics is not None:
        args.on_tunnel = metrics.on_tunnel
        args.on_websocket_close = metrics.on_websocket_close
    with _process.open_signals() as signals:
        async with trio.open_nursery() as nursery:
            fds = _process.inherited_fds()
            opened = await _process.open_listeners(
                args, fds, tls=ssl_context is not None
            )
            server = Server(
                make_handler(args, opened.port),
                limits=Limits(shutdown_grace=args.shutdown_grace),
                on_state=() if metrics is None else metrics.on_state,
                on_request=() if metrics is None else metrics.on_request,
                on_accept_error=None if metrics is None else metrics.on_accept_error,
            )
            await _state.start_state(nursery, args, metrics)
            await _admin.start_admin(nursery, args)
            await nursery.start(
                _call(
                    server.serve_listeners,
                    opened.listeners,
                    ssl_context=ssl_context,
                    proxy_protocol=proxy,
                )
            )
            metrics_server = None
            if worker:
                nursery.start_soon(_process.watch_lifeline)
            if metrics is not None:
                nursery.start_soon(metrics.sample_forever, server)
                if not worker:
                    metrics_server = await _process.serve_metrics(
                        nursery, args.metrics, health, metrics
                    )

            def reload() -> None:
                new = reparse()
                new.on_tunnel = args.on_tunnel
                new.on_websocket_close = args.on_websocket_close
                server.handler = make_handler(new, opened.port)
                if ssl_context is not None and new.tls_cert and new.tls_key:
                    ssl_context.load_cert_chain(new.tls_cert, new.tls_key)

            where = opened.where
            _process.ready(health)
            if not worker:
                print(f"hijack {args.command} listening on {where}", flush=True)
            if args.command == "demo" and not worker:
                print(
                    f"try: curl {where}/hello\n"
                    f"     curl -p -x {where} {where}/hello   (CONNECT tunnel)\n"
                    f"     open {where}/ in a browser (WebSocket echo)",
                    flush=True,
                )
            await _process.serve_signals(
                signals, server, nursery, health=health, reload=reload
            )
            if metrics_server is not None:
                await metrics_server.shutdown(grace=0)
            nursery.cancel_scope.cancel()  # the metrics sampler


async def _forward(args: argparse.Namespace) -> None:
    from ..client.forward import serve_forward
    from ._stdio import forward_stdio

    target = args.target
    if args.mode in ("upgrade", "websocket"):
        target = None  # the server picks the upstream
    parent = args.upstream_proxy
    if args.listen == "-":
        await forward_stdio(
            args.via, target, args.mode, auth=args.auth, upstream_proxy=parent
        )
        return
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            _call(
                serve_forward,
                args.listen,
                args.via,
                target,
                args.mode,
                auth=args.auth,
                upstream_proxy=parent,
            )
        )
        host, port = listeners[0].socket.getsockname()[:2]
        print(f"hijack forward listening on {join_host_port(host, port)}", flush=True)
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for _ in signals:
                break
        nursery.cancel_scope.cancel()


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Callable[..., Any]:
    def bound(*more: Any, task_status: Any = trio.TASK_STATUS_IGNORED) -> Any:
        return fn(*args, *more, task_status=task_status, **kwargs)

    return bound


# -- the parser -----------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hijack",
        description="Serve WebSocket, CONNECT tunnel and raw TCP upgrades over "
        "HTTP/1.1, or forward local TCP connections through such a server.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: INFO; one line per tunnel at INFO)",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    listen = argparse.ArgumentParser(add_help=False)
    where = listen.add_mutually_exclusive_group()
    where.add_argument(
        "--listen",
        type=listen_address,
        default=listen_address(DEFAULT_LISTEN),
        metavar="HOST:PORT",
        help=f"TCP address to listen on (default: {DEFAULT_LISTEN}; port 0 picks "
        "a free port; [::1]:PORT for IPv6)",
    )
    where.add_argument(
        "--unix",
        metavar="PATH",
        help="listen on a UNIX socket at PATH instead (mode 0660)",
    )
    listen.add_argument(
        "--proxy-protocol",
        type=trusted_sender,
        action="append",
        default=[],
        metavar="NET",
        help="connections from NET (a balancer: 10.0.0.0/8, ::1, or 'unix' for "
        "every UNIX socket peer) must begin with a PROXY protocol v1/v2 header "
        "naming the client; others are served as they are (repeatable)",
    )
    add_serving_options(listen)
    idle = argparse.ArgumentParser(add_help=False)
    idle.add_argument(
        "--idle-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="close a tunnel with no byte either way for this long (default: 300)",
    )
    idle.add_argument(
        "--send-proxy-protocol",
        type=int,
        choices=[1, 2],
        metavar="1|2",
        help="begin every upstream connection with a PROXY protocol header of "
        "this version naming the client (for HAProxy accept-proxy, nginx "
        "proxy_protocol)",
    )

    chaining, team = _team.chaining_parser(), _team.team_parser()
    _state.add_state_options(team)
    _state.add_admin_options(team)
    proxy = commands.add_parser(
        "proxy",
        parents=[listen, idle, chaining, team],
        help="CONNECT tunnel (forward proxy) with a safe policy",
        description="A CONNECT forward proxy. By default it tunnels to port 443 "
        "only, and refuses loopback, private, link-local and other non-global "
        "destinations.",
    )
    proxy.add_argument(
        "--allow-port",
        type=int,
        action="append",
        metavar="N",
        help="allow tunnels to port N (repeatable; default: 443 only)",
    )
    proxy.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HOST_OR_NET",
        help="always allow this host name (.example.com: and subdomains) or "
        "network (10.0.0.0/8), even if not global (repeatable)",
    )
    proxy.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="HOST_OR_NET",
        help="always refuse this host name or network; deny wins (repeatable)",
    )
    proxy.add_argument(
        "--allow-private",
        action="store_true",
        help="allow loopback, private and other non-global destinations",
    )
    proxy.add_argument(
        "--auth",
        type=user_pass,
        metavar="USER:PASS",
        help="require Proxy-Authorization: Basic with these credentials (407)",
    )
    proxy.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="time to reach the upstream before answering 504 (default: 10)",
    )
    proxy.add_argument(
        "--max-tunnels",
        type=int,
        default=1000,
        metavar="N",
        help="tunnels open at once before answering 503 (default: 1000)",
    )
    proxy.set_defaults(run=_proxy_handler)

    echo = commands.add_parser(
        "echo",
        parents=[listen],
        help="WebSocket echo server with a page to try it in a browser",
        description="A WebSocket echo server: GET / serves a page that opens a "
        "WebSocket to this server and echoes what you type.",
    )
    echo.add_argument(
        "--max-message-size",
        type=int,
        default=1024 * 1024,
        metavar="BYTES",
        help="bigger incoming messages (inflated size) close with 1009 "
        "(default: 1048576)",
    )
    echo.add_argument(
        "--no-compression",
        action="store_true",
        help="never negotiate permessage-deflate (on by default)",
    )
    echo.add_argument(
        "--ping-interval",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="keepalive ping every SECONDS, 0 for none (default: 20)",
    )
    echo.add_argument(
        "--ping-timeout",
        type=float,
        default=20.0,
        metavar="SECONDS",
        help="close with 1011 when a pong takes longer (default: 20)",
    )
    echo.set_defaults(run=_echo_handler)

    tcp = commands.add_parser(
        "tcp",
        parents=[listen, idle, chaining, team],
        help="raw TCP proxy: Upgrade: tcp, then relay to an upstream",
        description="Answer 'Connection: Upgrade' + 'Upgrade: tcp' with 101 and "
        "relay the raw stream to the upstream.",
    )
    tcp.add_argument(
        "--upstream",
        type=parse_host_port,
        required=True,
        metavar="HOST:PORT",
        help="the TCP address every upgraded stream is relayed to",
    )
    tcp.set_defaults(run=_tcp_handler)

    wsbridge = commands.add_parser(
        "wsbridge",
        parents=[listen, idle],
        help="TCP over WebSocket: relay each WebSocket to a TCP upstream "
        "(websockify-compatible)",
        description="Accept WebSockets (subprotocol 'binary', as websockify "
        "clients such as noVNC use) and relay each one to a new TCP connection: "
        "binary messages carry the bytes. Plain HTTP requests get 426.",
    )
    bridge_to = wsbridge.add_mutually_exclusive_group(required=True)
    bridge_to.add_argument(
        "--upstream",
        type=parse_host_port,
        metavar="HOST:PORT",
        help="the TCP address every WebSocket is relayed to",
    )
    bridge_to.add_argument(
        "--targets",
        metavar="FILE",
        help="websockify token file ('token: host:port' lines); the client picks "
        "one with ?token=NAME; targets are checked by the CONNECT policy "
        "(--allow-port, --allow, --deny, --allow-private); re-read when it changes",
    )
    wsbridge.add_argument(
        "--allow-port",
        type=int,
        action="append",
        metavar="N",
        help="with --targets: allow targets on port N (repeatable; default: 443)",
    )
    wsbridge.add_argument(
        "--allow",
        action="append",
        default=[],
        metavar="HOST_OR_NET",
        help="with --targets: always allow this host name or network (repeatable)",
    )
    wsbridge.add_argument(
        "--deny",
        action="append",
        default=[],
        metavar="HOST_OR_NET",
        help="with --targets: always refuse this host name or network (repeatable)",
    )
    wsbridge.add_argument(
        "--allow-private",
        action="store_true",
        help="with --targets: allow loopback, private and other non-global targets",
    )
    wsbridge.add_argument(
        "--allow-origin",
        action="append",
        metavar="ORIGIN",
        help="accept browsers only from this Origin (https://host[:port]; "
        "repeatable; default: any). Clients that send no Origin (not browsers) "
        "are then refused too",
    )
    _state.add_admin_options(wsbridge)
    wsbridge.set_defaults(run=_wsbridge_handler)

    forward = commands.add_parser(
        "forward",
        parents=[chaining],
        help="client side: tunnel local TCP connections through a hijack server",
        description="Listen locally and open, for each connection, a tunnel "
        "through a hijack server (CONNECT or Upgrade: tcp), so any TCP client "
        "can use it unchanged. --listen - uses stdin/stdout (ssh ProxyCommand).",
    )
    forward.add_argument(
        "--listen",
        default=listen_address(DEFAULT_LISTEN),
        type=lambda t: t if t == "-" else listen_address(t),
        metavar="HOST:PORT",
        help=f"local address to listen on, or - for stdin/stdout (default: "
        f"{DEFAULT_LISTEN})",
    )
    forward.add_argument(
        "--via",
        type=via_address,
        required=True,
        metavar="HOST:PORT|URL",
        help="the hijack server to tunnel through; websocket mode: its "
        "ws://HOST:PORT/PATH or wss:// URL",
    )
    forward.add_argument(
        "--target",
        type=parse_host_port,
        metavar="HOST:PORT",
        help="where the tunnel goes (CONNECT mode; required there)",
    )
    forward.add_argument(
        "--mode",
        choices=["connect", "upgrade", "websocket"],
        default="connect",
        help="connect: CONNECT TARGET; upgrade: Upgrade: tcp (the server picks "
        "the upstream); websocket: binary messages over a WebSocket to a "
        "'hijack wsbridge' or websockify at --via URL (default: connect)",
    )
    forward.add_argument(
        "--auth",
        type=user_pass,
        metavar="USER:PASS",
        help="send these Basic credentials",
    )

    demo = commands.add_parser(
        "demo",
        parents=[listen],
        help="all of the above on one port, tunnelling to itself",
        description="WebSocket echo (GET / in a browser), CONNECT proxy and "
        "Upgrade: tcp on one port; tunnels may reach this server itself, so "
        "they work with nothing else running.",
    )
    demo.set_defaults(run=_demo_handler)
    _team.add_hash_password(commands)
    _admin.add_tunnels_command(commands)

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)

    def reparse() -> argparse.Namespace:
        return parser.parse_args(with_config_file(parser, argv))

    args = reparse()
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if args.command == "hash-password":
        return _team.hash_password_command()
    if args.command == "tunnels":
        return _admin.tunnels_command(args)
    if args.command == "forward":
        from ..client.forward import TunnelError

        if args.mode == "connect" and args.target is None:
            parser.error("forward --mode connect needs --target HOST:PORT")
        if args.mode == "websocket" and args.upstream_proxy is not None:
            parser.error("forward: --upstream-proxy works with connect and upgrade")
        if (args.mode == "websocket") != isinstance(args.via, str):
            parser.error(
                "forward: --via is a ws:// or wss:// URL in websocket mode, "
                "HOST:PORT otherwise"
            )
        try:
            trio.run(_forward, args)
        except (TunnelError, OSError) as exc:
            print(f"hijack forward: {exc}", file=sys.stderr, flush=True)
            return 1
        return 0
    setup_access_log(args.access_log_format)
    _state.check_options(args)
    if args.workers > 1 and WORKER_FDS_ENV not in os.environ:
        run_supervisor(args, argv)
        return 0
    return _state.run_reporting_state_errors(_serve, args, args.run, reparse)
