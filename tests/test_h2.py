"""HTTP/2 in the Server: requests, bodies, hijacked CONNECT streams, the
test kit's HTTP/2 client, over memory streams."""

from __future__ import annotations

from hijack import Request, Response
from hijack._h2_client import open_h2_client
from hijack.testing import open_test_client


async def echo_handler(request: Request) -> Response | None:
    if request.method == "CONNECT":
        stream = await request.hijack(Response(200))
        async with stream:
            while data := await stream.receive_some():
                await stream.send_all(data.upper())
        return None
    body = await request.read()
    return Response(200, {"x-version": request.http_version}, b"got %d" % len(body))


async def test_request_and_body() -> None:
    async with open_test_client(echo_handler, http2=True) as client:
        stream = await client.listener.connect()
        async with open_h2_client(stream) as h2c:
            response = await h2c.request("GET", "/")
            assert response.status == 200
            assert response.headers.get("x-version") == "2"
            assert response.body == b"got 0"
            response = await h2c.request("POST", "/", body=b"x" * 200_000)
            assert response.body == b"got 200000"


async def test_connect_hijack() -> None:
    async with open_test_client(echo_handler, http2=True) as client:
        stream = await client.listener.connect()
        async with open_h2_client(stream) as h2c:
            response, tunnel = await h2c.tunnel("example.com:443")
            assert response.status == 200 and tunnel is not None
            await tunnel.send_all(b"hello")
            assert await tunnel.receive_some() == b"HELLO"
            await tunnel.send_eof()
            assert await tunnel.receive_some() == b""
            await tunnel.aclose()
