"""Peer servers written for the benchmark, one per process.

``python peer_servers.py KIND PORT``

* ``tornado-echo``: Tornado ``RequestHandler.detach()`` (its way to take the
  connection), answer ``101`` by hand, then a raw echo loop: the same job as
  hijack's ``echo``.
* ``websockets-echo``: the ``websockets`` asyncio server, echo.
* ``trio-websocket-echo``: trio-websocket's ``serve_websocket``, echo.

Every WebSocket server gets the same settings as hijack's: a 4 MiB message
limit, no compression (the client offers none), no keepalive pings.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import sys

MAX_MESSAGE = 4 << 20
UPGRADE_ANSWER = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
)


def tornado_echo(port: int) -> None:
    import tornado.iostream
    import tornado.web

    class Echo(tornado.web.RequestHandler):  # type: ignore[misc]  # untyped peer
        async def get(self) -> None:
            stream = self.detach()
            try:
                await stream.write(UPGRADE_ANSWER)
                while True:
                    data = await stream.read_bytes(65536, partial=True)
                    await stream.write(data)
            except tornado.iostream.StreamClosedError:
                pass
            finally:
                stream.close()

    async def run() -> None:
        app = tornado.web.Application([(r"/", Echo)])
        app.listen(port, address="127.0.0.1", backlog=4096)
        await asyncio.Event().wait()

    asyncio.run(run())


def websockets_echo(port: int) -> None:
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.exceptions import ConnectionClosed

    async def echo(ws: ServerConnection) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        except ConnectionClosed:
            pass

    async def run() -> None:
        async with serve(
            echo,
            "127.0.0.1",
            port,
            max_size=MAX_MESSAGE,
            compression=None,
            ping_interval=None,
            backlog=4096,
        ) as server:
            await server.serve_forever()

    asyncio.run(run())


def trio_websocket_echo(port: int) -> None:
    import trio
    from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

    async def echo(request: WebSocketRequest) -> None:
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                await ws.send_message(message)
        except ConnectionClosed:
            pass

    async def run() -> None:
        await serve_websocket(
            echo, "127.0.0.1", port, ssl_context=None, max_message_size=MAX_MESSAGE
        )

    trio.run(run)


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers = {
        "tornado-echo": tornado_echo,
        "websockets-echo": websockets_echo,
        "trio-websocket-echo": trio_websocket_echo,
    }
    with contextlib.suppress(KeyboardInterrupt):
        servers[kind](port)


if __name__ == "__main__":
    main()
