"""UDP ASSOCIATE, the edges: datagrams from the wrong address or port,
headers that do not parse, a destination the kernel will not send to (each
dropped and counted in the end line), the association's end with a reset
control connection or the server's shutdown, noise on the control
connection, a name that does not resolve in time, and the bounded tables."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
import trio.testing

from hijack import Server
from hijack.socks import SocksServer, codec
from hijack.socks.codec import Command, Reply
from hijack.socks.udp import MAX_PEERS, MAX_VERDICTS, Association
from hijack.tunnel.policy import ConnectPolicy

from ..conftest import StartServer
from ..helpers import LogCapture, capture_log, read_until_closed, reset
from ..socks_client import handshake, read_reply, socks_request
from .test_socks import StartSocks, not_http
from .test_socks_udp import Client, Received, associate, policy_for, udp_echo


@pytest.fixture
def start_socks(start_server: StartServer) -> StartSocks:
    async def start(socks: SocksServer) -> tuple[Server, int]:
        return await start_server(not_http, sniff=socks.sniff_all)

    return start


@pytest.fixture
async def echo(nursery: trio.Nursery) -> AsyncIterator[tuple[int, Received]]:
    async with trio.open_nursery() as inner:
        yield await inner.start(udp_echo)
        inner.cancel_scope.cancel()


async def end_line(log: LogCapture) -> str:
    with trio.fail_after(10):
        while not log.records:
            await log.logged.wait()
    return log.records[0].getMessage()


async def test_a_datagram_from_another_address_or_port_is_foreign(
    start_socks: StartSocks, echo: tuple[int, Received]
) -> None:
    """The request named the client's UDP port: a datagram from the same
    address but another port, or from another address, is dropped."""
    echo_port, received = echo
    _, port = await start_socks(SocksServer(policy_for(echo_port)))
    client_sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    await client_sock.bind(("127.0.0.1", 0))
    named = client_sock.getsockname()[1]
    with capture_log("hijack.socks") as log:
        control, reply = await socks_request(
            port, Command.UDP_ASSOCIATE, "127.0.0.1", named
        )
        assert reply.reply == Reply.SUCCEEDED
        client = Client((reply.host, reply.port))
        other_address = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        await other_address.bind(("127.0.0.2", 0))
        try:
            # The client's address, but not the port it named.
            await client.send("127.0.0.1", echo_port, b"wrong port")
            datagram = codec.encode_udp("127.0.0.1", echo_port, b"wrong address")
            await other_address.sendto(datagram, client.relay)
            client.sock.close()
            client.sock = client_sock
            await client.send("127.0.0.1", echo_port, b"named")
            assert await client.receive() == ("127.0.0.1", echo_port, b"named")
        finally:
            other_address.close()
            client.close()
            await control.aclose()
        line = await end_line(log)
    assert received == [b"named"]
    assert "dropped=2(foreign:2)" in line, line


async def test_an_unknown_address_type_is_malformed_and_noise_on_the_control_is_ignored(
    start_socks: StartSocks, echo: tuple[int, Received]
) -> None:
    echo_port, received = echo
    _, port = await start_socks(SocksServer(policy_for(echo_port)))
    with capture_log("hijack.socks") as log:
        control, client = await associate(port)
        try:
            await control.send_all(b"nothing is expected here")
            # Long enough for a header, but address type 9 does not exist.
            await client.sock.sendto(b"\x00\x00\x00\x09" + b"\x00" * 12, client.relay)
            await client.send("127.0.0.1", echo_port, b"after")
            assert (await client.receive())[2] == b"after"
        finally:
            client.close()
            await control.aclose()
        line = await end_line(log)
    assert received == [b"after"]
    assert "dropped=1(malformed:1)" in line, line


async def test_a_destination_the_kernel_refuses_is_counted_send_failed(
    start_socks: StartSocks, echo: tuple[int, Received]
) -> None:
    """The limited broadcast address needs SO_BROADCAST, which the relay
    does not set: sendto fails, the datagram is counted, the association
    goes on."""
    echo_port, _ = echo
    policy = ConnectPolicy(
        allowed_ports={echo_port}, allow=["127.0.0.1", "255.255.255.255"]
    )
    _, port = await start_socks(SocksServer(policy))
    with capture_log("hijack.socks") as log:
        control, client = await associate(port)
        try:
            await client.send("255.255.255.255", echo_port, b"to everyone")
            await client.send("127.0.0.1", echo_port, b"to one")
            assert (await client.receive())[2] == b"to one"
        finally:
            client.close()
            await control.aclose()
        line = await end_line(log)
    assert "datagrams=1/1 dropped=1(send-failed:1)" in line, line


async def test_a_reset_control_connection_ends_the_association(
    start_socks: StartSocks, echo: tuple[int, Received]
) -> None:
    echo_port, _ = echo
    socks = SocksServer(policy_for(echo_port))
    _, port = await start_socks(socks)
    with capture_log("hijack.socks") as log:
        control, client = await associate(port)
        assert socks.open_tunnels == 1
        reset(control)
        line = await end_line(log)
    client.close()
    assert socks.open_tunnels == 0
    assert line.startswith("socks5-udp ") and " ok " in line, line


async def test_server_shutdown_ends_the_association(
    start_socks: StartSocks, echo: tuple[int, Received]
) -> None:
    echo_port, _ = echo
    socks = SocksServer(policy_for(echo_port))
    server, port = await start_socks(socks)
    with capture_log("hijack.socks") as log:
        control, client = await associate(port)
        async with control:
            await server.shutdown(grace=10)
            assert await read_until_closed(control) == b""
        line = await end_line(log)
    client.close()
    assert socks.open_tunnels == 0
    assert line.startswith("socks5-udp "), line


def loopback_policy() -> ConnectPolicy:
    return ConnectPolicy(allowed_ports=None, allow=["127.0.0.1", "slow.example"])


async def test_a_name_that_does_not_resolve_in_time_is_refused_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A resolver that never answers: the first datagram to the name waits
    resolve_timeout, then the refusal is remembered, so the next ones to
    the same name are dropped at once."""
    lookups = 0

    async def silent_resolver(*args: object, **kwargs: object) -> list[object]:
        nonlocal lookups
        lookups += 1
        await trio.sleep_forever()
        raise AssertionError("not reached")

    association = Association(
        ipaddress.ip_address("127.0.0.1"),
        0,
        loopback_policy(),
        silent_resolver,  # type: ignore[arg-type]
        5.0,
        dual_stack=False,
    )
    datagram = codec.encode_udp("slow.example", 53, b"query")
    start = trio.current_time()
    assert await association.destination(datagram) is None
    assert trio.current_time() - start == pytest.approx(5)
    assert await association.destination(datagram) is None
    assert trio.current_time() - start == pytest.approx(5)
    assert lookups == 1
    assert association.dropped == {"refused": 2}


