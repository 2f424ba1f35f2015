"""The reverse-tunnel client against servers that misbehave or refuse: a
scripted server on a loopback socket speaks ``hijack-reverse/1`` exactly as
far as each test needs (a wrong first message, an error, silence, refused
data connections), and the real server where the point is its refusals
(credentials, the WebSocket transport, TLS)."""

from __future__ import annotations

import contextlib
import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from hijack import Request, Response
from hijack.client.reverse import ReverseClient, ReverseSpec, Via
from hijack.tunnel.parent_proxy import ParentProxy
from hijack.tunnel.users import Users
from hijack.upgrades.reverse import ReverseTunnels
from hijack.upgrades.websocket import accept_websocket

from ..conftest import StartServer
from ..daemons import free_port
from ..helpers import capture_log, read_head, read_until_closed, reset, tls_contexts
from ..upgrades.test_reverse import RULES, Events, cheap_user

SWITCH = (
    b"HTTP/1.1 101 Switching Protocols\r\n"
    b"Connection: Upgrade\r\nUpgrade: hijack-reverse/1\r\n\r\n"
)
SPEC = ReverseSpec(("127.0.0.1", 9000), ("127.0.0.1", 9))

Script = Callable[[dict[str, str], trio.SocketStream], Awaitable[None]]


def line(message: dict[str, Any]) -> bytes:
    return json.dumps(message).encode() + b"\n"


def published(**extra: Any) -> bytes:
    return line({"type": "published", "bind": "127.0.0.1:9000", **extra})


def refused(status: int) -> bytes:
    return f"HTTP/1.1 {status} No\r\nContent-Length: 0\r\n\r\n".encode()


async def scripted(nursery: trio.Nursery, script: Script) -> int:
    """A server that reads each request's head and runs ``script`` with
    its headers (lower-case names) and the connection."""

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            head, _ = await read_head(stream)
            headers = {}
            for text in head.decode().split("\r\n")[1:]:
                name, _, value = text.partition(":")
                headers[name.strip().lower()] = value.strip()
            with contextlib.suppress(trio.BrokenResourceError):
                await script(headers, stream)

    serve = functools.partial(trio.serve_tcp, handle, 0, host="127.0.0.1")
    listeners = await nursery.start(serve)
    return int(listeners[0].socket.getsockname()[1])


@contextlib.asynccontextmanager
async def client_running(via: str, **kwargs: Any) -> AsyncIterator[Events]:
    events = Events()
    client = ReverseClient(via, [kwargs.pop("spec", SPEC)], on_event=events, **kwargs)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        yield events
        nursery.cancel_scope.cancel()


def test_via_and_client_arguments_are_checked() -> None:
    for text, error in [
        ("ftp://host", "via must be"),
        ("http://:80/", "no host"),
        ("http://host:99999/", "bad port"),
    ]:
        with pytest.raises(ValueError, match=error):
            Via.parse(text)
    via = Via.parse("host:8080/reverse?key=1")
    assert str(via) == "http://host:8080/reverse?key=1"
    assert Via.parse("wss://host").port == 443 and Via.parse("wss://host").secure
    proxy = ParentProxy.parse("http://127.0.0.1:3128")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"specs": []}, "nothing to publish"),
        ({"via": "ws://host", "upstream_proxy": proxy}, "cannot use an upstream"),
        ({"pool": -1}, "pool must be"),
        ({"send_proxy_protocol": 3}, "send_proxy_protocol"),
    ]
    for kwargs, error in cases:
        arguments: dict[str, Any] = {"via": "host:80", "specs": [SPEC], **kwargs}
        with pytest.raises(ValueError, match=error):
            ReverseClient(**arguments)


@pytest.mark.parametrize(
    ("answer", "lost"),
    [
        (refused(403), "tunnel refused: 403"),
        (SWITCH + line({"type": "pong"}), "expected 'published' first"),
        (SWITCH + published(), "'published' without a session"),
        (SWITCH + b"not json\n", "a line that is not JSON"),
    ],
)
async def test_a_refused_or_wrong_publish_is_reported_lost(
    nursery: trio.Nursery, no_leaks: None, answer: bytes, lost: str
) -> None:
    async def script(headers: dict[str, str], stream: trio.SocketStream) -> None:
        await stream.send_all(answer)

    port = await scripted(nursery, script)
    async with client_running(f"127.0.0.1:{port}", pool=0) as events:
        assert lost in await events.wait_for("lost")


