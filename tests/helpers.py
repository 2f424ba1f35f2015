"""What the test modules share, once: raw-socket exchanges, the one
(h11-based) response parser, splits, resets, upstream servers, and waiting
for a server's connections to close (on their events, never by polling)."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import socket
import ssl
import struct
import subprocess
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

import h11
import trio
import trustme

from hijack import Headers, Server
from hijack.testing import TestResponse

__all__ = [
    "LogCapture",
    "UpstreamHandler",
    "all_closed",
    "answer_once",
    "ask",
    "banner",
    "capture_log",
    "connect_from",
    "exchange",
    "parse_responses",
    "read_exactly",
    "read_head",
    "read_response",
    "read_responses",
    "read_until",
    "read_until_closed",
    "reset",
    "splits",
    "start_piped",
    "start_upstream",
    "tls_contexts",
]

UpstreamHandler = Callable[[trio.SocketStream], Awaitable[None]]


# -- reading raw streams ---------------------------------------------------------


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    """Everything the peer sends until it closes."""
    chunks = []
    while chunk := await stream.receive_some():
        chunks.append(bytes(chunk))
    return b"".join(chunks)


async def read_exactly(
    stream: trio.abc.ReceiveStream, size: int, have: bytes = b""
) -> bytes:
    """``have`` plus what arrives, until ``size`` bytes; EOF before that fails
    the test."""
    data = have
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes: {data!r}"
        data += chunk
    return data


async def read_until(stream: trio.abc.ReceiveStream, marker: bytes) -> bytes:
    """Read until ``marker`` has arrived (or EOF); return all of it."""
    data = b""
    while marker not in data:
        chunk = await stream.receive_some()
        if not chunk:
            break
        data += chunk
    return data


async def read_head(stream: trio.abc.ReceiveStream) -> tuple[bytes, bytes]:
    """A response head (with its blank line) and whatever came behind it."""
    data = await read_until(stream, b"\r\n\r\n")
    head, sep, rest = data.partition(b"\r\n\r\n")
    assert sep, f"no complete response head in {data!r}"
    return head + sep, rest


# -- one raw exchange, one parser ---------------------------------------------------


async def exchange(port: int, raw: bytes, *, half_close: bool = False) -> bytes:
    """Send ``raw`` to 127.0.0.1:``port``; return all the server sends until
    it closes. The client half-closes after sending only if ``half_close``."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        if half_close:
            await stream.send_eof()
        return await read_until_closed(stream)


def parse_responses(
    data: bytes, methods: Sequence[str] = ()
) -> tuple[list[TestResponse], bytes]:
    """The complete responses at the start of ``data`` (1xx included, as
    responses of their own) and the bytes after the last complete one.

    ``methods`` are those of the requests answered, in order (default GET):
    a HEAD answer has no body, a 2xx to CONNECT and a 101 end HTTP (what
    follows is returned as the rest). Parsed by h11, so a malformed answer
    fails the test."""
    client = h11.Connection(h11.CLIENT)
    if data:  # b"" would mean EOF to h11
        client.receive_data(data)
    responses: list[TestResponse] = []
    for method in itertools.chain(methods, itertools.repeat("GET")):
        rest = bytes(client.trailing_data[0])
        # Proposing an upgrade lets h11 accept a 101, and changes nothing else.
        proposal = [("connection", "upgrade"), ("upgrade", "any")]
        headers = [("host", "x"), *proposal]
        client.send(h11.Request(method=method, target="/", headers=headers))
        client.send(h11.EndOfMessage())
        head: h11.Response | h11.InformationalResponse | None = None
        body = b""
        while True:
            event = client.next_event()
            if event is h11.NEED_DATA or isinstance(event, h11.ConnectionClosed):
                return responses, rest  # no further complete response
            if isinstance(event, h11.InformationalResponse):
                responses.append(_response(event))
                if event.status_code == 101:
                    return responses, bytes(client.trailing_data[0])
                rest = bytes(client.trailing_data[0])
                continue
            if isinstance(event, h11.Response):
                head = event
                if client.their_state is h11.SWITCHED_PROTOCOL:
                    responses.append(_response(head))
                    return responses, bytes(client.trailing_data[0])
            elif isinstance(event, h11.Data):
                body += event.data
            elif isinstance(event, h11.EndOfMessage):
                break
        assert head is not None
        responses.append(_response(head, body))
        if client.their_state is not h11.DONE:  # MUST_CLOSE: nothing follows
            return responses, bytes(client.trailing_data[0])
        client.start_next_cycle()
    raise AssertionError("unreachable")  # pragma: no cover - endless methods