async def test_the_verdict_and_peer_tables_stay_bounded() -> None:
    association = Association(
        ipaddress.ip_address("127.0.0.1"),
        0,
        loopback_policy(),
        trio.socket.getaddrinfo,
        5.0,
        dual_stack=False,
    )
    for port in range(1, MAX_VERDICTS + 11):
        where = await association.destination(codec.encode_udp("127.0.0.1", port, b""))
        assert where is not None and where[1] == ("127.0.0.1", port)
        association.contacted(where[1], where[0])
    assert len(association.verdicts) == MAX_VERDICTS
    # The oldest were forgotten; the newest are still known.
    assert (b"\x00\x00\x00\x01\x7f\x00\x00\x01" + (1).to_bytes(2, "big")) not in (
        association.verdicts
    )
    for n in range(MAX_PEERS + 5):
        association.contacted(("127.0.0.1", 20000 + n), ("127.0.0.1", 20000 + n))
    assert len(association.peers) == MAX_PEERS
    newest = ("127.0.0.1", 20000 + MAX_PEERS + 4)
    assert association.answer_header(newest) == codec.encode_udp(*newest, b"")
    assert association.answer_header(("127.0.0.1", 1)) is None


async def test_udp_associate_over_a_unix_socket_is_a_general_failure(
    nursery: trio.Nursery, no_leaks: None, tmp_path: Path
) -> None:
    """A client on a UNIX socket has no address a datagram could come
    from: its UDP ASSOCIATE is answered 01 and counts no tunnel."""
    socks = SocksServer(policy_for(9))
    server = Server(not_http, sniff=socks.sniff_all)
    path = str(tmp_path / "socks.sock")
    await nursery.start(server.serve_unix, path)
    stream = await trio.open_unix_socket(path)
    async with stream:
        await handshake(stream)
        await stream.send_all(codec.encode_request(Command.UDP_ASSOCIATE, "0.0.0.0", 0))
        reply = await read_reply(stream)
        assert reply.reply == Reply.GENERAL_FAILURE
    assert socks.open_tunnels == 0
    await server.shutdown(grace=0)
