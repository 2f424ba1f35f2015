"""Reverse tunnels, the server side's error paths: refusals answered with
their status, bounds that close or refuse, control connections that end
every way they can, each on real loopback sockets and raw requests (the
protocol as a misbehaving or departing client speaks it)."""

from __future__ import annotations

import contextlib

import trio
import trio.testing

from hijack.tunnel.bind_rules import BindRule
from hijack.tunnel.lifecycle import Outcome
from hijack.tunnel.limits import TunnelLimits
from hijack.upgrades.reverse import ReverseTunnels

from ..conftest import StartServer
from ..daemons import free_port
from ..helpers import capture_log, read_head, read_until_closed, reset
from .test_reverse import RULES, Ends, raw, raw_publish, refuses


async def status_of(port: int, raw_request: bytes) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(raw_request)
        head, _ = await read_head(stream)
    return int(head.split()[1]), head


async def test_a_plain_request_without_fallback_gets_426_naming_the_protocol(
    start_server: StartServer,
) -> None:
    handler = ReverseTunnels(RULES)
    assert repr(handler) == "<ReverseTunnels rules=[127.0.0.1:1024-65535]>"
    assert repr(ReverseTunnels()) == "<ReverseTunnels rules=[per user]>"
    _, port = await start_server(handler)
    status, head = await status_of(
        port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert status == 426
    assert b"upgrade: hijack-reverse/1" in head.lower()


async def test_a_request_with_a_body_is_refused_400(start_server: StartServer) -> None:
    _, port = await start_server(ReverseTunnels(RULES))
    status, _ = await status_of(
        port,
        b"POST / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\n"
        b"Upgrade: hijack-reverse/1\r\nHijack-Reverse-Publish: 9000\r\n"
        b"Content-Length: 3\r\n\r\nabc",
    )
    assert status == 400


async def test_a_port_in_use_is_409_and_its_reservation_is_released(
    start_server: StartServer,
) -> None:
    _, port = await start_server(ReverseTunnels(RULES, max_published=1))
    busy = trio.socket.socket()
    await busy.bind(("127.0.0.1", 0))
    busy.listen()
    taken = busy.getsockname()[1]
    with capture_log("hijack.reverse") as log:
        stream, status, _ = await raw(port, {"Hijack-Reverse-Publish": str(taken)})
        await stream.aclose()
    assert status == 409
    assert any("cannot listen on" in r.getMessage() for r in log.records)
    busy.close()
    # The failed attempt does not count against the client's bound of 1.
    control, _, published = await raw_publish(port, str(taken))
    assert published["bind"] == f"127.0.0.1:{taken}"
    await control.aclose()


async def test_an_address_the_server_cannot_bind_is_503(
    start_server: StartServer,
) -> None:
    # 192.0.2.0/24 (TEST-NET-1) is on no interface here: EADDRNOTAVAIL.
    rules = [BindRule.parse("192.0.2.1:1024-65535")]
    _, port = await start_server(ReverseTunnels(rules))
    stream, status, _ = await raw(port, {"Hijack-Reverse-Publish": "192.0.2.1:9000"})
    await stream.aclose()
    assert status == 503


async def test_an_owner_under_its_bound_may_publish_again_after_unpublishing(
    start_server: StartServer,
) -> None:
    _, port = await start_server(ReverseTunnels(RULES, max_published=2))
    first, _, _ = await raw_publish(port, str(free_port()))
    second, _, _ = await raw_publish(port, str(free_port()))
    third = free_port()
    stream, status, _ = await raw(port, {"Hijack-Reverse-Publish": str(third)})
    await stream.aclose()
    assert status == 429
    await first.aclose()
    await trio.testing.wait_all_tasks_blocked()
    control, _, _ = await raw_publish(port, str(third))
    await control.aclose()
    await second.aclose()


async def test_pool_connections_over_max_pool_get_429(
    start_server: StartServer,
) -> None:
    _, port = await start_server(ReverseTunnels(RULES, max_pool=1))
    control, _, published = await raw_publish(port, str(free_port()))
    assert published["max_pool"] == 1
    session = {"Hijack-Reverse-Session": published["session"]}
    pooled, status, _ = await raw(port, session)
    assert status == 101
    extra, status, _ = await raw(port, session)
    await extra.aclose()
    assert status == 429
    await pooled.aclose()
    await control.aclose()


async def test_closing_the_control_connection_ends_its_pool_connections(
    start_server: StartServer,
) -> None:
    _, port = await start_server(ReverseTunnels(RULES))
    public = free_port()
    control, _, published = await raw_publish(port, str(public))
    pooled, status, _ = await raw(
        port, {"Hijack-Reverse-Session": published["session"]}
    )
    assert status == 101
    await control.aclose()
    assert await read_until_closed(pooled) == b""
    await pooled.aclose()
    assert await refuses(public)


async def test_a_client_ping_is_answered_with_a_pong(
    start_server: StartServer,
) -> None:
    _, port = await start_server(ReverseTunnels(RULES))
    control, reader, _ = await raw_publish(port, str(free_port()))
    await control.send_all(b'{"type":"ping"}\n')
    assert await reader.read() == {"type": "pong"}
    await control.aclose()


async def test_a_reset_control_connection_unpublishes_as_lost(
    start_server: StartServer,
) -> None:
    _, port = await start_server(ReverseTunnels(RULES))
    public = free_port()
    with capture_log("hijack.reverse") as log:
        control, _, _ = await raw_publish(port, str(public))
        reset(control)
        while not any("unpublished" in r.getMessage() for r in log.records):
            await log.logged.wait()
            log.logged = trio.Event()
    assert any(
        f"unpublished 127.0.0.1:{public}: connection lost" in r.getMessage()
        for r in log.records
    )
    assert await refuses(public)


async def test_public_connections_over_max_pending_are_closed_as_busy(
    start_server: StartServer,
) -> None:
    ends = Ends()
    limits = TunnelLimits(per_client=10)
    _, port = await start_server(
        ReverseTunnels(RULES, max_pending=1, limits=limits, on_tunnel=ends)
    )
    public = free_port()
    control, reader, published = await raw_publish(port, str(public))
    waiting = await trio.open_tcp_stream("127.0.0.1", public)
    opening = await reader.read()
    assert opening is not None and opening["type"] == "open"
    over = await trio.open_tcp_stream("127.0.0.1", public)
    assert await read_until_closed(over) == b""
    await over.aclose()
    await ends.wait_for(1)
    assert ends.records[0].outcome == Outcome.BUSY
    assert ends.records[0].reason == "too many wait for the client"
    assert limits.by_client["127.0.0.1"] == 1  # the busy one's lease is back
    # The waiting one is still claimable, and relayed.
    data, status, rest = await raw(
        port,
        {
            "Hijack-Reverse-Session": published["session"],
            "Hijack-Reverse-Claim": opening["claim"],
        },
    )
    assert status == 101
    if b"\n" not in rest:
        rest += await data.receive_some()
    assert b'"type":"open"' in rest.replace(b" ", b"")
    await waiting.send_all(b"to the client")
    got = rest.partition(b"\n")[2]
    while len(got) < len(b"to the client"):
        got += await data.receive_some()
    assert got == b"to the client"
    await waiting.aclose()
    await data.aclose()
    await ends.wait_for(2)
    assert limits.by_client["127.0.0.1"] == 0
    await control.aclose()


async def test_a_claim_whose_websocket_handshake_fails_closes_the_public_connection(
    start_server: StartServer,
) -> None:
    ends = Ends()
    _, port = await start_server(ReverseTunnels(RULES, on_tunnel=ends))
    public = free_port()
    control, reader, published = await raw_publish(port, str(public))
    waiting = await trio.open_tcp_stream("127.0.0.1", public)
    opening = await reader.read()
    assert opening is not None
    # A WebSocket offering the subprotocol, but without a Sec-WebSocket-Key.
    data, status, _ = await raw(
        port,
        {
            "Sec-WebSocket-Protocol": "hijack-reverse.v1",
            "Sec-WebSocket-Version": "13",
            "Hijack-Reverse-Session": published["session"],
            "Hijack-Reverse-Claim": opening["claim"],
        },
        upgrade="websocket",
    )
    await data.aclose()
    assert status == 400
    with contextlib.suppress(trio.BrokenResourceError):
        assert await read_until_closed(waiting) == b""
    await waiting.aclose()
    await ends.wait_for(1)
    assert ends.records[0].outcome == Outcome.CANCELLED
    assert ends.records[0].reason == "the data connection ended"
    await control.aclose()
