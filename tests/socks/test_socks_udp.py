"""UDP ASSOCIATE on loopback: datagrams both ways, and what RFC 1928
section 7 and the module promise: only the associating client, FRAG != 0
dropped, the policy judging each destination, the end with the TCP
connection or the idle timeout, the limits counting an association."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import trio
import trio.lowlevel

from hijack import Server
from hijack.socks import SocksServer, codec
from hijack.socks.codec import Command, Reply
from hijack.tunnel.limits import TunnelLimits
from hijack.tunnel.policy import ConnectPolicy

from ..conftest import StartServer
from ..helpers import LogCapture, capture_log, read_until_closed
from ..socks_client import socks_request
from .test_socks import StartSocks, not_http

Received = list[bytes]
#: 100 association requests a round, 100 at once. 20 rounds (2,000
#: associations) take 1.5-4 s here; the issue's 10,000 (ROUNDS = 100) pass
#: too but take 8.5 s (22 s with the box loaded), too long for `make test`.
ROUNDS = 20


@pytest.fixture
def start_socks(start_server: StartServer) -> StartSocks:
    """``server, port = await start_socks(SocksServer(...))``: SOCKS only."""

    async def start(socks: SocksServer) -> tuple[Server, int]:
        return await start_server(not_http, sniff=socks.sniff_all)

    return start


@pytest.fixture
def socks_log() -> Iterator[LogCapture]:
    with capture_log("hijack.socks") as log:
        yield log


async def udp_echo(
    task_status: trio.TaskStatus[tuple[int, Received]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Echo every datagram on 127.0.0.1, recording what arrived."""
    received: Received = []
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started((sock.getsockname()[1], received))
        while True:
            data, source = await sock.recvfrom(65535)
            received.append(data)
            await sock.sendto(data, source)


@pytest.fixture
async def echo(nursery: trio.Nursery) -> AsyncIterator[tuple[int, Received]]:
    async with trio.open_nursery() as inner:
        yield await inner.start(udp_echo)
        inner.cancel_scope.cancel()


def policy_for(port: int) -> ConnectPolicy:
    return ConnectPolicy(allowed_ports={port}, allow=["127.0.0.1"])


class Client:
    """One UDP socket of a client of an association."""

    def __init__(self, relay: tuple[str, int]) -> None:
        self.relay = relay
        self.sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    async def send(self, host: str, port: int, payload: bytes, frag: int = 0) -> None:
        await self.sock.sendto(codec.encode_udp(host, port, payload, frag), self.relay)

    async def receive(self) -> tuple[str, int, bytes]:
        with trio.fail_after(10):
            data, source = await self.sock.recvfrom(65535)
        assert source[:2] == self.relay
        header = codec.parse_udp(data)
        assert header.frag == 0
        return header.host, header.port, data[header.payload_offset :]

    def close(self) -> None:
        self.sock.close()


async def associate(port: int) -> tuple[trio.SocketStream, Client]:
    control, reply = await socks_request(port, Command.UDP_ASSOCIATE, "0.0.0.0", 0)
    assert reply.reply == Reply.SUCCEEDED
    assert reply.host == "127.0.0.1" and reply.port
    return control, Client((reply.host, reply.port))


async def test_datagrams_both_ways(
    start_socks: StartSocks, echo: tuple[int, Received], socks_log: LogCapture
) -> None:
    echo_port, _ = echo
    _, port = await start_socks(SocksServer(policy_for(echo_port)))
    control, client = await associate(port)
    try:
        for payload in (b"one", b"two", b"x" * 1400):
            await client.send("127.0.0.1", echo_port, payload)
            assert await client.receive() == ("127.0.0.1", echo_port, payload)
    finally:
        client.close()
        await control.aclose()
    with trio.fail_after(10):
        await socks_log.logged.wait()
    line = socks_log.records[0].getMessage()
    assert line.startswith("socks5-udp ") and " ok " in line, line
    assert "datagrams=3/3 dropped=0" in line, line


async def test_only_the_associating_client_fragments_and_refusals_dropped(
    start_socks: StartSocks, echo: tuple[int, Received], socks_log: LogCapture
) -> None:
    """A datagram from another port, one with FRAG != 0, one to a refused
    destination, a malformed one: dropped and counted. The good one sent
    after them comes back, so they were all handled by then."""
    echo_port, received = echo
    _, port = await start_socks(SocksServer(policy_for(echo_port)))
    control, client = await associate(port)
    intruder = Client(client.relay)
    try:
        await client.send("127.0.0.1", echo_port, b"first")  # fixes the port
        assert (await client.receive())[2] == b"first"
        await intruder.send("127.0.0.1", echo_port, b"intruder")
        await client.send("127.0.0.1", echo_port, b"fragment", frag=1)
        await client.send("127.0.0.1", 22, b"refused port")
        await client.send("10.0.0.1", echo_port, b"private")
        await client.sock.sendto(b"\x00\x00\x00\x09junk", client.relay)
        await client.send("127.0.0.1", echo_port, b"last")
        assert (await client.receive())[2] == b"last"
    finally:
        intruder.close()
        client.close()
        await control.aclose()
    assert received == [b"first", b"last"]
    with trio.fail_after(10):
        await socks_log.logged.wait()
    line = socks_log.records[0].getMessage()
    assert "dropped=5(foreign:1,fragment:1,malformed:1,refused:2)" in line, line


