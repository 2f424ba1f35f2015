"""Reverse tunnels in one process: the server handler
(:class:`hijack.upgrades.reverse.ReverseTunnels`) on real loopback sockets,
driven by the real client (:class:`hijack.client.reverse.ReverseClient`) or
by raw requests where the point is bad input. The processes and the real
daemons (Redis, OpenSSH, nginx, Chromium...) are in test_reverse_e2e.py."""

from __future__ import annotations

import base64
import collections
import contextlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
import trio
import trio.testing

from hijack import parse_proxy_header
from hijack.client.reverse import ReverseClient, ReverseSpec, Via, parse_spec
from hijack.tunnel.bind_rules import BindRule, parse_bind
from hijack.tunnel.lifecycle import Outcome, TunnelRecord
from hijack.tunnel.limits import TunnelLimits
from hijack.tunnel.reverse_wire import MAX_LINE, LineReader, ProtocolError
from hijack.tunnel.users import User, Users, hash_password, parse_users
from hijack.upgrades.reverse import ReverseRegistry, ReverseTunnels

from ..conftest import StartServer
from ..daemons import free_port
from ..helpers import (
    capture_log,
    read_head,
    read_response,
    read_until_closed,
    reset,
)

RULES = [BindRule.parse("127.0.0.1:1024-65535")]
CHEAP = "n=2,r=1,p=1"  # a cheap scrypt for tests only


async def echo(stream: trio.SocketStream) -> None:
    with contextlib.suppress(trio.BrokenResourceError):
        async for data in stream:
            await stream.send_all(data)


def cheap_user(name: str, password: str, reverse: list[str]) -> User:
    entry = {"password": hash_password(password, n=2, r=1), "reverse": reverse}
    return parse_users({"users": {name: entry}})[name]


class Events:
    """What a client reported (``on_event``), with a wake-up per report."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.changed = trio.Event()

    def __call__(self, kind: str, spec: ReverseSpec, detail: str) -> None:
        self.seen.append((kind, detail))
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, kind: str, count: int = 1) -> str:
        while sum(1 for k, _ in self.seen if k == kind) < count:
            await self.changed.wait()
        return [d for k, d in self.seen if k == kind][count - 1]


@contextlib.asynccontextmanager
async def running_client(
    server_port: int,
    target: int,
    public: int,
    *,
    scheme: str = "http",
    **kwargs: Any,
) -> AsyncIterator[Events]:
    """A ReverseClient publishing ``public`` -> ``target``, cancelled on exit."""
    events = Events()
    client = ReverseClient(
        f"{scheme}://127.0.0.1:{server_port}/",
        [ReverseSpec(("127.0.0.1", public), ("127.0.0.1", target))],
        on_event=events,
        **kwargs,
    )
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.run)
        yield events
        nursery.cancel_scope.cancel()


class Ends:
    """An ``on_tunnel`` hook that counts tunnel ends and wakes a waiter."""

    def __init__(self) -> None:
        self.records: list[TunnelRecord] = []
        self.changed = trio.Event()

    def __call__(self, record: TunnelRecord) -> None:
        self.records.append(record)
        self.changed.set()
        self.changed = trio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.records) < count:
            await self.changed.wait()


async def round_trip(port: int, data: bytes, *, half_close: bool = False) -> bytes:
    """Send ``data``, read as much back (or to the end: ``half_close``, which
    a WebSocket transport cannot carry: its first EOF closes it)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(data)
        if half_close:
            await stream.send_eof()
            return await read_until_closed(stream)
        back = b""
        while len(back) < len(data) and (chunk := await stream.receive_some()):
            back += chunk
        return back


async def refuses(port: int) -> bool:
    try:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
    except OSError:
        return True
    await stream.aclose()
    return False


