"""The forwarders' and the WebSocket tunnel's edges: what a SOCKS5 client
that offers no usable method, sends a bad request, pipelines its data or
meets a server that never answers gets from ``serve_socks_forward``; how
``serve_udp_forward`` bounds its flows and survives a refused WebSocket;
what ``WebSocketTunnel`` answers to requests it does not serve, a bad
target, a limit, a destination it cannot connect to, text messages and a
refusing destination. Real sockets on 127.0.0.1 throughout."""

from __future__ import annotations

import contextlib
import functools
import re
import socket
from collections.abc import AsyncIterator

import pytest
import trio
import trio.testing

from hijack import Request, Response
from hijack.client.socks_forward import serve_socks_forward
from hijack.client.udp_forward import serve_udp_forward
from hijack.client.wsclient import WebSocketRefused, connect_websocket
from hijack.socks import codec
from hijack.socks.codec import AuthMethod, Command, Reply
from hijack.tunnel.lifecycle import Outcome, TunnelRecord
from hijack.tunnel.limits import TunnelLimits
from hijack.tunnel.policy import ConnectPolicy
from hijack.upgrades.connect import ConnectProxy
from hijack.upgrades.wsbridge import SUBPROTOCOL
from hijack.upgrades.wstunnel import WebSocketTunnel

from ..conftest import StartServer
from ..helpers import capture_log, read_exactly, read_head, read_until_closed
from ..socks.test_socks_udp import udp_echo
from ..socks_client import read_reply, socks_request
from .test_socks_forward import LocalSocks, local_socks, loopback  # noqa: F401


async def echo(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        async for data in stream:
            await stream.send_all(data)


async def tcp_echo(nursery: trio.Nursery) -> int:
    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, echo, 0, host="127.0.0.1")
    )
    return int(listeners[0].socket.getsockname()[1])


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Records:
    def __init__(self) -> None:
        self.records: list[TunnelRecord] = []
        self.changed = trio.Event()

    def __call__(self, record: TunnelRecord) -> None:
        self.records.append(record)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        with trio.fail_after(10):
            while len(self.records) < count:
                await self.changed.wait()


# -- serve_socks_forward -------------------------------------------------------


async def test_a_client_without_no_auth_gets_no_acceptable_method(
    start_server: StartServer,
    local_socks: LocalSocks,  # noqa: F811
) -> None:
    _, server = await start_server(ConnectProxy(loopback(443)))
    port = await local_socks(("127.0.0.1", server))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(codec.encode_greeting([AuthMethod.USERPASS]))
        assert await read_until_closed(stream) == bytes([5, AuthMethod.NO_ACCEPTABLE])


async def test_bad_handshakes_are_answered_or_closed(
    start_server: StartServer,
    local_socks: LocalSocks,  # noqa: F811
) -> None:
    _, server = await start_server(ConnectProxy(loopback(443)))
    port = await local_socks(("127.0.0.1", server))
    # A request with an unknown address type: reply 08, then closed.
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(codec.encode_greeting([AuthMethod.NO_AUTH]))
        assert await read_exactly(stream, 2) == bytes([5, AuthMethod.NO_AUTH])
        await stream.send_all(b"\x05\x01\x00\x09" + b"\x00" * 6)
        answer = await read_until_closed(stream)
    assert answer[:2] == bytes([5, Reply.ADDRESS_TYPE_NOT_SUPPORTED])
    # A client that leaves mid-greeting: closed without a word.
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"\x05\x02\x00")
        await stream.send_eof()
        assert await read_until_closed(stream) == b""


async def test_data_pipelined_behind_the_request_is_forwarded(
    start_server: StartServer,
    local_socks: LocalSocks,  # noqa: F811
    nursery: trio.Nursery,
) -> None:
    """A client may send its greeting, its request and its first bytes at
    once (optimistic data): they reach the destination after the reply."""
    origin = await tcp_echo(nursery)
    _, server = await start_server(ConnectProxy(loopback(origin)))
    port = await local_socks(("127.0.0.1", server))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(
            codec.encode_greeting([AuthMethod.NO_AUTH])
            + codec.encode_request(Command.CONNECT, "127.0.0.1", origin)
            + b"early bytes"
        )
        assert await read_exactly(stream, 2) == bytes([5, AuthMethod.NO_AUTH])
        reply = await read_reply(stream)
        assert reply.reply == Reply.SUCCEEDED
        assert await read_exactly(stream, len(b"early bytes")) == b"early bytes"


