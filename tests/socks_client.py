"""A small SOCKS5 client for the tests, built on the codec (the real
clients, curl and friends, are in the tests that run them)."""

from __future__ import annotations

import trio

from hijack.socks import codec
from hijack.socks.codec import Command, SocksReply

from .helpers import read_exactly


async def read_reply(stream: trio.abc.ReceiveStream) -> SocksReply:
    data = await read_exactly(stream, 5)
    size = {1: 10, 4: 22}.get(data[3], 7 + data[4])
    parsed = codec.parse_reply(await read_exactly(stream, size, data))
    assert parsed is not None
    return parsed[0]


async def handshake(
    stream: trio.abc.Stream, auth: tuple[bytes, bytes] | None = None
) -> None:
    """Greeting (and RFC 1929 credentials when ``auth``): fails the test
    unless the server accepts."""
    method = codec.AuthMethod.USERPASS if auth else codec.AuthMethod.NO_AUTH
    await stream.send_all(codec.encode_greeting([method]))
    assert await read_exactly(stream, 2) == bytes([5, method])
    if auth:
        await stream.send_all(codec.encode_credentials(*auth))
        assert await read_exactly(stream, 2) == b"\x01\x00"


async def socks_request(
    port: int,
    command: Command,
    host: str,
    target_port: int,
    *,
    auth: tuple[bytes, bytes] | None = None,
) -> tuple[trio.SocketStream, SocksReply]:
    """A connection to the SOCKS server on 127.0.0.1:``port`` that sent one
    request; the caller owns the stream."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        await handshake(stream, auth)
        await stream.send_all(codec.encode_request(command, host, target_port))
        return stream, await read_reply(stream)
    except BaseException:
        await stream.aclose()
        raise
