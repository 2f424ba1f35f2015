"""A tunnel still open when the server's shutdown grace runs out was ended
from outside: its record (so its log line, its metric and ``on_tunnel``)
says ``cancelled``, whichever relay moved its bytes. The task relay used to
wake on the socket the server closed and call that an error."""

from __future__ import annotations

import functools
import logging

import pytest
import trio
import trio.testing

from hijack import Server
from hijack.cli._metrics import Metrics
from hijack.testing import open_test_client
from hijack.tunnel.lifecycle import Outcome, TunnelRecord
from hijack.tunnel.limits import TunnelLimits
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy
from hijack.upgrades.reverse import ReverseTunnels

from ..client.test_forward import echo
from ..conftest import StartServer
from ..daemons import free_port
from ..helpers import (
    capture_log,
    read_exactly,
    read_head,
    read_until_closed,
    start_upstream,
    tls_contexts,
)
from ..upgrades.test_reverse import RULES, Ends, running_client
from .test_lifecycle import Records

# hub: handed to the relay hub; task-relay: hand_over=False; throttled: a
# bandwidth limit keeps the task relay; tls: a TLS client cannot be handed.
WAYS = ["hub", "task-relay", "throttled", "tls"]


@pytest.mark.parametrize("way", WAYS)
async def test_a_tunnel_cut_at_the_end_of_the_grace_is_cancelled(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    no_leaks: None,
    caplog: pytest.LogCaptureFixture,
    way: str,
) -> None:
    upstream = await start_upstream(nursery, echo)
    records = Records()
    metrics = Metrics()

    def on_tunnel(record: TunnelRecord) -> None:
        metrics.on_tunnel(record)
        records(record)

    proxy = ConnectProxy(
        ConnectPolicy(allowed_ports={upstream}, allow_private=True),
        on_tunnel=on_tunnel,
        hand_over=way != "task-relay",
        limits=TunnelLimits(tunnel_bandwidth=10**9) if way == "throttled" else None,
    )
    server = Server(proxy)
    server_context, client_context = tls_contexts("127.0.0.1")
    listeners = await nursery.start(
        functools.partial(
            server.serve_tcp,
            0,
            host="127.0.0.1",
            ssl_context=server_context if way == "tls" else None,
        )
    )
    port = listeners[0].socket.getsockname()[1]
    caplog.set_level(logging.INFO, logger="hijack.connect")

    client: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", port)
    if way == "tls":
        client = trio.SSLStream(client, client_context, server_hostname="127.0.0.1")
    async with client:
        head = f"CONNECT 127.0.0.1:{upstream} HTTP/1.1\r\nHost: x\r\n\r\n"
        await client.send_all(head.encode())
        answer, rest = await read_head(client)
        assert answer.startswith(b"HTTP/1.1 200")
        await client.send_all(b"ping")
        assert await read_exactly(client, 4, rest) == b"ping"
        # The tunnel stays open through the grace: the server cuts it.
        await server.shutdown(grace=5)
        assert autojump_clock.current_time() >= 5
        assert server.open_hijacked_connections == 0
    await records.wait_for(1)
    (record,) = records
    assert record.outcome is Outcome.CANCELLED
    assert (record.stats.a_to_b, record.stats.b_to_a) == (4, 4)
    (line,) = [r.getMessage() for r in caplog.records if r.name == "hijack.connect"]
    assert " cancelled up=4 down=4 " in line, line
    labels = {"kind": "connect", "outcome": "cancelled", "port": str(upstream)}
    assert metrics.registry.get_sample_value("hijack_tunnels_total", labels) == 1
    assert proxy.open_tunnels == 0


@pytest.mark.parametrize("way", ["hub", "task-relay", "websocket"])
async def test_a_reverse_tunnel_cut_at_the_end_of_the_grace_is_cancelled(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    start_server: StartServer,
    way: str,
) -> None:
    upstream = await start_upstream(nursery, echo)
    ends = Ends()
    handler = ReverseTunnels(RULES, on_tunnel=ends, hand_over=way != "task-relay")
    server, port = await start_server(handler)
    public = free_port()
    scheme = "ws" if way == "websocket" else "http"
    with capture_log("hijack.reverse") as log:
        async with running_client(port, upstream, public, scheme=scheme) as events:
            await events.wait_for("published")
            # Three: the server closes the streams it cuts one after another,
            # so the first relays may end before any cancel reaches them.
            clients = []
            for _ in range(3):
                client = await trio.open_tcp_stream("127.0.0.1", public)
                clients.append(client)
                await client.send_all(b"ping")
                assert await read_exactly(client, 4) == b"ping"
            await server.shutdown(grace=5)
            if way != "websocket":
                # The relayed connections outlived their control connection
                # until the grace ran out. (A WebSocket data connection says
                # goodbye, 1001, as the shutdown starts: its tunnel ends
                # then, from outside all the same.)
                assert autojump_clock.current_time() >= 5
            for client in clients:
                assert await read_until_closed(client) == b""
                await client.aclose()
            await ends.wait_for(3)
    assert [r.outcome for r in ends.records] == [Outcome.CANCELLED] * 3
    lines = [
        r.getMessage()
        for r in log.records
        if r.name == "hijack.reverse" and r.getMessage().startswith("reverse ")
    ]
    assert len(lines) == 3
    for line in lines:
        assert " cancelled up=4 down=4 " in line, line


async def test_a_tunnel_on_an_http2_stream_cut_at_the_end_of_the_grace_is_cancelled(
    autojump_clock: trio.testing.MockClock, nursery: trio.Nursery, no_leaks: None
) -> None:
    upstream = await start_upstream(nursery, echo)
    records = Records()
    proxy = ConnectProxy(
        ConnectPolicy(allowed_ports={upstream}, allow_private=True), on_tunnel=records
    )
    async with (
        open_test_client(proxy, http2=True) as client,
        client.http2() as h2c,
    ):
        response, stream = await h2c.tunnel(f"127.0.0.1:{upstream}")
        assert response.status == 200 and stream is not None
        await stream.send_all(b"ping")
        assert await read_exactly(stream, 4) == b"ping"
        await client.server.shutdown(grace=5)
        assert autojump_clock.current_time() >= 5
    await records.wait_for(1)
    (record,) = records
    assert record.outcome is Outcome.CANCELLED
    assert (record.stats.a_to_b, record.stats.b_to_a) == (4, 4)


async def test_every_tunnel_cut_at_once_is_cancelled(
    autojump_clock: trio.testing.MockClock,
    nursery: trio.Nursery,
    start_server: StartServer,
) -> None:
    """The server closes the streams it cuts one after another: a relay
    whose stream is closed first may end (quietly, as on a peer's close)
    before any cancel reaches it. It read the mark all the same."""
    upstream = await start_upstream(nursery, echo)
    records = Records()
    proxy = ConnectProxy(
        ConnectPolicy(allowed_ports={upstream}, allow_private=True),
        on_tunnel=records,
        hand_over=False,
    )
    server, port = await start_server(proxy)
    head = f"CONNECT 127.0.0.1:{upstream} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    clients = []
    for _ in range(3):
        client = await trio.open_tcp_stream("127.0.0.1", port)
        clients.append(client)
        await client.send_all(head)
        assert (await read_head(client))[0].startswith(b"HTTP/1.1 200")
    await server.shutdown(grace=5)
    await records.wait_for(3)
    assert [r.outcome for r in records] == [Outcome.CANCELLED] * 3
    for client in clients:
        await client.aclose()