@pytest.mark.parametrize(
    ("then", "lost"),
    [
        (line({"type": "error", "reason": "bye"}), "the server said: bye"),
        (b"garbage\n", "protocol error"),
        (b"", "the server closed the control connection"),
    ],
)
async def test_the_end_of_a_session_says_why(
    nursery: trio.Nursery, no_leaks: None, then: bytes, lost: str
) -> None:
    async def script(headers: dict[str, str], stream: trio.SocketStream) -> None:
        await stream.send_all(SWITCH + published(session="s") + then)
        if then:
            await read_until_closed(stream)

    port = await scripted(nursery, script)
    async with client_running(f"127.0.0.1:{port}", pool=0) as events:
        await events.wait_for("published")
        assert lost in await events.wait_for("lost")


async def test_a_reset_control_connection_is_lost(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    async def script(headers: dict[str, str], stream: trio.SocketStream) -> None:
        await stream.send_all(SWITCH + published(session="s"))
        reset(stream)

    port = await scripted(nursery, script)
    async with client_running(f"127.0.0.1:{port}", pool=0) as events:
        assert "connection lost" in await events.wait_for("lost")


async def test_pings_are_answered_and_silence_ends_the_session(
    nursery: trio.Nursery, no_leaks: None, autojump_clock: trio.testing.MockClock
) -> None:
    pongs: list[Any] = []

    async def script(headers: dict[str, str], stream: trio.SocketStream) -> None:
        # Nonsense keepalive figures: the client keeps its default (30 s).
        hello = published(session="s", ping_interval=True, ping_timeout=-1)
        await stream.send_all(SWITCH + hello + line({"type": "ping"}))
        pongs.append(json.loads(await stream.receive_some()))
        await read_until_closed(stream)

    port = await scripted(nursery, script)
    async with client_running(f"127.0.0.1:{port}", pool=0) as events:
        await events.wait_for("published")
        start = trio.current_time()
        assert await events.wait_for("lost") == "the server was silent for 30s"
        assert trio.current_time() - start == pytest.approx(30)
    assert pongs == [{"type": "pong"}]


async def test_pool_connections_are_replaced_and_capped_by_max_pool(
    nursery: trio.Nursery, no_leaks: None, autojump_clock: trio.testing.MockClock
) -> None:
    """The server sends garbage on the first pool connection and closes
    it, and refuses the second: the client opens another each time (with a pause), never more
    than the server's max_pool at once."""
    data_requests = 0
    open_now = most_open = 0
    third = trio.Event()

    async def script(headers: dict[str, str], stream: trio.SocketStream) -> None:
        nonlocal data_requests, open_now, most_open
        if "hijack-reverse-publish" in headers:
            hello = published(session="s", max_pool=1, ping_interval=1e6)
            await stream.send_all(SWITCH + hello)
            await read_until_closed(stream)
            return
        assert headers["hijack-reverse-session"] == "s"
        data_requests += 1
        open_now += 1
        most_open = max(most_open, open_now)
        try:
            if data_requests == 1:  # a line that is not JSON, then closed
                await stream.send_all(SWITCH + b"not an open\n")
            elif data_requests == 2:
                await stream.send_all(refused(404))
            else:
                await stream.send_all(SWITCH)
                third.set()
                await read_until_closed(stream)
        finally:
            open_now -= 1

    port = await scripted(nursery, script)
    async with client_running(f"127.0.0.1:{port}", pool=3) as events:
        await events.wait_for("published")
        await third.wait()
        await trio.testing.wait_all_tasks_blocked()
        assert data_requests == 3
        assert most_open == 1


async def test_claims_that_fail_leave_the_tunnel_published(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    """A claim the server refuses is logged; a claimed connection whose
    target is unreachable is closed; the control connection stays up."""
    data_closed = trio.Event()

    async def script(headers: dict[str, str], stream: trio.SocketStream) -> None:
        claim = headers.get("hijack-reverse-claim")
        if claim is None:
            opens = line({"type": "open", "claim": "gone"}) + line(
                {"type": "open", "claim": "ok"}
            )
            await stream.send_all(SWITCH + published(session="s") + opens)
            await read_until_closed(stream)
        elif claim == "gone":
            await stream.send_all(refused(404))
        else:
            await stream.send_all(SWITCH + line({"type": "open", "peer": "-"}))
            assert await read_until_closed(stream) == b""
            data_closed.set()

    port = await scripted(nursery, script)
    unreachable = ReverseSpec(("127.0.0.1", 9000), ("127.0.0.1", free_port()))
    with capture_log("hijack.reverse") as log:
        async with client_running(
            f"127.0.0.1:{port}", pool=0, spec=unreachable
        ) as events:
            await data_closed.wait()
            while not any("cannot reach" in r.getMessage() for r in log.records):
                await log.logged.wait()
                log.logged = trio.Event()
            assert [kind for kind, _ in events.seen] == ["published"]
    messages = [r.getMessage() for r in log.records]
    assert any("a claimed data connection failed" in m and "404" in m for m in messages)
    assert any("public client -: cannot reach the target" in m for m in messages)


async def test_a_public_client_without_an_address_is_announced_unknown(
    nursery: trio.Nursery, no_leaks: None
) -> None:
    """With send_proxy_protocol=1 and no usable peer address in the
    server's ``open``, the target gets ``PROXY UNKNOWN``."""
    received = trio.Event()
    first_bytes = b""

    async def target(stream: trio.SocketStream) -> None:
        nonlocal first_bytes
        first_bytes = await read_until_closed(stream)
        received.set()

    target_port = (await nursery.start(trio.serve_tcp, target, 0))[0].socket
    spec = ReverseSpec(("127.0.0.1", 9000), ("127.0.0.1", target_port.getsockname()[1]))

    async def script(headers: dict[str, str], stream: trio.SocketStream) -> None:
        if "hijack-reverse-claim" not in headers:
            opens = line({"type": "open", "claim": "c"})
            await stream.send_all(SWITCH + published(session="s") + opens)
            await read_until_closed(stream)
        else:
            await stream.send_all(SWITCH + line({"type": "open", "peer": "nowhere"}))
            await stream.send_eof()
            await read_until_closed(stream)

    port = await scripted(nursery, script)
    async with client_running(
        f"127.0.0.1:{port}", pool=0, spec=spec, send_proxy_protocol=1
    ):
        await received.wait()
    assert first_bytes == b"PROXY UNKNOWN\r\n"


async def test_credentials_are_sent_and_wrong_ones_refused(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    public = free_port()
    users = Users.from_mapping([cheap_user("alice", "a", [str(public)])])
    _, port = await start_server(ReverseTunnels(users=users))
    spec = ReverseSpec(("127.0.0.1", public), ("127.0.0.1", 9))
    async with client_running(
        f"http://127.0.0.1:{port}/", spec=spec, pool=0, auth=("alice", "a")
    ) as events:
        assert await events.wait_for("published") == f"127.0.0.1:{public}"
    async with client_running(
        f"http://127.0.0.1:{port}/", spec=spec, pool=0, auth=("alice", "b")
    ) as events:
        assert "tunnel refused: 401" in await events.wait_for("lost")
    async with client_running(f"ws://127.0.0.1:{port}/", spec=spec, pool=0) as events:
        assert "tunnel refused: 401" in await events.wait_for("lost")


async def test_a_websocket_server_that_does_not_select_the_subprotocol(
    start_server: StartServer,
) -> None:
    async def plain_websocket(request: Request) -> Response | None:
        websocket = await accept_websocket(request)  # selects no subprotocol
        async with websocket:
            with contextlib.suppress(Exception):
                await websocket.receive()
        return None

    _, port = await start_server(plain_websocket)
    async with client_running(f"ws://127.0.0.1:{port}/", pool=0) as events:
        lost = await events.wait_for("lost")
    assert "did not select hijack-reverse.v1" in lost


async def test_https_via_checks_the_certificate_with_the_system_trust(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    server_context, client_context = tls_contexts("127.0.0.1")
    server, _ = await start_server(ReverseTunnels(RULES))
    listeners = await nursery.start(
        functools.partial(server.serve_tcp, 0, ssl_context=server_context)
    )
    port = listeners[0].socket.getsockname()[1]
    public = free_port()
    spec = ReverseSpec(("127.0.0.1", public), ("127.0.0.1", 9))
    # The test CA is in no system store: the handshake fails, never published,
    # and the reason names the certificate (the SSL error is the cause of
    # trio's BrokenResourceError).
    async with client_running(f"https://127.0.0.1:{port}/", spec=spec, pool=0) as ev:
        why = await ev.wait_for("lost")
        assert why.startswith("BrokenResourceError: SSLCertVerificationError: "), why
        assert "certificate verify failed" in why
        assert [kind for kind, _ in ev.seen] == ["lost"]
    async with client_running(
        f"https://127.0.0.1:{port}/", spec=spec, pool=0, ssl_context=client_context
    ) as events:
        assert await events.wait_for("published") == f"127.0.0.1:{public}"