async def reporter(
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answers each datagram with the source port it came from."""
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        await sock.bind(("127.0.0.1", 0))
        task_status.started(sock.getsockname()[1])
        while True:
            _, source = await sock.recvfrom(100)
            await sock.sendto(str(source[1]).encode(), source)


async def test_answers_only_from_contacted_peers(
    start_socks: StartSocks, echo: tuple[int, Received], socks_log: LogCapture
) -> None:
    """A stranger who learns the relay's outbound port gets nothing through
    to the client: only peers the client sent to are answered."""
    echo_port, _ = echo
    async with trio.open_nursery() as nursery:
        reporter_port = await nursery.start(reporter)
        policy = ConnectPolicy(
            allowed_ports={echo_port, reporter_port}, allow=["127.0.0.1"]
        )
        _, port = await start_socks(SocksServer(policy))
        control, client = await associate(port)
        stranger = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            await client.send("127.0.0.1", reporter_port, b"where from?")
            outbound = int((await client.receive())[2])
            await stranger.sendto(b"let me in", ("127.0.0.1", outbound))
            await client.send("127.0.0.1", echo_port, b"echo")
            assert await client.receive() == ("127.0.0.1", echo_port, b"echo")
        finally:
            stranger.close()
            client.close()
            await control.aclose()
        with trio.fail_after(10):
            await socks_log.logged.wait()
        line = socks_log.records[0].getMessage()
        assert "dropped=1(unsolicited:1)" in line, line
        nursery.cancel_scope.cancel()


async def test_association_ends_with_its_tcp_connection(
    start_socks: StartSocks, echo: tuple[int, Received], socks_log: LogCapture
) -> None:
    echo_port, _ = echo
    socks = SocksServer(policy_for(echo_port))
    _, port = await start_socks(socks)
    control, client = await associate(port)
    assert socks.open_tunnels == 1
    await control.aclose()
    with trio.fail_after(10):
        await socks_log.logged.wait()
    assert socks.open_tunnels == 0
    client.close()
    # The relay socket is closed: a datagram to it is refused (ICMP, seen
    # on a connected socket).
    with trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        await probe.connect(client.relay)
        await probe.send(codec.encode_udp("127.0.0.1", echo_port, b"too late"))
        with pytest.raises(ConnectionRefusedError), trio.fail_after(10):
            await probe.recv(100)


async def test_idle_association_ends_and_closes_its_tcp_connection(
    start_socks: StartSocks, echo: tuple[int, Received], socks_log: LogCapture
) -> None:
    echo_port, _ = echo
    socks = SocksServer(policy_for(echo_port), udp_idle_timeout=0.2)
    _, port = await start_socks(socks)
    control, client = await associate(port)
    async with control:
        await client.send("127.0.0.1", echo_port, b"once")
        await client.receive()
        with trio.fail_after(10):
            assert await read_until_closed(control) == b""
    client.close()
    with trio.fail_after(10):
        await socks_log.logged.wait()
    assert " idle-timeout " in socks_log.records[0].getMessage()


async def test_largest_datagram_and_then_a_small_one(
    start_socks: StartSocks, echo: tuple[int, Received]
) -> None:
    """The largest payload IPv4 carries with a SOCKS header on top either
    way goes through whole; the association is fine after it."""
    echo_port, _ = echo
    _, port = await start_socks(SocksServer(policy_for(echo_port)))
    control, client = await associate(port)
    try:
        big = bytes(range(256)) * 255 + b"x" * 217  # 65,497 bytes
        await client.send("127.0.0.1", echo_port, big)
        assert (await client.receive())[2] == big
        await client.send("127.0.0.1", echo_port, b"small")
        assert (await client.receive())[2] == b"small"
    finally:
        client.close()
        await control.aclose()


async def test_associations_count_against_limits(
    start_socks: StartSocks, echo: tuple[int, Received]
) -> None:
    echo_port, _ = echo
    limits = TunnelLimits(per_client=1)
    socks = SocksServer(policy_for(echo_port), limits=limits)
    _, port = await start_socks(socks)
    control, client = await associate(port)
    second, reply = await socks_request(port, Command.CONNECT, "127.0.0.1", echo_port)
    await second.aclose()
    assert reply.reply == Reply.NOT_ALLOWED
    client.close()
    await control.aclose()
    with trio.fail_after(10):
        while limits.by_client:  # noqa: ASYNC110 - the server's tasks end on their own
            await trio.sleep(0.01)


async def test_udp_off_answers_07(start_socks: StartSocks) -> None:
    _, port = await start_socks(SocksServer(udp=False))
    control, reply = await socks_request(port, Command.UDP_ASSOCIATE, "0.0.0.0", 0)
    await control.aclose()
    assert reply.reply == Reply.COMMAND_NOT_SUPPORTED


async def test_many_associations_leave_nothing_behind(
    start_socks: StartSocks, echo: tuple[int, Received]
) -> None:
    """Associations opened and closed in a bounded loop, many at once:
    each gets its relay, each is counted back, and no fd is left (the
    fixtures check); ``max_tunnels`` bounds how many live at once."""
    echo_port, _ = echo
    socks = SocksServer(policy_for(echo_port), max_tunnels=50)
    _, port = await start_socks(socks)
    answers: list[int] = []

    async def one() -> None:
        control, reply = await socks_request(port, Command.UDP_ASSOCIATE, "0.0.0.0", 0)
        answers.append(reply.reply)
        await trio.lowlevel.checkpoint()  # hold it while the others arrive
        await control.aclose()

    for _ in range(ROUNDS):
        async with trio.open_nursery() as nursery:
            for _ in range(100):
                nursery.start_soon(one)
    assert len(answers) == ROUNDS * 100
    assert set(answers) <= {Reply.SUCCEEDED, Reply.GENERAL_FAILURE}
    assert answers.count(Reply.SUCCEEDED) >= ROUNDS * 50  # each round gets its 50
    with trio.fail_after(10):
        while socks.open_tunnels:  # noqa: ASYNC110 - as above
            await trio.sleep(0.01)
