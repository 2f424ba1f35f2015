"""The WebSocket-to-TCP bridge: bytes both ways, closes, backpressure,
answers before the handshake, token targets and the destination policy."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from websockets.protocol import State
from websockets.uri import parse_uri

from hijack import Server
from hijack.testing import MemoryListener
from hijack.upgrades.connect import ConnectPolicy
from hijack.upgrades.websocket import ClientProtocol, ConnectionClosed, WebSocket
from hijack.upgrades.wsbridge import (
    TargetFile,
    WebSocketBridge,
    WebSocketStream,
    parse_targets,
)

from ..client.test_forward import closed_port, echo
from ..conftest import StartServer
from ..helpers import (
    UpstreamHandler,
    capture_log,
    read_exactly,
    read_until,
    read_until_closed,
    start_upstream,
)
from ..ws_test_client import Closed, Refused, WSClient

MemoryServer = Callable[..., Awaitable[tuple[Server, MemoryListener]]]


async def connect(port: int, path: str = "/", **kwargs: object) -> WSClient:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        return await WSClient.connect(stream, path, **kwargs)  # type: ignore[arg-type]
    except BaseException:
        await stream.aclose()
        raise


async def start_bridge(
    nursery: trio.Nursery, start_server: StartServer, upstream: UpstreamHandler = echo
) -> int:
    """The port of a WebSocketBridge to a new loopback TCP server that runs
    ``upstream`` on each connection."""
    upstream_port = await start_upstream(nursery, upstream)
    _, port = await start_server(WebSocketBridge(("127.0.0.1", upstream_port)))
    return port


async def http_get(port: int, path: str = "/") -> bytes:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(
            f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode()
        )
        return await read_until_closed(stream)


# -- bytes both ways ------------------------------------------------------------


async def test_bytes_both_ways_with_the_binary_subprotocol(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    port = await start_bridge(nursery, start_server)
    client = await connect(port)
    async with client.stream:
        assert client.subprotocol == "binary"
        for message in (b"one", b"\x00\xff" * 1000, os.urandom(600_000)):
            await client.send(message)
            assert await client.receive_bytes(len(message)) == message
        assert await client.close() == 1000


async def test_a_client_without_subprotocol_is_served_too(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    port = await start_bridge(nursery, start_server)
    client = await connect(port, subprotocols=())
    async with client.stream:
        assert client.subprotocol is None
        await client.send(b"plain")
        assert await client.receive_bytes(5) == b"plain"


async def test_upstream_eof_closes_the_websocket_after_its_bytes(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    big = os.urandom(1_500_000)

    async def banner_then_close(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"HELLO " + big)

    port = await start_bridge(nursery, start_server, banner_then_close)
    client = await connect(port)
    async with client.stream:
        assert await client.receive_bytes(6 + len(big)) == b"HELLO " + big
        with pytest.raises(Closed) as closed:
            await client.receive()
        assert closed.value.code == 1000


async def bridge_over_memory(
    memory_server: MemoryServer, **bridge_kwargs: Any
) -> tuple[Server, WSClient, trio.abc.Stream]:
    """A WebSocketBridge whose upstream is one end of a memory stream pair:
    the server, a WSClient connected to it, and the upstream's end."""
    upstream_end, bridge_end = trio.testing.memory_stream_pair()

    async def dial(host: str, port: int) -> trio.abc.Stream:
        return bridge_end

    server, listener = await memory_server(
        WebSocketBridge(("upstream", 1), dial=dial, **bridge_kwargs)
    )
    return server, await WSClient.connect(await listener.connect()), upstream_end


