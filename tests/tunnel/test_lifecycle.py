"""One tunnel life cycle: CONNECT, ``Upgrade: tcp`` and the WebSocket bridge
report each tunnel once, with one outcome vocabulary, whether it was
refused, relayed by a task or handed to the hub."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import trio

from hijack.tunnel.lifecycle import Outcome, TunnelRecord, outcome_for_status
from hijack.tunnel.limits import TunnelLimits
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy
from hijack.upgrades.tcp import TCPUpgrade
from hijack.upgrades.wsbridge import WebSocketBridge

from ..client.test_forward import closed_port, echo
from ..conftest import StartServer
from ..helpers import read_head, read_until_closed, start_upstream
from ..upgrades.test_wsbridge import connect

ROOT = Path(__file__).resolve().parents[2]
UPGRADE_TCP = (
    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n"
)


class Records(list[TunnelRecord]):
    """An ``on_tunnel`` hook that keeps what it is given."""

    def __init__(self) -> None:
        super().__init__()
        self._added = trio.Event()

    def __call__(self, record: TunnelRecord) -> None:
        self.append(record)
        self._added.set()
        self._added = trio.Event()

    async def wait_for(self, count: int) -> None:
        # The hub reports from its own task once it closed both sockets.
        with trio.fail_after(5):
            while len(self) < count:
                await self._added.wait()


async def round_trip(port: int, head: bytes, status: bytes) -> None:
    """Open a tunnel with ``head``, send a word through it, read it back,
    close our side and read to the end."""
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(head)
        answer, rest = await read_head(stream)
        assert answer.startswith(b"HTTP/1.1 " + status), answer
        await stream.send_all(b"ping")
        while len(rest) < 4:
            rest += await stream.receive_some()
        assert rest == b"ping"
        await stream.send_eof()
        assert await read_until_closed(stream) == b""


@pytest.mark.parametrize("hand_over", [True, False], ids=["hub", "task-relay"])
async def test_connect_and_tcp_report_one_ok_record_each(
    nursery: trio.Nursery, start_server: StartServer, hand_over: bool
) -> None:
    upstream = await start_upstream(nursery, echo)
    records = Records()
    policy = ConnectPolicy(allowed_ports={upstream}, allow_private=True)
    connect_proxy = ConnectProxy(policy, on_tunnel=records, hand_over=hand_over)
    _, proxy_port = await start_server(connect_proxy)
    tcp = TCPUpgrade(("127.0.0.1", upstream), on_tunnel=records, hand_over=hand_over)
    _, tcp_port = await start_server(tcp)

    connect_head = f"CONNECT 127.0.0.1:{upstream} HTTP/1.1\r\nHost: x\r\n\r\n"
    await round_trip(proxy_port, connect_head.encode(), b"200")
    await round_trip(tcp_port, UPGRADE_TCP, b"101")
    await records.wait_for(2)
    await trio.testing.wait_all_tasks_blocked()
    assert [(r.kind, r.outcome, r.port) for r in records] == [
        ("connect", Outcome.OK, upstream),
        ("tcp", Outcome.OK, upstream),
    ]
    assert all(r.stats.a_to_b == r.stats.b_to_a == 4 for r in records)
    assert connect_proxy.open_tunnels == 0


async def test_wsbridge_tunnels_are_counted_like_the_others(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    upstream = await start_upstream(nursery, echo)
    records = Records()
    _, port = await start_server(
        WebSocketBridge(("127.0.0.1", upstream), on_tunnel=records)
    )
    client = await connect(port)
    async with client.stream:
        await client.send(b"ping")
        assert await client.receive_bytes(4) == b"ping"
        await client.close()
    await records.wait_for(1)
    (record,) = records
    assert (record.kind, record.outcome, record.detail) == (
        "wsbridge",
        Outcome.OK,
        "close 1000",
    )
    assert (record.stats.a_to_b, record.stats.b_to_a) == (4, 4)


async def test_refusals_are_reported_once_with_their_outcome(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    upstream = await start_upstream(nursery, echo)
    nowhere = await closed_port()
    records = Records()
    policy = ConnectPolicy(allowed_ports={upstream, nowhere}, allow_private=True)
    limits = TunnelLimits(per_client=1)
    _, proxy_port = await start_server(
        ConnectProxy(policy, on_tunnel=records, limits=limits, auth=("a", "b"))
    )
    _, tcp_port = await start_server(
        TCPUpgrade(("127.0.0.1", nowhere), on_tunnel=records)
    )

    async def status_of(port: int, head: str) -> bytes:
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(head.encode())
            answer, _ = await read_head(stream)
            return answer.split(b" ")[1]

    basic = "Host: x\r\nProxy-Authorization: Basic YTpi\r\n"  # a:b
    assert (
        await status_of(proxy_port, "CONNECT nowhere HTTP/1.1\r\nHost: x\r\n\r\n")
        == b"400"
    )
    no_credentials = f"CONNECT 10.0.0.1:{upstream} HTTP/1.1\r\nHost: x\r\n\r\n"
    assert await status_of(proxy_port, no_credentials) == b"407"
    assert await status_of(
        proxy_port, "CONNECT 127.0.0.1:1 HTTP/1.1\r\n" + basic + "\r\n"
    ) == (b"403")
    refused = f"CONNECT 127.0.0.1:{nowhere} HTTP/1.1\r\n{basic}\r\n"
    assert await status_of(proxy_port, refused) == b"502"
    assert await status_of(tcp_port, UPGRADE_TCP.decode()) == b"502"
    # The second tunnel of a client limited to one.
    async with await trio.open_tcp_stream("127.0.0.1", proxy_port) as first:
        head = f"CONNECT 127.0.0.1:{upstream} HTTP/1.1\r\n{basic}\r\n"
        await first.send_all(head.encode())
        assert (await read_head(first))[0].startswith(b"HTTP/1.1 200")
        assert await status_of(proxy_port, head) == b"429"
    await records.wait_for(7)
    assert [(r.kind, r.outcome) for r in records[:6]] == [
        ("connect", Outcome.BAD_REQUEST),
        ("connect", Outcome.UNAUTHORIZED),
        ("connect", Outcome.REFUSED),
        ("connect", Outcome.UNREACHABLE),
        ("tcp", Outcome.UNREACHABLE),
        ("connect", Outcome.LIMITED),
    ]
    assert records[6].outcome is Outcome.OK  # the first tunnel, closed by us


def test_every_refusal_status_has_its_own_word() -> None:
    statuses = [400, 401, 403, 404, 407, 429, 502, 503, 504]
    words = {outcome_for_status(status) for status in statuses}
    assert Outcome.ERROR not in words
    assert outcome_for_status(500) is Outcome.ERROR


def test_the_docs_list_every_outcome() -> None:
    page = (ROOT / "docs" / "reference" / "tunnel-outcomes.md").read_text()
    listed = set(re.findall(r"^\| `([a-z-]+)` \|", page, re.MULTILINE))
    assert listed == {outcome.value for outcome in Outcome}
