"""Hostile input, byte by byte: smuggling, malformed framing, bad bytes, sizes,
slowness. Each case checks the exact answer, whether the connection is kept
or closed (RFC 9112), that the server keeps serving, and that nothing stays
open.

What h11 0.16 does on its own (read from its source): it rejects a bad
request line, bytes outside ``token`` in a field name (NUL, DEL, space or tab
before the colon), NUL/CR/LF in a field value, obs-fold before the first
field, a missing (1.1) or duplicate Host, a Content-Length that is not
``1*DIGIT`` or longer than 20 digits, conflicting Content-Lengths (400), any
Transfer-Encoding but a single ``chunked`` (h11 hints 501; the server answers
400 as RFC 9112 6.3 requires), and malformed chunk lines
and chunk CRLFs (400). It accepts bare LF as a line end in the head (RFC 9112
2.2 allows it), unfolds obs-fold (5.2 allows replacing it with SP), merges
identical Content-Lengths (RFC 9110 8.6 allows it), keeps other control
bytes and obs-text in values (RFC 9110 5.5 allows it), whitespace after a
chunk size, and any Host value. The server adds the version check (505), the
size limits (414, 431, 413) and close-after-CL+TE.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing

from hijack import Limits, Request, Response, Server
from hijack.testing import MemoryListener, TestResponse

from ..conftest import StartServer, trickle_until_answered
from ..helpers import (
    all_closed,
    exchange,
    parse_responses,
    read_responses,
    read_until_closed,
)

MemoryServer = Callable[..., Awaitable[tuple[Server, MemoryListener]]]

GOOD = b"GET /ok HTTP/1.1\r\nHost: x\r\n\r\n"
STATUS_LINE = re.compile(rb"HTTP/1\.1 ([1-5][0-9][0-9]) ([^\r\n]*)")


async def echo(request: Request) -> Response:
    """Says what it saw: request line, headers, then the body."""
    body = await request.read()
    lines = [f"{request.method} {request.target} {request.http_version}"]
    lines += [f"{name}: {value}" for name, value in request.headers]
    text = "\n".join(lines).encode("latin-1")
    return Response(200, {"content-type": "text/plain"}, text + b"\n\n" + body)


async def assert_serves(server: Server, port: int) -> None:
    """A good request on a fresh connection gets 200; then all is closed."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(GOOD)
        [reply] = await read_responses(stream, 1)
        assert reply.status == 200
    await all_closed(server)


async def rejected(
    server: Server, port: int, raw: bytes, status: int, half_close: bool = False
) -> TestResponse:
    """``raw`` gets exactly one ``status`` response with Connection: close,
    then the server closes; then it still serves."""
    data = await exchange(port, raw, half_close=half_close)
    replies, rest = parse_responses(data)
    assert [r.status for r in replies] == [status], data
    assert rest == b""
    assert replies[0].headers.get("connection", "").lower() == "close"
    await all_closed(server)
    await assert_serves(server, port)
    return replies[0]