async def test_a_server_that_never_answers_gives_ttl_expired(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    accepted: list[trio.SocketStream] = []

    async def mute(stream: trio.SocketStream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    mute_port = (
        await nursery.start(
            functools.partial(trio.serve_tcp, mute, 0, host="127.0.0.1")
        )
    )[0].socket.getsockname()[1]
    listeners = await nursery.start(
        functools.partial(
            serve_socks_forward,
            ("127.0.0.1", 0),
            ("127.0.0.1", mute_port),
            connect_timeout=5,
        )
    )
    port = listeners[0].socket.getsockname()[1]
    start = trio.current_time()
    stream, reply = await socks_request(port, Command.CONNECT, "example.com", 443)
    await stream.aclose()
    assert reply.reply == Reply.TTL_EXPIRED
    assert trio.current_time() - start == pytest.approx(5)
    assert len(accepted) == 1
    nursery.cancel_scope.cancel()


# -- serve_udp_forward ---------------------------------------------------------


async def test_udp_forward_needs_a_websocket_via() -> None:
    with pytest.raises(ValueError, match="--udp needs --via as a ws://"):
        await serve_udp_forward(("127.0.0.1", 0), "http://host/t", ("127.0.0.1", 53))


@contextlib.asynccontextmanager
async def udp_forward(
    via: str, target: tuple[str, int], *, max_flows: int = 1024
) -> AsyncIterator[tuple[str, int]]:
    async with trio.open_nursery() as nursery:
        sock = await nursery.start(
            functools.partial(
                serve_udp_forward, ("127.0.0.1", 0), via, target, max_flows=max_flows
            )
        )
        yield sock.getsockname()[:2]
        nursery.cancel_scope.cancel()


async def test_udp_forward_holds_at_most_max_flows(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    """With max_flows=1 a second source's datagrams are dropped while the
    first source's flow lives."""
    echo_port, received = await nursery.start(udp_echo)
    _, server = await start_server(WebSocketTunnel(loopback(echo_port), path="/t"))
    via = f"ws://127.0.0.1:{server}/t"
    async with udp_forward(via, ("127.0.0.1", echo_port), max_flows=1) as forward:
        with (
            trio.socket.socket(type=socket.SOCK_DGRAM) as first,
            trio.socket.socket(type=socket.SOCK_DGRAM) as second,
        ):
            await first.sendto(b"one", forward)
            with trio.fail_after(10):
                assert await first.recv(100) == b"one"
            await second.sendto(b"no room", forward)
            await first.sendto(b"two", forward)  # the same flow, after it
            with trio.fail_after(10):
                assert await first.recv(100) == b"two"
    assert received == [b"one", b"two"]


async def test_a_refused_flow_is_logged_and_the_next_datagram_tries_again(
    start_server: StartServer,
) -> None:
    # The server's policy refuses the destination: 403 to every flow.
    _, server = await start_server(WebSocketTunnel(loopback(1), path="/t"))
    via = f"ws://127.0.0.1:{server}/t"
    with capture_log("hijack.forward") as log:
        async with udp_forward(via, ("127.0.0.1", 53)) as forward:
            with trio.socket.socket(type=socket.SOCK_DGRAM) as client:
                for attempt in (1, 2):
                    await client.sendto(b"query", forward)
                    with trio.fail_after(10):
                        while len(log.records) < attempt:
                            await log.logged.wait()
                            log.logged = trio.Event()
    lines = [r.getMessage() for r in log.records]
    assert len(lines) == 2
    assert all("no WebSocket to" in line and "403" in line for line in lines)


# -- WebSocketTunnel -------------------------------------------------------------


async def plain(request: Request) -> Response:
    return Response(200, body=b"not a tunnel")


async def status_of(port: int, raw: bytes) -> int:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw)
        head, _ = await read_head(stream)
    return int(head.split()[1])


GET = b"GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def test_other_requests_go_to_the_fallback_or_get_404(
    start_server: StartServer,
) -> None:
    _, with_fallback = await start_server(
        WebSocketTunnel(loopback(53), path="/t", fallback=plain)
    )
    _, without = await start_server(WebSocketTunnel(loopback(53), path="/t"))
    assert await status_of(with_fallback, GET % b"/t?tcp=127.0.0.1:53") == 200
    assert await status_of(without, GET % b"/elsewhere") == 404
    assert await status_of(without, GET % b"/t?tcp=127.0.0.1:53") == 404


async def test_a_bad_handshake_or_target_is_400_and_recorded(
    start_server: StartServer,
) -> None:
    records = Records()
    _, port = await start_server(
        WebSocketTunnel(loopback(53), path="/t", on_tunnel=records)
    )
    no_key = (
        b"GET /t?tcp=127.0.0.1:53 HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert await status_of(port, no_key) == 400
    with pytest.raises(WebSocketRefused) as refused:
        await connect_websocket(f"ws://127.0.0.1:{port}/t?tcp=no-port")
    assert refused.value.status == 400
    await records.wait_for(2)
    assert [r.outcome for r in records.records] == [Outcome.BAD_REQUEST] * 2


async def test_udp_flows_count_against_the_limits_while_they_live(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    echo_port, _ = await nursery.start(udp_echo)
    handler = WebSocketTunnel(
        loopback(echo_port), path="/t", limits=TunnelLimits(per_client=1)
    )
    _, port = await start_server(handler)
    url = f"ws://127.0.0.1:{port}/t?udp=127.0.0.1:{echo_port}"
    first = await connect_websocket(url, subprotocols=[SUBPROTOCOL])
    async with first:
        await first.send(b"ping")
        assert await first.receive() == b"ping"
        with pytest.raises(WebSocketRefused) as refused:
            await connect_websocket(url, subprotocols=[SUBPROTOCOL])
        assert refused.value.status == 429
    # The first one ended: its lease is back.
    again = await connect_websocket(url, subprotocols=[SUBPROTOCOL])
    async with again:
        await again.send(b"pong")
        assert await again.receive() == b"pong"


async def test_a_udp_destination_the_kernel_will_not_connect_is_502(
    start_server: StartServer,
) -> None:
    # Connecting a UDP socket to the limited broadcast address needs
    # SO_BROADCAST, which the tunnel does not set.
    policy = ConnectPolicy(allowed_ports={53}, allow=["255.255.255.255"])
    _, port = await start_server(WebSocketTunnel(policy, path="/t"))
    with pytest.raises(WebSocketRefused) as refused:
        await connect_websocket(f"ws://127.0.0.1:{port}/t?udp=255.255.255.255:53")
    assert refused.value.status == 502


async def test_a_refusing_udp_destination_and_text_messages_do_not_end_the_flow(
    start_server: StartServer,
) -> None:
    """Datagrams to a closed port draw ICMP errors; text messages are not
    datagrams. Neither ends the flow: it ends when the client closes."""
    dead = closed_udp_port()
    records = Records()
    _, port = await start_server(
        WebSocketTunnel(loopback(dead), path="/t", on_tunnel=records)
    )
    url = f"ws://127.0.0.1:{port}/t?udp=127.0.0.1:{dead}"
    websocket = await connect_websocket(url, subprotocols=[SUBPROTOCOL])
    async with websocket:
        for _ in range(3):
            await websocket.send(b"anyone?")
            await websocket.send("text is not a datagram")
        await websocket.ping(b"still open")
    await records.wait_for(1)
    [record] = records.records
    assert record.kind == "wstunnel-udp" and record.outcome == Outcome.OK
    # Each refusal costs at most the next datagram (the error is reported
    # on the socket once): at least 2 of 3 went out, none came back.
    assert re.fullmatch(r"datagrams=[23]/0", record.detail), record.detail
