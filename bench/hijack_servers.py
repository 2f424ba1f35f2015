"""The hijack servers under test, one per process.

``python hijack_servers.py KIND PORT [--allow-port P ...]``

* ``connect``: ``ConnectProxy`` (CONNECT tunnels to the ``--allow-port``
  ports on 127.0.0.1), limits raised so the idle and scale rows are bounded
  by file descriptors, not by the proxy's default caps. Tunnels go to the
  relay hub (``--task-relay``: each awaits ``relay()`` in its handler, as
  before the hub). ``GET /objects`` answers the live Python objects by type
  (``bench/hub_rows.py`` counts what a tunnel leaves behind).
* ``echo``: ``request.hijack(Response(101))`` then a raw echo loop.
* ``ws``: the WebSocket echo of ``hijack.upgrades.websocket``.
* ``hello``: keep-alive hello world.

``--http2`` serves HTTP/2 too (prior knowledge on plain TCP; ALPN ``h2``
with ``--tls-cert``/``--tls-key``).

Everything here is hijack's public API, as a user would write it: the
bench measures the package, it does not reach into it.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import logging
import os
import resource
from typing import Any


def raise_fd_limit() -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=["connect", "echo", "ws", "hello"])
    parser.add_argument("port", type=int)
    parser.add_argument("--allow-port", type=int, action="append", default=[])
    parser.add_argument(
        "--task-relay", action="store_true", help="no hub: a relay() per tunnel"
    )
    parser.add_argument("--http2", action="store_true")
    parser.add_argument("--tls-cert")
    parser.add_argument("--tls-key")
    args = parser.parse_args()
    raise_fd_limit()
    # Warnings and errors (a failed tunnel, an fd shortage) go to the log.
    # (BENCH_LOG_LEVEL=INFO: one line per tunnel, to debug a failing row.)
    level = os.environ.get("BENCH_LOG_LEVEL", "WARNING")
    logging.basicConfig(level=level, format="%(name)s %(message)s")

    import trio

    import hijack

    handler: Any
    echo_handler, hello_handler = make_simple_handlers()
    if args.kind == "connect":
        from hijack.upgrades.connect import ConnectPolicy, ConnectProxy

        policy = ConnectPolicy(allowed_ports=set(args.allow_port), allow_private=True)
        handler = ConnectProxy(
            policy,
            max_tunnels=50_000,
            hand_over=not args.task_relay,
            fallback=objects_handler,
        )
    elif args.kind == "echo":
        handler = echo_handler
    elif args.kind == "ws":
        from hijack.upgrades.websocket import make_echo_handler

        handler = make_echo_handler(max_message_size=4 << 20)
    else:
        handler = hello_handler
    limits = hijack.Limits(max_connections=50_000)
    server = hijack.Server(handler, limits=limits, http2=args.http2)
    ssl_context = None
    if args.tls_cert:
        import ssl

        ssl_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ssl_context.load_cert_chain(args.tls_cert, args.tls_key)
    inherited = os.environ.get("HIJACK_WORKER_FDS")
    with contextlib.suppress(KeyboardInterrupt):
        if inherited:  # a worker of bench/workers.py's supervisor
            fds = [int(fd) for fd in inherited.split(",")]
            trio.run(serve_as_worker, server, hijack.listeners_from_fds(fds))
        else:
            trio.run(
                functools.partial(server.serve_tcp, args.port, ssl_context=ssl_context)
            )


async def serve_as_worker(server: Any, listeners: list[Any]) -> None:
    """Serve the supervisor's socket; say so on its ready pipe."""
    import trio

    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve_listeners, listeners)
        ready_fd = int(os.environ["HIJACK_WORKER_READY_FD"])
        os.write(ready_fd, b"1")
        os.close(ready_fd)


HELLO = b"Hello, world!"


async def objects_handler(request: Any) -> Any:
    """Live gc-tracked objects by type, as JSON (after a full collection)."""
    import collections
    import gc
    import json

    from hijack import Response

    gc.collect()
    counts = collections.Counter(type(o).__name__ for o in gc.get_objects())
    body = json.dumps({"total": sum(counts.values()), "types": counts}).encode()
    return Response(200, [("content-type", "application/json")], body)


def make_simple_handlers() -> tuple[Any, Any]:
    """The echo and hello handlers."""
    from hijack import Request, Response

    upgrade = [("Upgrade", "echo"), ("Connection", "Upgrade")]
    hello_headers = [("content-type", "text/plain")]

    async def echo_handler(request: Request) -> None:
        hijacked = await request.hijack(Response(101, upgrade))
        async with hijacked:
            while data := await hijacked.receive_some(65536):
                await hijacked.send_all(data)

    async def hello_handler(request: Request) -> Response:
        return Response(200, hello_headers, HELLO)

    return echo_handler, hello_handler


if __name__ == "__main__":
    main()