def _response(
    head: h11.Response | h11.InformationalResponse, body: bytes = b""
) -> TestResponse:
    return TestResponse(
        status=head.status_code,
        reason=head.reason.decode("latin-1"),
        headers=Headers(list(head.headers)),
        body=body,
        http_version=head.http_version.decode("ascii"),
    )


async def read_responses(
    stream: trio.abc.ReceiveStream, count: int = 1
) -> list[TestResponse]:
    """Read until ``count`` final (non-1xx) responses are in, with the 1xx
    before them, or a 101; EOF before that fails the test."""
    data = b""
    while True:
        responses, _ = parse_responses(data)
        final = sum(r.status >= 200 for r in responses)
        if final >= count or any(r.status == 101 for r in responses):
            return responses
        chunk = await stream.receive_some()
        assert chunk, f"closed after {data!r}"
        data += chunk


async def read_response(stream: trio.abc.ReceiveStream) -> tuple[TestResponse, bytes]:
    """One response (the final one, or a 101) and the bytes that came
    behind it (early frames of the new protocol, say)."""
    data = b""
    while True:
        responses, rest = parse_responses(data)
        if responses and (responses[-1].status >= 200 or responses[-1].status == 101):
            return responses[-1], rest
        chunk = await stream.receive_some()
        assert chunk, f"closed after {data!r}"
        data += chunk


async def ask(port: int, raw: bytes) -> TestResponse:
    """Send ``raw`` on a new connection to 127.0.0.1:``port``; the first
    final response or 101 (the connection is closed without waiting)."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        response, _ = await read_response(stream)
        return response


def splits(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the positions ``cuts`` (taken modulo its length)."""
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points) if a != b]


# -- sockets and servers -------------------------------------------------------------


def tls_contexts(*names: str) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a certificate for ``names`` from a new test CA,
    and a client context that trusts that CA (and nothing else)."""
    ca = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(server_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)
    return server_context, client_context


def reset(stream: trio.SocketStream) -> None:
    """Close ``stream`` so that the peer gets a TCP RST, not a FIN
    (SO_LINGER 0)."""
    stream.socket.setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )
    stream.socket.close()


async def connect_from(source_host: str, host: str, port: int) -> trio.SocketStream:
    """A TCP stream to ``host:port`` from ``source_host`` (any 127.0.0.0/8
    address works on Linux loopback): tells a client apart from a proxy."""
    family = trio.socket.AF_INET6 if ":" in host else trio.socket.AF_INET
    sock = trio.socket.socket(family)
    try:
        await sock.bind((source_host, 0))
        await sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def start_upstream(nursery: trio.Nursery, handler: UpstreamHandler) -> int:
    """A raw TCP server on 127.0.0.1, port 0, stopped with ``nursery``;
    returns its port."""
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1")
    )
    port: int = listeners[0].socket.getsockname()[1]
    return port


def banner(data: bytes) -> UpstreamHandler:
    """An upstream that sends ``data`` as soon as a client connects, then
    closes (as an SSH or database server greets first)."""

    async def greet(stream: trio.SocketStream) -> None:
        await stream.send_all(data)

    return greet


def answer_once(answer: bytes) -> UpstreamHandler:
    """An upstream that reads one request head, sends ``answer`` and
    closes: a client's view of a server that says no (or says nonsense)."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            await read_until(stream, b"\r\n\r\n")
            await stream.send_all(answer)

    return handle


async def all_closed(server: Server) -> None:
    """Wait until every connection the server has now is closed (HTTP ones
    by the server, hijacked ones by their owner)."""
    for connection in server.connections:
        await connection.wait_closed()
    await trio.lowlevel.checkpoint()


class LogCapture(logging.Handler):
    """The INFO+ records of one logger, with an event set at the first one:
    a test waits for a log line instead of polling caplog. (``emit`` runs in
    the trio thread: the log call is made by a trio task.)"""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []
        self.logged = trio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
        self.logged.set()


@contextlib.contextmanager
def capture_log(name: str) -> Iterator[LogCapture]:
    """``with capture_log("hijack.tcp") as log: ...; await log.logged.wait()``"""
    capture = LogCapture()
    logger = logging.getLogger(name)
    level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        yield capture
    finally:
        logger.removeHandler(capture)
        logger.setLevel(level)


ROOT = Path(__file__).resolve().parents[1]


async def start_piped(nursery: trio.Nursery, command: Sequence[str]) -> trio.Process:
    """``command`` as a child of ``nursery`` with pipes for stdin and stdout,
    run from the repository root (``hijack forward --listen -``, say)."""
    process: trio.Process = await nursery.start(
        functools.partial(
            trio.run_process,
            list(command),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            check=False,
            cwd=ROOT,
        )
    )
    return process
