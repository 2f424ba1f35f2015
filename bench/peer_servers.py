"""Peer servers written for the benchmark, one per process.

``python peer_servers.py KIND PORT``

* ``tornado-echo``: Tornado ``RequestHandler.detach()`` (its way to take the
  connection), answer ``101`` by hand, then a raw echo loop: the same job as
  hijack's ``echo``.

The WebSocket peers are in ``websocket_echo.py``.
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


def main() -> None:
    kind, port = sys.argv[1], int(sys.argv[2])
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    servers = {
        "tornado-echo": tornado_echo,
    }
    with contextlib.suppress(KeyboardInterrupt):
        servers[kind](port)


if __name__ == "__main__":
    main()