async def test_client_close_gives_the_upstream_every_byte_then_eof(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    received: list[bytes] = []
    done = trio.Event()

    async def collect(stream: trio.SocketStream) -> None:
        async with stream:
            received.append(await read_until_closed(stream))
            done.set()

    port = await start_bridge(nursery, start_server, collect)
    client = await connect(port)
    payload = [os.urandom(100_000) for _ in range(5)]
    async with client.stream:
        for part in payload:
            await client.send(part)
        assert await client.close() == 1000
    await done.wait()
    assert received == [b"".join(payload)]


@pytest.mark.parametrize("upstream_talks", [False, True])
async def test_after_the_websocket_closed_the_upstream_gets_eof_then_is_cut(
    memory_server: MemoryServer,
    autojump_clock: trio.testing.MockClock,
    upstream_talks: bool,
) -> None:
    _, client, client_end = await bridge_over_memory(memory_server, close_timeout=7)
    await client.send(b"bye")
    with capture_log("hijack.wsbridge") as bridge_log:
        assert await client.close() == 1000
        assert await read_exactly(client_end, 3) == b"bye"
        assert await client_end.receive_some() == b""  # EOF, at once
        start = trio.current_time()
        if upstream_talks:
            # Nobody can read it any more: the tunnel ends at once.
            await client_end.send_all(b"too late")
        await bridge_log.logged.wait()
    # An upstream that ignores EOF gets close_timeout to close, then is cut.
    assert trio.current_time() - start == (0 if upstream_talks else 7)
    assert "up=3 down=0" in bridge_log.records[-1].getMessage()
    with pytest.raises(trio.BrokenResourceError):
        await client_end.send_all(b"cut")
    await client_end.aclose()
    await client.aclose()


async def test_an_idle_tunnel_is_cut_after_idle_timeout(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    _, client, client_end = await bridge_over_memory(
        memory_server, idle_timeout=60, ping_interval=None
    )
    await client.send(b"x")
    with capture_log("hijack.wsbridge") as log:
        assert await read_exactly(client_end, 1) == b"x"
        start = trio.current_time()
        with pytest.raises(Closed) as closed:
            await client.receive()
        await log.logged.wait()
    assert trio.current_time() - start == 60
    # Both sides are closed at once, as a TCP tunnel's are; the close frame
    # is best effort (the relay closes its streams under a cancel).
    assert closed.value.code in (1000, 1006)
    assert await client_end.receive_some() == b""
    assert "idle-timeout" in log.records[-1].getMessage()
    await client_end.aclose()
    await client.aclose()


async def test_graceful_shutdown_closes_1001_and_ends_the_upstream(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    server, client, client_end = await bridge_over_memory(memory_server)
    await client.send(b"last words")
    assert await read_exactly(client_end, 10) == b"last words"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.shutdown, 30)
        with pytest.raises(Closed) as closed:
            await client.receive()
        assert closed.value.code == 1001
        assert await client_end.receive_some() == b""  # the upstream's EOF
        await client_end.aclose()
    assert trio.current_time() < 30  # well before the grace ran out
    await client.aclose()


async def test_a_silent_client_is_dropped_by_keepalive_and_the_upstream_ends(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    _, client, client_end = await bridge_over_memory(
        memory_server, ping_interval=20, ping_timeout=10
    )
    start = trio.current_time()
    # The client never reads again, so it never answers the ping: after
    # 20 + 10 s the bridge gives up on it, and the upstream gets its EOF.
    assert await client_end.receive_some() == b""
    assert trio.current_time() - start == 30
    await client_end.aclose()
    await client.aclose()


async def test_text_message_closes_1003(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    port = await start_bridge(nursery, start_server)
    client = await connect(port)
    async with client.stream:
        await client.send("text is not bytes")
        with pytest.raises(Closed) as closed:
            await client.receive()
        assert closed.value.code == 1003


# -- WebSocketStream ---------------------------------------------------------------


def websocket_pair() -> tuple[WebSocket, WebSocket]:
    """A server and a client WebSocket over memory streams."""
    server_end, client_end = trio.testing.memory_stream_pair()
    server = WebSocket(server_end, ping_interval=None)
    protocol = ClientProtocol(parse_uri("ws://test/"), state=State.OPEN)
    return server, WebSocket(client_end, protocol=protocol, ping_interval=None)


async def test_websocket_stream_hands_out_messages_in_pieces() -> None:
    server, client = websocket_pair()
    ends: list[bool] = []
    stream = WebSocketStream(server, on_eof=lambda: ends.append(True))
    for message in (b"0123456789", b"", b"abc"):
        await client.send(message)
    pieces = [await stream.receive_some(4) for _ in range(4)]
    assert pieces == [b"0123", b"4567", b"89", b"abc"]  # the empty one skipped
    await stream.send_all(b"back")
    assert await client.receive() == b"back"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.close)
        assert await stream.receive_some() == b""
        assert await stream.receive_some() == b""
    assert ends == [True]  # once
    with pytest.raises(trio.BrokenResourceError):
        await stream.send_all(b"after the close")
    await stream.aclose()


async def test_websocket_stream_closes_1003_on_text() -> None:
    server, client = websocket_pair()
    stream = WebSocketStream(server)
    await client.send("text")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(stream.receive_some)
        with pytest.raises(ConnectionClosed) as closed:
            await client.receive()
    assert closed.value.code == 1003
    await client.aclose()
    await stream.aclose()


# -- backpressure ------------------------------------------------------------------


async def test_a_slow_upstream_stops_the_websocket_reader(
    memory_server: MemoryServer,
) -> None:
    # No buffer anywhere: lockstep streams hand bytes over only while the
    # other side reads. So what the client got out is what the bridge read.
    client_end, upstream_end = trio.testing.lockstep_stream_pair()

    async def dial(host: str, port: int) -> trio.abc.Stream:
        return upstream_end

    _, listener = await memory_server(
        WebSocketBridge(("upstream", 1), dial=dial),
        listener=MemoryListener(trio.testing.lockstep_stream_pair),
    )
    client = await WSClient.connect(await listener.connect())
    message = b"m" * 100_000
    sent = 0

    async def send_forever() -> None:
        nonlocal sent
        while True:
            await client.send(message)
            sent += 1

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send_forever)
        await trio.testing.wait_all_tasks_blocked()
        # The bridge holds one message (in send_all to the upstream) and the
        # WebSocket at most one read (64 KiB) more; the client is blocked.
        assert sent <= 2
        stalled_at = sent
        # The upstream reads: the flow resumes, bytes intact and in order.
        got = await read_exactly(client_end, 10 * len(message))
        assert got == message * 10
        assert sent > stalled_at
        nursery.cancel_scope.cancel()
    await client_end.aclose()
    await client.aclose()


# -- answers before the handshake --------------------------------------------------


async def test_plain_get_is_426(start_server: StartServer) -> None:
    _, port = await start_server(WebSocketBridge(("127.0.0.1", 9)))
    answer = await http_get(port)
    head = answer.split(b"\r\n\r\n")[0].lower()
    assert head.startswith(b"http/1.1 426 ")
    assert b"\r\nupgrade: websocket" in head
    assert b"sec-websocket-version: 13" in head


async def test_base64_only_client_is_400(
    nursery: trio.Nursery, start_server: StartServer
) -> None:
    port = await start_bridge(nursery, start_server)
    with pytest.raises(Refused) as refused:
        await connect(port, subprotocols=("base64",))
    assert refused.value.status == 400
    assert b"binary" in refused.value.body


async def test_refused_upstream_is_502_before_the_handshake(
    start_server: StartServer, caplog: pytest.LogCaptureFixture
) -> None:
    upstream = await closed_port()
    _, port = await start_server(WebSocketBridge(("127.0.0.1", upstream)))
    with (
        caplog.at_level(logging.INFO, logger="hijack.wsbridge"),
        pytest.raises(Refused) as refused,
    ):
        await connect(port)
    assert refused.value.status == 502
    lines = [r.getMessage() for r in caplog.records if r.name == "hijack.wsbridge"]
    assert any(f"127.0.0.1:{upstream} unreachable" in line for line in lines), lines


@pytest.mark.parametrize(
    ("extra", "status"),
    [
        (b"Origin: https://evil.example\r\n", b"403"),
        (b"Sec-WebSocket-Version: 8\r\n", b"426"),
    ],
)
async def test_a_refused_handshake_never_reaches_the_upstream(
    memory_server: MemoryServer, extra: bytes, status: bytes
) -> None:
    dialled: list[tuple[str, int]] = []

    async def dial(host: str, port: int) -> trio.abc.Stream:
        dialled.append((host, port))
        raise OSError("should not be dialled")

    bridge = WebSocketBridge(
        ("upstream", 1), dial=dial, allowed_origins=["https://good.example"]
    )
    _, listener = await memory_server(bridge)
    client = await listener.connect()
    version = b"" if b"Version" in extra else b"Sec-WebSocket-Version: 13\r\n"
    await client.send_all(
        b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" + version + extra + b"\r\n"
    )
    answer = await read_until(client, b"\r\n\r\n")
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert dialled == []
    await client.aclose()


async def test_slow_upstream_is_504(
    memory_server: MemoryServer, autojump_clock: trio.testing.MockClock
) -> None:
    async def dial(host: str, port: int) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError

    _, listener = await memory_server(
        WebSocketBridge(("upstream", 1), dial=dial, connect_timeout=3)
    )
    with pytest.raises(Refused) as refused:
        await WSClient.connect(await listener.connect())
    assert refused.value.status == 504


# -- token targets and the policy ----------------------------------------------


def test_parse_targets_reads_websockify_token_files() -> None:
    text = "# comment\n\nvnc1: 10.0.0.5:5900\nssh : [2001:db8::1]:22\n"
    assert parse_targets(text) == {
        "vnc1": ("10.0.0.5", 5900),
        "ssh": ("2001:db8::1", 22),
    }


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("just-a-token\n", "t:1: expected 'token: host:port'"),
        ("a: h:1\na: h:2\n", "t:2: token 'a' given twice"),
        ("a: h:0\n", "t:1:"),
        ("a: nohost\n", "t:1:"),
        ("a b: h:1\n", "t:1: expected"),
    ],
)
def test_parse_targets_names_the_bad_line(text: str, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_targets(text, "t")


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    return tmp_path / "tokens"


async def test_token_picks_the_target_and_the_policy_checks_it(
    nursery: trio.Nursery, start_server: StartServer, token_file: Path
) -> None:
    upstream = await start_upstream(nursery, echo)
    token_file.write_text(f"good: 127.0.0.1:{upstream}\nmeta: 169.254.169.254:80\n")
    policy = ConnectPolicy(allowed_ports={upstream}, allow=["127.0.0.1"])
    _, port = await start_server(
        WebSocketBridge(targets=TargetFile(token_file), policy=policy)
    )
    client = await connect(port, "/websockify?token=good")
    async with client.stream:
        await client.send(b"via token")
        assert await client.receive_bytes(9) == b"via token"

    for path, status in [
        ("/?token=meta", 403),  # link-local metadata: refused by the policy
        ("/?token=nope", 404),
        ("/", 400),
        ("/?token=good&token=meta", 400),
    ]:
        with pytest.raises(Refused) as refused:
            await connect(port, path)
        assert refused.value.status == status, path


async def test_default_policy_refuses_loopback_targets(
    nursery: trio.Nursery, start_server: StartServer, token_file: Path
) -> None:
    upstream = await start_upstream(nursery, echo)
    token_file.write_text(f"local: 127.0.0.1:{upstream}\nnamed: localhost:443\n")
    _, port = await start_server(WebSocketBridge(targets=TargetFile(token_file)))
    for token in ("local", "named"):
        with pytest.raises(Refused) as refused:
            await connect(port, f"/?token={token}")
        assert refused.value.status == 403
        assert b"127.0.0.1" not in refused.value.body


async def test_the_target_file_is_read_again_when_it_changes(
    nursery: trio.Nursery, start_server: StartServer, token_file: Path
) -> None:
    upstream = await start_upstream(nursery, echo)
    token_file.write_text("old: 127.0.0.1:1\n")
    policy = ConnectPolicy(allowed_ports=None, allow_private=True)
    _, port = await start_server(
        WebSocketBridge(targets=TargetFile(token_file), policy=policy)
    )
    with pytest.raises(Refused) as refused:
        await connect(port, "/?token=new")
    assert refused.value.status == 404

    token_file.write_text(f"old: 127.0.0.1:1\nnew: 127.0.0.1:{upstream}\n")
    client = await connect(port, "/?token=new")
    async with client.stream:
        await client.send(b"x")
        assert await client.receive_bytes(1) == b"x"

    # A broken edit keeps the table that worked.
    token_file.write_text("new 127.0.0.1\n")
    client = await connect(port, "/?token=new")
    await client.aclose()


def test_bridge_takes_upstream_or_targets(token_file: Path) -> None:
    token_file.write_text("")
    with pytest.raises(ValueError, match="either upstream or targets"):
        WebSocketBridge()
    with pytest.raises(ValueError, match="either upstream or targets"):
        WebSocketBridge(("h", 1), targets=TargetFile(token_file))
    with pytest.raises(ValueError, match="policy checks targets"):
        WebSocketBridge(("h", 1), policy=ConnectPolicy())


# -- the command line ------------------------------------------------------------


@pytest.mark.parametrize(
    ("flags", "words"),
    [
        (["--targets", "{bad}"], "tokens:2: token 'a' given twice"),
        (["--targets", "{missing}"], "No such file"),
        (["--upstream", "127.0.0.1:1", "--allow-private"], "check --targets"),
    ],
)
def test_wsbridge_command_refuses_bad_setups(
    token_file: Path, flags: list[str], words: str
) -> None:
    token_file.write_text("a: 127.0.0.1:1\na: 127.0.0.1:2\n")
    paths = {"bad": token_file, "missing": token_file.with_name("missing")}
    result = subprocess.run(
        [sys.executable, "-m", "hijack", "wsbridge", "--listen", "127.0.0.1:0"]
        + [flag.format(**paths) for flag in flags],
        capture_output=True,
        timeout=30,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode != 0
    assert words in result.stderr.decode()


def test_a_broken_target_file_is_reported_once_per_change(
    token_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every handshake looks the token up; a broken file must not log a
    warning at each one (any client could flood the log), only when it
    changes, and the table that worked stays in use meanwhile."""
    token_file.write_text("vnc: 127.0.0.1:5900\n")
    targets = TargetFile(token_file)

    def warnings() -> int:
        return sum("keeping the previous targets" in r.message for r in caplog.records)

    token_file.write_text("vnc 127.0.0.1\n")
    for _ in range(5):
        assert targets.lookup("vnc") == ("127.0.0.1", 5900)
    assert warnings() == 1
    token_file.write_text("still broken, and longer\n")  # a new size: a change
    for _ in range(5):
        targets.lookup("vnc")
    assert warnings() == 2
    token_file.unlink()
    for _ in range(5):
        assert targets.lookup("vnc") == ("127.0.0.1", 5900)
    assert warnings() == 3
    token_file.write_text("vnc: 127.0.0.1:5901\n")
    assert targets.lookup("vnc") == ("127.0.0.1", 5901)
    assert warnings() == 3
