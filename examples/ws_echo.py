"""A WebSocket echo server written as a plain hijack handler.

    python examples/ws_echo.py [port]      # then open http://127.0.0.1:8080/

GET / serves a page that opens a WebSocket back to this server; the same
path with ``Upgrade: websocket`` is the echo itself. (The library's
``make_echo_handler()`` does the same in one line; this shows the parts.)
"""

from __future__ import annotations

import sys

import trio

from hijack import Request, Response, Server
from hijack.upgrades.websocket import (
    ECHO_PAGE,
    WebSocketHandshakeError,
    accept_websocket,
    is_websocket_request,
)


async def handler(request: Request) -> Response | None:
    if request.path != "/":
        return Response(404, body=b"not found\n")
    if not is_websocket_request(request):
        html = ECHO_PAGE.encode()
        return Response(200, {"content-type": "text/html; charset=utf-8"}, html)
    try:
        # Checks the handshake, writes "101 Switching Protocols", and takes
        # the connection (with any frame that came in behind the handshake).
        ws = await accept_websocket(request, max_message_size=64 * 1024)
    except WebSocketHandshakeError as exc:
        return exc.response()  # 400, 403, or 426 + Sec-WebSocket-Version
    # `async with` closes the socket when the block ends (1000, 1011 on an
    # error) and answers a server shutdown with close 1001.
    async with ws:
        async for message in ws:  # ends when the client closes
            await ws.send(message)
    return None  # the connection was hijacked: no HTTP response


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8080
    print(f"open http://127.0.0.1:{port}/ (Ctrl-C to stop)")
    try:
        trio.run(Server(handler).serve_tcp, port)
    except* KeyboardInterrupt:  # Ctrl-C: stop quietly
        pass  # (except*: trio may raise it inside an exception group)


if __name__ == "__main__":
    main()