async def kept(server: Server, port: int, raw: bytes) -> TestResponse:
    """``raw`` gets a 200 and the connection stays open for a second request."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        [first] = await read_responses(stream, 1)
        assert first.status == 200, first
        assert "connection" not in first.headers
        await stream.send_all(GOOD)
        [second] = await read_responses(stream, 1)
        assert second.status == 200
    await all_closed(server)
    return first


def post(headers: bytes, body: bytes = b"", version: bytes = b"1.1") -> bytes:
    return b"POST /p HTTP/" + version + b"\r\nHost: x\r\n" + headers + b"\r\n" + body


CHUNKED = b"Transfer-Encoding: chunked\r\n"

# -- rejected: one error response, Connection: close, then closed -----------

REJECTED = {
    # Content-Length that is not 1*DIGIT, or conflicting copies (RFC 9112 6.3).
    "cl-plus": (post(b"Content-Length: +5\r\n", b"hello"), 400),
    "cl-negative": (post(b"Content-Length: -1\r\n"), 400),
    "cl-hex": (post(b"Content-Length: 0x10\r\n"), 400),
    "cl-empty": (post(b"Content-Length: \r\n"), 400),
    "cl-conflict": (post(b"Content-Length: 3\r\nContent-Length: 4\r\n", b"abcd"), 400),
    "cl-conflict-list": (post(b"Content-Length: 3, 4\r\n", b"abcd"), 400),
    "cl-21-digits": (post(b"Content-Length: " + b"9" * 21 + b"\r\n"), 400),
    # Transfer codings other than one final chunked: 400, then close (RFC
    # 9112 6.3: the body length cannot be determined; h11 hints 501).
    "te-chunked-identity": (post(b"Transfer-Encoding: chunked, identity\r\n"), 400),
    "te-gzip": (post(b"Transfer-Encoding: gzip\r\n"), 400),
    "te-gzip-chunked": (post(b"Transfer-Encoding: gzip, chunked\r\n"), 400),
    "te-xchunked": (post(b"Transfer-Encoding: xchunked\r\n"), 400),
    "te-twice": (post(CHUNKED + CHUNKED, b"0\r\n\r\n"), 400),
    # Malformed chunked framing: the body reader raises HTTPError(400).
    "chunk-size-zz": (post(CHUNKED, b"zz\r\nabc\r\n0\r\n\r\n"), 400),
    "chunk-size-negative": (post(CHUNKED, b"-1\r\nabc\r\n0\r\n\r\n"), 400),
    "chunk-size-huge": (post(CHUNKED, b"f" * 21 + b"\r\nabc\r\n0\r\n\r\n"), 400),
    "chunk-missing-crlf": (post(CHUNKED, b"3\r\nabcXX0\r\n\r\n"), 400),
    "chunk-size-bare-lf": (post(CHUNKED, b"3\nabc\r\n0\r\n\r\n"), 400),
    "chunk-data-bare-lf": (post(CHUNKED, b"3\r\nabc\n0\r\n\r\n"), 400),
    "chunk-size-bare-cr": (post(CHUNKED, b"3\rabc\r\n0\r\n\r\n"), 400),
    # A trailer may not change the framing: h11 validates it like a header.
    "trailer-te-gzip": (
        post(CHUNKED, b"3\r\nabc\r\n0\r\nTransfer-Encoding: gzip\r\n\r\n"),
        400,
    ),
    "trailer-cl-garbage": (
        post(CHUNKED, b"3\r\nabc\r\n0\r\nContent-Length: zz\r\n\r\n"),
        400,
    ),
    # Bare CR where CRLF belongs (RFC 9112 2.2: invalid).
    "bare-cr-request-line": (b"GET / HTTP/1.1\rHost: x\r\n\r\n", 400),
    "bare-cr-in-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\rb\r\n\r\n", 400),
    # obs-fold before any field (RFC 9112 2.2: reject).
    "fold-before-first-field": (b"GET / HTTP/1.1\r\n X: a\r\nHost: x\r\n\r\n", 400),
    # Request lines and versions.
    "http-2.0": (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
    "http-0.9-version": (b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", 505),
    "http-0.9-simple": (b"GET /\r\n\r\n", 400),
    "version-lowercase": (b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
    "version-two-digits": (b"GET / HTTP/11.0\r\nHost: x\r\n\r\n", 400),
    "space-in-target": (b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "double-space": (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "missing-version": (b"GET / \r\nHost: x\r\n\r\n", 400),
    "nul-in-target": (b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "high-bit-target": (b"GET /\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "garbage": (b"\x00\x01\x02\r\n\r\n", 400),
    # Host (RFC 9112 3.2): required in 1.1, exactly once.
    "no-host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "two-hosts": (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
    "two-same-hosts": (b"GET / HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n", 400),
    # Bytes outside field-name / field-value.
    "nul-in-name": (b"GET / HTTP/1.1\r\nHost: x\r\nX\x00: a\r\n\r\n", 400),
    "nul-in-value": (b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400),
    "del-in-name": (b"GET / HTTP/1.1\r\nHost: x\r\nX\x7f: a\r\n\r\n", 400),
    "space-before-colon": (b"GET / HTTP/1.1\r\nHost: x\r\nX : a\r\n\r\n", 400),
    "tab-before-colon": (b"GET / HTTP/1.1\r\nHost: x\r\nX\t: a\r\n\r\n", 400),
    "no-colon": (b"GET / HTTP/1.1\r\nHost: x\r\nXa\r\n\r\n", 400),
    "empty-name": (b"GET / HTTP/1.1\r\nHost: x\r\n: a\r\n\r\n", 400),
    # A TLS ClientHello on the plain port: the first byte (0x16) is enough.
    "tls-client-hello": (
        bytes.fromhex("160301020001000200fc03035a") + b"\x00" * 64,
        400,
    ),
    # Sizes (default limits): target, Content-Length.
    "huge-target": (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
    "absurd-content-length": (post(b"Content-Length: " + b"9" * 20 + b"\r\n"), 413),
}


@pytest.mark.parametrize(("raw", "status"), REJECTED.values(), ids=REJECTED.keys())
async def test_rejected_with_status_then_closed(
    start_server: StartServer, raw: bytes, status: int
) -> None:
    server, port = await start_server(echo)
    await rejected(server, port, raw, status)


async def test_rejected_request_never_reaches_the_handler(
    start_server: StartServer,
) -> None:
    seen: list[str] = []

    async def handler(request: Request) -> Response:
        seen.append(request.target)
        return Response(200)

    server, port = await start_server(handler)
    for raw, status in REJECTED.values():
        if not raw.startswith(b"POST"):  # POSTs fail in the body, past the handler
            await rejected(server, port, raw, status)
    assert seen == ["/ok"] * len(seen)


# -- smuggling: answer once, then close; nothing after is a request ----------


async def test_content_length_and_chunked_answer_then_close(
    start_server: StartServer,
) -> None:
    server, port = await start_server(echo)
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    raw = post(b"Content-Length: 40\r\n" + CHUNKED, b"3\r\nabc\r\n0\r\n\r\n" + smuggled)
    data = await exchange(port, raw)
    replies, rest = parse_responses(data)
    assert rest == b""
    [reply] = replies
    assert reply.status == 200
    assert reply.headers.get("connection", "") == "close"
    assert reply.body.endswith(b"\n\nabc")  # chunked wins (RFC 9112 6.3)
    assert b"/smuggled" not in data
    await all_closed(server)
    await assert_serves(server, port)


async def test_http10_with_transfer_encoding_is_answered_then_closed(
    start_server: StartServer,
) -> None:
    # RFC 9112 6.1: framing of a 1.0 message with Transfer-Encoding is faulty;
    # process it, then close, even if the client asks for keep-alive.
    server, port = await start_server(echo)
    raw = (
        b"POST /p HTTP/1.0\r\nConnection: keep-alive\r\n"
        + CHUNKED
        + b"\r\n3\r\nabc\r\n0\r\n\r\n"
        + GOOD
    )
    replies, rest = parse_responses(await exchange(port, raw))
    assert [r.status for r in replies] == [200]
    assert rest == b""
    assert replies[0].headers.get("connection", "").lower() == "close"
    await assert_serves(server, port)


async def test_trailers_cannot_set_framing_or_host(start_server: StartServer) -> None:
    # Trailer fields are dropped: they reach neither the request headers nor
    # the framing of the next request on the connection.
    server, port = await start_server(echo)
    raw = post(
        CHUNKED,
        b"3\r\nabc\r\n0\r\nContent-Length: 50\r\nHost: evil\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n",
    )
    reply = await kept(server, port, raw)
    assert reply.body == (b"POST /p 1.1\nhost: x\ntransfer-encoding: chunked\n\nabc")


# -- accepted on purpose: answered, connection kept ---------------------------

ACCEPTED = {
    # Identical Content-Lengths may be merged (RFC 9110 8.6).
    "cl-same-twice": (
        post(b"Content-Length: 3\r\nContent-Length: 3\r\n", b"abc"),
        b"POST /p 1.1\nhost: x\ncontent-length: 3\n\nabc",
    ),
    "cl-same-list": (
        post(b"Content-Length: 3, 3\r\n", b"abc"),
        b"POST /p 1.1\nhost: x\ncontent-length: 3\n\nabc",
    ),
    "te-uppercase": (
        post(b"Transfer-Encoding: CHUNKED\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        b"POST /p 1.1\nhost: x\ntransfer-encoding: chunked\n\nabc",
    ),
    # Bare LF as a line end in the head (RFC 9112 2.2: MAY).
    "bare-lf-head": (b"GET / HTTP/1.1\nHost: x\n\n", b"GET / 1.1\nhost: x\n\n"),
    # obs-fold replaced with SP (RFC 9112 5.2).
    "obs-fold": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\r\n  b\r\n\r\n",
        b"GET / 1.1\nhost: x\nx: a b\n\n",
    ),
    "obs-fold-te": (
        post(b"Transfer-Encoding:\r\n chunked\r\n", b"3\r\nabc\r\n0\r\n\r\n"),
        b"POST /p 1.1\nhost: x\ntransfer-encoding: chunked\n\nabc",
    ),
    # Methods are case-sensitive: "get" is an unknown method, not GET.
    "lowercase-method": (
        b"get / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"get / 1.1\nhost: x\n\n",
    ),
    # Other control bytes and obs-text in values may be kept (RFC 9110 5.5).
    "del-in-value": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX: a\x7fb\r\n\r\n",
        b"GET / 1.1\nhost: x\nx: a\x7fb\n\n",
    ),
    "obs-text-in-value": (
        b"GET / HTTP/1.1\r\nHost: x\r\nX: \xff\xfe\r\n\r\n",
        b"GET / 1.1\nhost: x\nx: \xff\xfe\n\n",
    ),
    # An empty Host is valid when the target has no authority (RFC 9110 7.2).
    "empty-host": (b"GET / HTTP/1.1\r\nHost:\r\n\r\n", b"GET / 1.1\nhost: \n\n"),
    "host-ipv6-port": (
        b"GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
        b"GET / 1.1\nhost: [::1]:8080\n\n",
    ),
    # HTTP/1.0 needs no Host (but closes: not tested by ``kept``).
    "chunk-size-trailing-space": (
        post(CHUNKED, b"3 \r\nabc\r\n0\r\n\r\n"),
        b"POST /p 1.1\nhost: x\ntransfer-encoding: chunked\n\nabc",
    ),
    "chunk-extension": (
        post(CHUNKED, b"3;name=value\r\nabc\r\n0\r\n\r\n"),
        b"POST /p 1.1\nhost: x\ntransfer-encoding: chunked\n\nabc",
    ),
}


@pytest.mark.parametrize(("raw", "seen"), ACCEPTED.values(), ids=ACCEPTED.keys())
async def test_accepted_and_kept_alive(
    start_server: StartServer, raw: bytes, seen: bytes
) -> None:
    server, port = await start_server(echo)
    reply = await kept(server, port, raw)
    assert reply.body == seen


# -- RFC 9112 rules h11 does not enforce, enforced by the server ---------------


@pytest.mark.parametrize(
    "host", [b"a b", b"a/b", b"user@x", b"x:port", b"[::1", b"x\x01y"]
)
async def test_invalid_host_value_is_400(
    start_server: StartServer, host: bytes
) -> None:
    server, port = await start_server(echo)
    raw = b"GET / HTTP/1.1\r\nHost: " + host + b"\r\n\r\n"
    await rejected(server, port, raw, 400, half_close=True)  # fail fast if kept


async def test_higher_minor_version_is_served_as_http11(
    start_server: StartServer,
) -> None:
    server, port = await start_server(echo)
    reply = await kept(server, port, b"GET / HTTP/1.2\r\nHost: x\r\n\r\n")
    assert reply.body == b"GET / 1.2\nhost: x\n\n"


# -- sizes ----------------------------------------------------------------------

SMALL_HEAD = Limits(max_head_size=1024)
HUGE_HEAD = b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 2000 + b"\r\n\r\n"


async def test_huge_head_in_one_write_is_431(start_server: StartServer) -> None:
    server, port = await start_server(echo, limits=SMALL_HEAD)
    await rejected(server, port, HUGE_HEAD, 431)


async def test_huge_head_over_the_default_limit_is_431(
    start_server: StartServer,
) -> None:
    server, port = await start_server(echo)
    fields = (b"X-Y: " + b"z" * 1000 + b"\r\n") * 33  # past 32 KiB
    await rejected(
        server, port, b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n", 431
    )


async def answer_on_memory(
    memory_server: MemoryServer, pieces: list[bytes], limits: Limits
) -> bytes:
    """Send ``pieces`` one by one (each let all the way in), then read it all.
    The server may hang up mid-way: a hostile client keeps sending anyway."""
    server, listener = await memory_server(echo, limits=limits)
    client = await listener.connect()
    with contextlib.suppress(trio.BrokenResourceError):
        for piece in pieces:
            await client.send_all(piece)
            await trio.testing.wait_all_tasks_blocked()
    data = await read_until_closed(client)
    await client.aclose()
    await all_closed(server)
    return data


def without_date(data: bytes) -> bytes:
    return re.sub(rb"date: [^\r]*\r\n", b"", data)


async def test_huge_head_byte_by_byte_gets_the_same_431(
    memory_server: MemoryServer,
) -> None:
    whole = await answer_on_memory(memory_server, [HUGE_HEAD], SMALL_HEAD)
    trickled = await answer_on_memory(
        memory_server, [bytes([b]) for b in HUGE_HEAD], SMALL_HEAD
    )
    unfinished = await answer_on_memory(memory_server, [HUGE_HEAD[:-4]], SMALL_HEAD)
    assert whole.startswith(b"HTTP/1.1 431 ")
    assert without_date(trickled) == without_date(whole)
    assert without_date(unfinished) == without_date(whole)


async def test_expect_100_continue_over_the_limit_is_413_without_100(
    start_server: StartServer,
) -> None:
    called = []

    async def handler(request: Request) -> Response:
        called.append(request)
        return Response(200)

    server, port = await start_server(handler, limits=Limits(max_body_size=100))
    raw = post(b"Content-Length: 101\r\nExpect: 100-continue\r\n")
    data = await exchange(port, raw)
    assert data.startswith(b"HTTP/1.1 413 ")
    assert b"100 Continue" not in data and not data.startswith(b"HTTP/1.1 100")
    assert called == []
    await all_closed(server)


# -- slowness (in-memory, virtual time) --------------------------------------------

SLOW = Limits(head_timeout=5, idle_timeout=30, body_timeout=10, write_timeout=20)


async def test_head_trickled_one_byte_a_second_gets_408_at_head_timeout(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    server, listener = await memory_server(echo, limits=SLOW)
    client = await listener.connect()
    answered_after, data = await trickle_until_answered(client, GOOD)
    replies, rest = parse_responses(data)
    assert [r.status for r in replies] == [408]
    assert rest == b""
    assert answered_after == 5
    await client.aclose()
    await all_closed(server)


async def test_slow_body_gets_408_at_body_timeout(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    server, listener = await memory_server(echo, limits=SLOW)
    client = await listener.connect()
    await client.send_all(post(b"Content-Length: 1000\r\n"))
    start = trio.current_time()
    with contextlib.suppress(trio.BrokenResourceError):
        for _ in range(100):
            await client.send_all(b"x")
            await trio.sleep(1)
    replies, rest = parse_responses(await read_until_closed(client))
    assert [r.status for r in replies] == [408]
    assert rest == b""
    assert replies[0].headers.get("connection", "") == "close"
    assert 10 <= trio.current_time() - start <= 11
    await client.aclose()
    await all_closed(server)


async def test_pipelining_client_that_never_reads_is_not_read_either(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    """Backpressure: a client that pipelines requests without reading the
    answers stalls the server's writes, and then the server stops reading,
    so what it buffers stays bounded; the write timeout then ends it."""

    async def big(request: Request) -> Response:
        return Response(200, body=b"x" * 100_000)

    listener = MemoryListener(trio.testing.lockstep_stream_pair)
    server, _ = await memory_server(big, limits=SLOW, listener=listener)
    client = await listener.connect()
    sent = 0  # requests the server has taken in (lockstep: send_all waits)

    async def flood() -> None:
        nonlocal sent
        with contextlib.suppress(trio.BrokenResourceError):
            for _ in range(10_000):
                await client.send_all(GOOD)
                sent += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(flood)
        await trio.sleep(1)
        taken = sent
        assert taken <= 2  # at most what one read swallowed, plus one
        await trio.sleep(15)  # the server is stuck writing; still under 20 s
        assert sent == taken
        assert len(server.connections) == 1
        await trio.sleep(10)  # past write_timeout: the server gives up
        assert server.connections == []
        assert sent == taken
        nursery.cancel_scope.cancel()
    await client.aclose()