def request(headers: dict[str, str], upgrade: str = "hijack-reverse/1") -> bytes:
    lines = [
        "GET / HTTP/1.1",
        "Host: x",
        "Connection: Upgrade",
        f"Upgrade: {upgrade}",
    ]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def raw(
    port: int, headers: dict[str, str], upgrade: str = "hijack-reverse/1"
) -> tuple[trio.SocketStream, int, bytes]:
    """A raw reverse request: the stream, the status and what followed."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(request(headers, upgrade))
    head, rest = await read_head(stream)
    return stream, int(head.split()[1]), rest


async def raw_publish(
    port: int, bind: str, **headers: str
) -> tuple[trio.SocketStream, LineReader, dict[str, Any]]:
    stream, status, rest = await raw(port, {"Hijack-Reverse-Publish": bind, **headers})
    assert status == 101
    reader = LineReader(_Prefixed(stream, rest))
    published = await reader.read()
    assert published is not None and published["type"] == "published"
    return stream, reader, published


class _Prefixed(trio.abc.ReceiveStream):
    def __init__(self, stream: trio.abc.ReceiveStream, prefix: bytes) -> None:
        self.stream, self.prefix = stream, prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        if self.prefix:
            data, self.prefix = self.prefix, b""
            return data
        return bytes(await self.stream.receive_some(max_bytes))

    async def aclose(self) -> None:
        await self.stream.aclose()


# -- the pieces ------------------------------------------------------------------


def test_bind_rules() -> None:
    rule = BindRule.parse("9000-9099")
    assert (
        rule == BindRule("127.0.0.1", 9000, 9099) and str(rule) == "127.0.0.1:9000-9099"
    )
    assert rule.allows("127.0.0.1", 9050)
    assert not rule.allows("0.0.0.0", 9050)  # the host must match exactly
    assert not rule.allows("127.0.0.1", 9100)
    wide = BindRule.parse("0.0.0.0:1-65535")
    assert wide.allows("0.0.0.0", 1024) and not wide.allows("0.0.0.0", 80)
    assert BindRule.parse("[::1]:80").allows("::1", 80)  # below 1024: explicit
    assert parse_bind("9000") == ("127.0.0.1", 9000)
    assert parse_bind("[::1]:9000") == ("::1", 9000)
    for bad in ["", "x:80", "localhost:80", "0", "70000", "9000-8000", "::1:80"]:
        with pytest.raises(ValueError):
            BindRule.parse(bad)


def test_users_file_reverse_key() -> None:
    user = cheap_user("alice", "pw", ["9000-9001", "0.0.0.0:8080"])
    assert user.reverse == (
        BindRule("127.0.0.1", 9000, 9001),
        BindRule("0.0.0.0", 8080, 8080),
    )
    for bad, message in [
        ("9000", "must be a list of strings"),
        (["nine"], "reverse: expected a port"),
        (["example.com:80"], "must be an IP address"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_users(
                {"users": {"a": {"password": user.password.__str__(), "reverse": bad}}}
            )


def test_client_specs_and_via() -> None:
    assert parse_spec("9000:127.0.0.1:6379") == ReverseSpec(
        ("127.0.0.1", 9000), ("127.0.0.1", 6379)
    )
    assert parse_spec("0.0.0.0:9000:[::1]:22") == ReverseSpec(
        ("0.0.0.0", 9000), ("::1", 22)
    )
    for bad in ["9000", "9000:host", "x:9000:h:1", ":1:2"]:
        with pytest.raises(ValueError):
            parse_spec(bad)
    via = Via.parse("wss://tunnel.example/reverse")
    assert (via.scheme, via.port, via.path, via.secure) == (
        "wss",
        443,
        "/reverse",
        True,
    )
    assert Via.parse("127.0.0.1:8080").scheme == "http"
    with pytest.raises(ValueError):
        Via.parse("ftp://x/")


async def test_line_reader_refuses_garbage() -> None:
    for data, message in [
        (b"not json\n", "not JSON"),
        (b"[1, 2]\n", "JSON object"),
        (b'{"type": 1}\n', "JSON object"),
        (b"x" * (MAX_LINE + 10), "longer than"),
        (b'{"type": "pi', "mid-line"),
    ]:
        sender, receiver = trio.testing.memory_stream_pair()
        await sender.send_all(data)
        await sender.send_eof()
        with pytest.raises(ProtocolError, match=message):
            await LineReader(receiver).read()


# -- publishing and relaying ----------------------------------------------------------


@pytest.mark.parametrize("scheme", ["http", "ws"])
@pytest.mark.parametrize("pool", [0, 2])
async def test_publish_and_relay(
    start_server: StartServer, nursery: trio.Nursery, scheme: str, pool: int
) -> None:
    upstream = (await nursery.start(trio.serve_tcp, echo, 0))[0].socket.getsockname()[1]
    ends = Ends()
    _, port = await start_server(ReverseTunnels(RULES, on_tunnel=ends))
    public = free_port()
    expected = 6 if scheme == "http" else 5
    with capture_log("hijack.reverse") as log:
        async with running_client(
            port, upstream, public, scheme=scheme, pool=pool
        ) as events:
            assert await events.wait_for("published") == f"127.0.0.1:{public}"
            async with trio.open_nursery() as clients:
                for n in range(4):  # concurrent: pool and claims both used
                    clients.start_soon(round_trip, public, b"hello %d" % n)
            assert await round_trip(public, b"x" * 300_000) == b"x" * 300_000
            if scheme == "http":
                assert await round_trip(public, b"eof", half_close=True) == b"eof"
            await ends.wait_for(expected)
    lines = [r.getMessage() for r in log.records]
    ended = sum(f" -> 127.0.0.1:{public} ok up=" in line for line in lines)
    assert ended == expected
    assert any(f"published 127.0.0.1:{public}" in line for line in lines)


async def test_second_client_for_a_published_port_gets_409(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    upstream = (await nursery.start(trio.serve_tcp, echo, 0))[0].socket.getsockname()[1]
    _, port = await start_server(ReverseTunnels(RULES))
    public = free_port()
    async with running_client(port, upstream, public) as first:
        await first.wait_for("published")
        async with running_client(port, upstream, public) as second:
            assert "409" in await second.wait_for("lost")
        assert await round_trip(public, b"still the first") == b"still the first"
        assert [k for k, _ in first.seen] == ["published"]


async def test_refusals_before_the_switch(start_server: StartServer) -> None:
    rules = [*RULES, BindRule.parse("0.0.0.0:1-65535")]
    _, port = await start_server(ReverseTunnels(rules, max_published=1))
    taken = free_port()
    held, _, _ = await raw_publish(port, str(taken))
    cases = [
        ({"Hijack-Reverse-Publish": "80"}, 403),  # privileged: no explicit rule
        ({"Hijack-Reverse-Publish": "0.0.0.0:80"}, 403),
        ({"Hijack-Reverse-Publish": "10.0.0.1:9000"}, 403),
        ({"Hijack-Reverse-Publish": "nine"}, 400),
        ({"Hijack-Reverse-Publish": "9000", "Hijack-Reverse-Session": "x"}, 400),
        ({}, 400),
        ({"Hijack-Reverse-Publish": str(taken)}, 409),
        ({"Hijack-Reverse-Session": "no-such-session"}, 404),
    ]
    for headers, status in cases:
        stream, got, _ = await raw(port, headers)
        await stream.aclose()
        assert got == status, headers
    stream, got, _ = await raw(
        port, {"Hijack-Reverse-Publish": "9000"}, "hijack-reverse/2"
    )
    await stream.aclose()
    assert got == 426
    # Another address of the same client: over its bound of 1 (429).
    stream, got, _ = await raw(
        port, {"Hijack-Reverse-Publish": f"0.0.0.0:{free_port()}"}
    )
    await stream.aclose()
    assert got == 429
    await held.aclose()


async def test_fallback_serves_other_requests(start_server: StartServer) -> None:
    async def hello(request: Any) -> Any:
        from hijack import Response

        return Response(200, body=b"plain")

    _, port = await start_server(ReverseTunnels(RULES, fallback=hello))
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await read_until_closed(stream)).endswith(b"plain")
    await stream.aclose()


async def test_users_rules_and_ownership(start_server: StartServer) -> None:
    alice_port, bob_port = free_port(), free_port()
    users = Users.from_mapping(
        [
            cheap_user("alice", "a", [str(alice_port)]),
            cheap_user("bob", "b", [str(bob_port)]),
        ]
    )
    _, port = await start_server(ReverseTunnels(users=users))
    alice, bob = basic("alice", "a"), basic("bob", "b")
    control, _, published = await raw_publish(
        port, str(alice_port), Authorization=alice
    )
    session = published["session"]
    for headers, status in [
        ({"Hijack-Reverse-Publish": str(alice_port)}, 401),
        ({"Hijack-Reverse-Publish": str(alice_port), "Authorization": bob}, 403),
        (
            {
                "Hijack-Reverse-Publish": str(bob_port),
                "Authorization": basic("bob", "x"),
            },
            401,
        ),
        # a data connection of bob claiming alice's tunnel
        ({"Hijack-Reverse-Session": session, "Authorization": bob}, 403),
        ({"Hijack-Reverse-Session": session}, 401),
        (
            {
                "Hijack-Reverse-Session": session,
                "Hijack-Reverse-Claim": "forged",
                "Authorization": alice,
            },
            404,
        ),
    ]:
        stream, got, _ = await raw(port, headers)
        await stream.aclose()
        assert got == status, headers
    # Her own data connection is taken into the pool.
    data, status, _ = await raw(
        port, {"Hijack-Reverse-Session": session, "Authorization": alice}
    )
    assert status == 101
    await data.aclose()
    await control.aclose()


async def test_garbage_on_the_control_connection_unpublishes(
    start_server: StartServer,
) -> None:
    _, port = await start_server(ReverseTunnels(RULES))
    for garbage in [b"hello there\n", b"{" * (MAX_LINE + 1)]:
        public = free_port()
        with capture_log("hijack.reverse") as log:
            control, reader, _ = await raw_publish(port, str(public))
            assert not await refuses(public)
            await control.send_all(garbage)
            error = await reader.read()
            while error is not None and error["type"] == "open":  # refuses() made it
                error = await reader.read()
            assert error is not None and error["type"] == "error"
            # Then the server closes (with a reset if our flood is unread).
            with contextlib.suppress(trio.BrokenResourceError):
                assert await reader.read() is None
            await control.aclose()
            await trio.testing.wait_all_tasks_blocked()
        assert await refuses(public)
        assert any("protocol error" in r.getMessage() for r in log.records)


async def test_a_client_that_writes_on_a_pool_connection_is_dropped(
    start_server: StartServer,
) -> None:
    registry = ReverseRegistry()
    _, port = await start_server(ReverseTunnels(RULES, registry=registry))
    public = free_port()
    control, _, published = await raw_publish(port, str(public))
    data, status, _ = await raw(port, {"Hijack-Reverse-Session": published["session"]})
    assert status == 101
    await data.send_all(b"too early")
    with contextlib.suppress(trio.BrokenResourceError):  # a reset: 8 bytes unread
        assert await read_until_closed(data) == b""
    await data.aclose()
    await control.aclose()


async def test_claim_timeout_closes_the_public_connection(
    start_server: StartServer, autojump_clock: trio.testing.MockClock
) -> None:
    _, port = await start_server(ReverseTunnels(RULES, claim_timeout=5))
    public = free_port()
    control, reader, published = await raw_publish(port, str(public))
    with capture_log("hijack.reverse") as log:
        stream = await trio.open_tcp_stream("127.0.0.1", public)
        opening = await reader.read()
        assert opening is not None and opening["type"] == "open" and opening["claim"]
        start = trio.current_time()
        assert await read_until_closed(stream) == b""  # nobody claimed it
        assert 5 <= trio.current_time() - start < 6
        await stream.aclose()
        # The claim is spent: a late data connection gets 404.
        late, status, _ = await raw(
            port,
            {
                "Hijack-Reverse-Session": published["session"],
                "Hijack-Reverse-Claim": opening["claim"],
            },
        )
        await late.aclose()
        assert status == 404
    assert any(
        "timeout [no data connection came]" in r.getMessage() for r in log.records
    )
    await control.aclose()


async def test_a_silent_client_is_gone_within_the_keepalive_window(
    start_server: StartServer, autojump_clock: trio.testing.MockClock
) -> None:
    _, port = await start_server(
        ReverseTunnels(RULES, ping_interval=10, ping_timeout=5)
    )
    public = free_port()
    control, reader, published = await raw_publish(port, str(public))
    assert (published["ping_interval"], published["ping_timeout"]) == (10, 5)
    start = trio.current_time()
    ping = await reader.read()
    assert ping == {"type": "ping"} and trio.current_time() - start == pytest.approx(10)
    await control.send_all(b'{"type":"pong"}\n')
    assert await reader.read() == {"type": "ping"}  # answered: still published
    # Silent from now on (a host gone without a FIN looks like this).
    assert await reader.read() is None
    assert trio.current_time() - start == pytest.approx(25)  # 2nd ping + 5
    assert await refuses(public)
    await control.aclose()


async def test_server_shutdown_closes_the_public_port(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    upstream = (await nursery.start(trio.serve_tcp, echo, 0))[0].socket.getsockname()[1]
    server, port = await start_server(ReverseTunnels(RULES))
    public = free_port()
    async with running_client(port, upstream, public) as events:
        await events.wait_for("published")
        await server.shutdown(grace=0)
        assert "shutting down" in await events.wait_for("lost")
        assert await refuses(public)


async def test_limits_and_on_tunnel(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    upstream = (await nursery.start(trio.serve_tcp, echo, 0))[0].socket.getsockname()[1]
    ends = Ends()
    handler = ReverseTunnels(
        RULES,
        limits=TunnelLimits(per_client=1, tunnel_bandwidth=10_000_000),
        on_tunnel=ends,
    )
    _, port = await start_server(handler)
    public = free_port()
    async with running_client(port, upstream, public) as events:
        await events.wait_for("published")
        first = await trio.open_tcp_stream("127.0.0.1", public)
        await first.send_all(b"held")
        assert await first.receive_some() == b"held"
        # A second connection of the same address is over the bound.
        over = await trio.open_tcp_stream("127.0.0.1", public)
        assert await read_until_closed(over) == b""
        await over.aclose()
        await first.aclose()
        await ends.wait_for(2)
    outcomes = sorted(record.outcome for record in ends.records)
    assert outcomes == [Outcome.LIMITED, Outcome.OK]
    assert all(record.port == public for record in ends.records)
    assert all(record.kind == "reverse" for record in ends.records)


@pytest.mark.parametrize("version", [1, 2])
async def test_send_proxy_protocol_names_the_public_client(
    start_server: StartServer, nursery: trio.Nursery, version: int
) -> None:
    headers: list[bytes] = []

    async def record(stream: trio.SocketStream) -> None:
        data = b""
        while (parsed := parse_proxy_header(data)) is None:
            data += await stream.receive_some()
        headers.append(data[: parsed[1]])
        await stream.send_all(b"ok")

    upstream = (await nursery.start(trio.serve_tcp, record, 0))[0].socket.getsockname()[
        1
    ]
    _, port = await start_server(ReverseTunnels(RULES))
    public = free_port()
    async with running_client(
        port, upstream, public, send_proxy_protocol=version
    ) as events:
        await events.wait_for("published")
        client = await trio.open_tcp_stream("127.0.0.1", public)
        source = client.socket.getsockname()
        assert await client.receive_some() == b"ok"
        await client.aclose()
    parsed = parse_proxy_header(headers[0])
    assert parsed is not None
    header = parsed[0]
    assert (header.source, header.destination) == (
        (source[0], source[1]),
        ("127.0.0.1", public),
    )


async def test_many_publish_attempts_are_refused_and_bounded(
    start_server: StartServer,
) -> None:
    """10,000 attempts on 8 keep-alive connections (a refusal leaves the
    connection usable): outside the rules (403) or over the client's bound
    of ports (429); each answered, nothing published beyond the bound, and
    (the leak check) no fd left over."""
    registry = ReverseRegistry()
    handler = ReverseTunnels(RULES, registry=registry, max_published=2)
    _, port = await start_server(handler)
    held = [await raw_publish(port, str(free_port())) for _ in range(2)]
    answers: collections.Counter[int] = collections.Counter()
    forbidden = request({"Hijack-Reverse-Publish": "80"})
    over_bound = request({"Hijack-Reverse-Publish": str(free_port())})

    async def attempts(count: int) -> None:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            for n in range(count):
                await stream.send_all(forbidden if n % 2 else over_bound)
                response, rest = await read_response(stream)
                assert not rest
                answers[response.status] += 1

    with trio.fail_after(40):  # real seconds: 3 on the idle 2-core box
        async with trio.open_nursery() as workers:
            for _ in range(8):
                workers.start_soon(attempts, 1250)
    assert answers == {403: 5000, 429: 5000}
    assert len(registry.published) == 2
    for control, _, _ in held:
        await control.aclose()


def test_registry_text() -> None:
    registry = ReverseRegistry()
    registry.reserve(("127.0.0.1", 9001), "me", None)
    registry.reserve(("::1", 9000), "me", None)
    assert registry.published == ["127.0.0.1:9001", "[::1]:9000"]
    assert json.dumps(registry.published)


async def test_public_clients_that_reset_do_not_hurt_the_tunnel(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    upstream = (await nursery.start(trio.serve_tcp, echo, 0))[0].socket.getsockname()[1]
    ends = Ends()
    _, port = await start_server(ReverseTunnels(RULES, on_tunnel=ends))
    public = free_port()
    async with running_client(port, upstream, public, pool=2) as events:
        await events.wait_for("published")
        for _ in range(50):
            stream = await trio.open_tcp_stream("127.0.0.1", public)
            reset(stream)
        assert await round_trip(public, b"still here") == b"still here"
        await ends.wait_for(51)
    assert [k for k, _ in events.seen] == ["published"]


async def test_reconnects_back_off_exponentially_with_jitter(
    autojump_clock: trio.testing.MockClock, no_leaks: None
) -> None:
    """Nothing listens: each attempt fails at once (loopback refuses
    synchronously), and the waits between them double, each drawn in
    [d/2, d], up to ``max_delay``."""
    losses: list[float] = []
    client = ReverseClient(
        f"http://127.0.0.1:{free_port()}/",
        [ReverseSpec(("127.0.0.1", 9000), ("127.0.0.1", 9))],
        max_delay=4.0,
        on_event=lambda kind, spec, detail: losses.append(trio.current_time()),
    )
    with trio.move_on_after(60):
        await client.run()
    waits = [later - earlier for earlier, later in itertools.pairwise(losses)]
    assert len(waits) >= 15
    for n, wait in enumerate(waits):
        ceiling = min(0.25 * 2**n, 4.0)
        assert ceiling / 2 <= wait <= ceiling, (n, wait)
    assert len({round(w, 6) for w in waits[5:]}) > 1  # jittered, not fixed


async def test_one_client_publishes_several_ports(
    start_server: StartServer, nursery: trio.Nursery
) -> None:
    upstream = (await nursery.start(trio.serve_tcp, echo, 0))[0].socket.getsockname()[1]
    _, port = await start_server(ReverseTunnels(RULES))
    publics = [free_port(), free_port()]
    events = Events()
    client = ReverseClient(
        f"http://127.0.0.1:{port}/",
        [ReverseSpec(("127.0.0.1", p), ("127.0.0.1", upstream)) for p in publics],
        on_event=events,
    )
    async with trio.open_nursery() as running:
        running.start_soon(client.run)
        await events.wait_for("published", 2)
        for public in publics:
            assert await round_trip(public, b"to %d" % public) == b"to %d" % public
        running.cancel_scope.cancel()
    assert sorted(d for k, d in events.seen if k == "published") == sorted(
        f"127.0.0.1:{p}" for p in publics
    )
