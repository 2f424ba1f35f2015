"""``hijack forward``: the client side; tunnels local TCP connections (or
stdin/stdout) through a hijack server."""

from __future__ import annotations

import argparse
import signal
import sys

import trio

from .._address import join_host_port
from . import _reverse, _socks
from ._arguments import listen_address, parse_host_port, user_pass, via_address
from ._command import Command, CommandLine, StartupError, only_one
from ._options import DEFAULT_LISTEN

__all__ = ["COMMAND"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--listen",
        default=listen_address(DEFAULT_LISTEN),
        type=_socks.forward_listen,
        metavar="HOST:PORT",
        help=f"local address to listen on, - for stdin/stdout, or "
        f"socks5://HOST:PORT for a local SOCKS5 server (default: {DEFAULT_LISTEN})",
    )
    parser.add_argument(
        "--via",
        type=via_address,
        required=True,
        metavar="HOST:PORT|URL",
        help="the hijack server to tunnel through; websocket mode: its "
        "ws://HOST:PORT/PATH or wss:// URL",
    )
    parser.add_argument(
        "--target",
        type=parse_host_port,
        metavar="HOST:PORT",
        help="where the tunnel goes (CONNECT mode; required there)",
    )
    parser.add_argument(
        "--mode",
        choices=["connect", "upgrade", "websocket"],
        default="connect",
        help="connect: CONNECT TARGET; upgrade: Upgrade: tcp (the server picks "
        "the upstream); websocket: binary messages over a WebSocket to a "
        "'hijack wsbridge' or websockify at --via URL (default: connect)",
    )
    parser.add_argument(
        "--auth",
        type=user_pass,
        metavar="USER:PASS",
        help="send these Basic credentials",
    )
    _reverse.add_client_options(parser)
    _socks.add_forward_options(parser)


def check(args: argparse.Namespace) -> None:
    if args.reverse:
        return _reverse.check_client(args)
    if _socks.wants_forward(args):
        _socks.check_forward(args)
        return
    if args.mode == "connect" and args.target is None:
        raise StartupError("--mode connect needs --target HOST:PORT")
    if args.mode == "websocket" and args.upstream_proxy is not None:
        raise StartupError("--upstream-proxy works with connect and upgrade")
    if (args.mode == "websocket") != isinstance(args.via, str):
        raise StartupError(
            "--via is a ws:// or wss:// URL in websocket mode, HOST:PORT otherwise"
        )


def run(args: argparse.Namespace, line: CommandLine) -> int:
    from ..client.forward import TunnelError

    if args.reverse:
        return _reverse.run_client(args)
    if _socks.wants_forward(args):
        return _socks.run_forward(args)
    try:
        trio.run(_forward, args)
    except BaseExceptionGroup as group:  # from the nursery
        error = only_one(group, StartupError, KeyboardInterrupt, TunnelError, OSError)
        if isinstance(error, BaseExceptionGroup):
            raise
        if not isinstance(error, TunnelError | OSError):
            raise error from None
        print(f"hijack forward: {error}", file=sys.stderr, flush=True)
        return 1
    except (TunnelError, OSError) as exc:  # stdin/stdout: the one tunnel failed
        print(f"hijack forward: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


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
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            try:
                listeners = await nursery.start(
                    lambda task_status: serve_forward(
                        args.listen,
                        args.via,
                        target,
                        args.mode,
                        auth=args.auth,
                        upstream_proxy=parent,
                        task_status=task_status,
                    )
                )
            except OSError as exc:
                where = join_host_port(*args.listen)
                raise StartupError(f"--listen {where}: {exc.strerror or exc}") from None
            host, port = listeners[0].socket.getsockname()[:2]
            print(
                f"hijack forward listening on {join_host_port(host, port)}",
                flush=True,
            )
            async for _ in signals:
                break
            nursery.cancel_scope.cancel()


COMMAND = Command(
    name="forward",
    help="client side: tunnel local TCP connections through a hijack server",
    description="Listen locally and open, for each connection, a tunnel "
    "through a hijack server (CONNECT or Upgrade: tcp), so any TCP client "
    "can use it unchanged. --listen - uses stdin/stdout (ssh ProxyCommand).",
    groups=("chaining",),
    add_arguments=add_arguments,
    check=check,
    run=run,
)
