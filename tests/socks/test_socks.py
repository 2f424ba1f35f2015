"""The SOCKS5 server in a real Server on loopback: curl as the client
(--socks5 and --socks5-hostname, with and without --proxy-user), pproxy
as a SOCKS5 parent, every reply code the module documents, and bad input
(each answered or closed, no traceback, a good client served after it; the
fixtures check that no fd or task is left)."""

from __future__ import annotations

import functools
import logging
import subprocess
from collections.abc import Awaitable, Callable, Iterator

import pytest
import trio
import trio.testing

from hijack import ProxyProtocol, Request, Response, Server, encode_proxy_header
from hijack.socks import SocksServer, codec
from hijack.socks.codec import Command, Reply
from hijack.tunnel.limits import TunnelLimits
from hijack.tunnel.parent_proxy import ParentProxy, Routes
from hijack.tunnel.policy import ConnectPolicy
from hijack.tunnel.users import PasswordHash, User, Users
from hijack.upgrades.connect import ConnectProxy

from ..conftest import StartServer
from ..helpers import LogCapture, capture_log, exchange, read_exactly, read_until_closed
from ..socks_client import handshake, read_reply, socks_request
from ..tunnel.test_parent_proxy import Pproxy, pproxy  # noqa: F401 - a fixture
from ..tunnel.test_users import cheap_hash
from ..upgrades.test_connect import CURL, hello

StartSocks = Callable[..., Awaitable[tuple[Server, int]]]


def loopback(port: int) -> ConnectPolicy:
    return ConnectPolicy(allowed_ports={port}, allow=["127.0.0.1", "::1", "localhost"])


async def not_http(request: Request) -> Response:
    return Response(400, body=b"SOCKS5 only\n")


@pytest.fixture
def start_socks(start_server: StartServer) -> StartSocks:
    """``server, port = await start_socks(SocksServer(...))``: a Server on
    127.0.0.1 whose every connection goes to the SOCKS server (with
    ``http=``: SOCKS5 and that HTTP handler on one port)."""

    async def start(
        socks: SocksServer,
        http: Callable[..., Awaitable[Response | None]] | None = None,
    ) -> tuple[Server, int]:
        if http is None:
            return await start_server(not_http, sniff=socks.sniff_all)
        return await start_server(http, sniff=socks.sniff)

    return start


@pytest.fixture
def socks_log() -> Iterator[LogCapture]:
    with capture_log("hijack.socks") as log:
        yield log


def alice_users() -> Users:
    return Users.from_mapping([User("alice", PasswordHash.parse(cheap_hash("a-pw")))])


async def curl(
    socks_port: int, url: str, *options: str
) -> subprocess.CompletedProcess[bytes]:
    return await trio.run_process(
        [CURL, "-sS", "--max-time", "10", *options, url],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={},
    )


# -- real clients ------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--socks5", "--socks5-hostname"])
@pytest.mark.parametrize("with_users", [False, True])
async def test_curl_through_socks(
    start_server: StartServer,
    start_socks: StartSocks,
    socks_log: LogCapture,
    flag: str,
    with_users: bool,
) -> None:
    _, origin = await start_server(hello)
    users = alice_users() if with_users else None
    _, port = await start_socks(SocksServer(loopback(origin), users=users))
    options = [flag, f"127.0.0.1:{port}"]
    if with_users:
        options += ["--proxy-user", "alice:a-pw"]
    result = await curl(port, f"http://localhost:{origin}/", *options)
    assert result.stdout == b"hello through the tunnel\n", result.stderr
    with trio.fail_after(10):
        await socks_log.logged.wait()
    line = socks_log.records[0].getMessage()
    assert f"-> {'localhost' if 'hostname' in flag else '127.0.0.1'}:{origin}" in line
    assert " ok " in line
    assert ("user=alice" in line) == with_users


async def test_curl_with_a_wrong_password_is_refused(
    start_server: StartServer, start_socks: StartSocks, socks_log: LogCapture
) -> None:
    _, origin = await start_server(hello)
    _, port = await start_socks(SocksServer(loopback(origin), users=alice_users()))
    for options in (
        ["--proxy-user", "alice:wrong"],
        ["--proxy-user", "mallory:a-pw"],
        [],  # no credentials: no acceptable method
    ):
        result = await curl(
            port,
            f"http://127.0.0.1:{origin}/",
            "--socks5",
            f"127.0.0.1:{port}",
            *options,
        )
        assert result.returncode != 0 and not result.stdout
    outcomes = [r.getMessage() for r in socks_log.records]
    assert all(" unauthorized " in line for line in outcomes), outcomes


async def test_fixed_auth_pair(
    start_server: StartServer, start_socks: StartSocks
) -> None:
    _, origin = await start_server(hello)
    _, port = await start_socks(SocksServer(loopback(origin), auth=("bob", "b-pw")))
    result = await curl(
        port,
        f"http://127.0.0.1:{origin}/",
        "--socks5",
        f"127.0.0.1:{port}",
        "--proxy-user",
        "bob:b-pw",
    )
    assert result.stdout == b"hello through the tunnel\n", result.stderr
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(codec.encode_greeting([2]))
        assert await read_exactly(stream, 2) == b"\x05\x02"
        await stream.send_all(codec.encode_credentials(b"bob", b"nope"))
        assert await read_until_closed(stream) == b"\x01\x01"


async def test_socks_and_http_on_one_port(
    start_server: StartServer, start_socks: StartSocks
) -> None:
    """The sniff hook: a first byte 0x05 goes to SOCKS5, anything else to
    the HTTP handler (a CONNECT proxy here), on the same listener."""
    _, origin = await start_server(hello)
    policy = loopback(origin)
    _, port = await start_socks(SocksServer(policy), http=ConnectProxy(policy))
    through_socks = await curl(
        port, f"http://127.0.0.1:{origin}/", "--socks5", f"127.0.0.1:{port}"
    )
    through_connect = await curl(
        port, f"http://127.0.0.1:{origin}/", "--proxytunnel", "-x", f"127.0.0.1:{port}"
    )
    assert (
        through_socks.stdout == through_connect.stdout == b"hello through the tunnel\n"
    )


async def test_ipv6_destination(start_socks: StartSocks) -> None:
    """An IPv6 literal (ATYP 04) dialled as such."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, echo_once, 0, host="::1")
        )
        origin = listeners[0].socket.getsockname()[1]
        _, port = await start_socks(SocksServer(loopback(origin)))
        stream, reply = await socks_request(port, Command.CONNECT, "::1", origin)
        async with stream:
            assert reply.reply == Reply.SUCCEEDED
            await stream.send_all(b"over six")
            assert await read_exactly(stream, 8) == b"over six"
        nursery.cancel_scope.cancel()


async def echo_once(stream: trio.SocketStream) -> None:
    async with stream:
        data = await stream.receive_some()
        await stream.send_all(data)


async def test_optimistic_data_reaches_the_destination(
    start_socks: StartSocks,
) -> None:
    """Bytes sent right behind the request (before the reply) are not lost."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, echo_once, 0, host="127.0.0.1")
        )
        origin = listeners[0].socket.getsockname()[1]
        _, port = await start_socks(SocksServer(loopback(origin)))
        async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
            await stream.send_all(
                codec.encode_greeting([0])
                + codec.encode_request(Command.CONNECT, "127.0.0.1", origin)
                + b"early bytes"
            )
            assert await read_exactly(stream, 2) == b"\x05\x00"
            assert (await read_reply(stream)).reply == Reply.SUCCEEDED
            assert await read_exactly(stream, 11) == b"early bytes"
        nursery.cancel_scope.cancel()


async def test_pproxy_as_a_socks5_parent(
    start_server: StartServer,
    start_socks: StartSocks,
    pproxy: Pproxy,  # noqa: F811 - the fixture
    socks_log: LogCapture,
) -> None:
    """hijack socks --upstream-proxy socks5://pproxy: the destination is
    judged here, the checked address asked of the parent."""
    _, origin = await start_server(hello)
    parent_port, parent_log = await pproxy("socks5")
    routes = Routes(ParentProxy.parse(f"socks5://127.0.0.1:{parent_port}"))
    _, port = await start_socks(SocksServer(loopback(origin), routes=routes))
    result = await curl(
        port, f"http://localhost:{origin}/", "--socks5-hostname", f"127.0.0.1:{port}"
    )
    assert result.stdout == b"hello through the tunnel\n", result.stderr
    with trio.fail_after(10):
        await socks_log.logged.wait()
    line = socks_log.records[0].getMessage()
    assert f"via socks5://127.0.0.1:{parent_port}" in line
    # The parent was asked for the checked address, never the name.
    with trio.fail_after(10):
        while f"127.0.0.1:{origin}" not in parent_log.read_text():  # noqa: ASYNC110
            await trio.sleep(0.05)
    assert "localhost" not in parent_log.read_text()


# -- reply codes -------------------------------------------------------------------


async def refused_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


async def test_reply_codes(
    start_server: StartServer, start_socks: StartSocks, socks_log: LogCapture
) -> None:
    _, origin = await start_server(hello)
    closed = await refused_port()

    async def no_such_name(*args: object) -> list[object]:
        raise OSError("Name or service not known")

    policy = ConnectPolicy(allowed_ports={origin, closed}, allow=["127.0.0.1"])
    _, port = await start_socks(SocksServer(policy, resolver=no_such_name))  # type: ignore[arg-type]
    cases = [
        (Command.CONNECT, "127.0.0.1", closed, Reply.CONNECTION_REFUSED),
        (Command.CONNECT, "127.0.0.1", 22, Reply.NOT_ALLOWED),  # port
        (Command.CONNECT, "10.1.2.3", origin, Reply.NOT_ALLOWED),  # private
        (Command.CONNECT, "nowhere.invalid", origin, Reply.HOST_UNREACHABLE),
        (Command.CONNECT, "a" * 255, origin, Reply.HOST_UNREACHABLE),
        (Command.BIND, "127.0.0.1", origin, Reply.COMMAND_NOT_SUPPORTED),
    ]
    for command, host, target, expected in cases:
        stream, reply = await socks_request(port, command, host, target)
        async with stream:
            assert reply.reply == expected, (host, target)
            assert await read_until_closed(stream) == b""


async def test_connect_timeout_answers_06(start_socks: StartSocks) -> None:
    async def stalls(address: object, port: int) -> trio.abc.Stream:
        await trio.sleep_forever()
        raise AssertionError  # pragma: no cover

    socks = SocksServer(loopback(443), dial=stalls, connect_timeout=0.05)
    _, port = await start_socks(socks)
    stream, reply = await socks_request(port, Command.CONNECT, "127.0.0.1", 443)
    async with stream:
        assert reply.reply == Reply.TTL_EXPIRED


async def test_limits_answer_02_and_count_back(
    start_server: StartServer, start_socks: StartSocks
) -> None:
    _, origin = await start_server(hello)
    limits = TunnelLimits(per_client=1)
    socks = SocksServer(loopback(origin), limits=limits)
    _, port = await start_socks(socks)
    first, reply = await socks_request(port, Command.CONNECT, "127.0.0.1", origin)
    assert reply.reply == Reply.SUCCEEDED
    second, reply = await socks_request(port, Command.CONNECT, "127.0.0.1", origin)
    assert reply.reply == Reply.NOT_ALLOWED
    await second.aclose()
    await first.aclose()
    with trio.fail_after(10):
        while socks.open_tunnels or limits.by_client:  # noqa: ASYNC110 - on their own
            await trio.sleep(0.01)
    third, reply = await socks_request(port, Command.CONNECT, "127.0.0.1", origin)
    assert reply.reply == Reply.SUCCEEDED
    await third.aclose()


async def test_user_rules_apply(
    start_server: StartServer, start_socks: StartSocks
) -> None:
    """A user's own allow entry lets them reach what the global policy
    refuses; another user does not get it."""
    _, origin = await start_server(hello)
    users = Users.from_mapping(
        [
            User("alice", PasswordHash.parse(cheap_hash("a-pw")), allow=("127.0.0.1",)),
            User("bob", PasswordHash.parse(cheap_hash("b-pw"))),
        ]
    )
    socks = SocksServer(ConnectPolicy(allowed_ports={origin}), users=users)
    _, port = await start_socks(socks)
    for auth, expected in [
        ((b"alice", b"a-pw"), Reply.SUCCEEDED),
        ((b"bob", b"b-pw"), Reply.NOT_ALLOWED),
    ]:
        stream, reply = await socks_request(
            port, Command.CONNECT, "127.0.0.1", origin, auth=auth
        )
        await stream.aclose()
        assert reply.reply == expected


# -- bad input -----------------------------------------------------------------------


BAD_INPUT = {
    "garbage greeting": (b"\x16\x03\x01\x02\x00", b""),
    "wrong version": (b"\x04\x01\x00\x50\x7f\x00\x00\x01\x00", b""),
    "nmethods 0": (b"\x05\x00", b""),
    "only gssapi": (b"\x05\x01\x01", b"\x05\xff"),
    "truncated greeting": (b"\x05\x03\x00", b""),
    "truncated request": (b"\x05\x01\x00\x05\x01\x00\x03\x0bexam", b"\x05\x00"),
    "greeting then eof": (b"\x05\x01\x00", b"\x05\x00"),
    "domain length 0": (
        b"\x05\x01\x00\x05\x01\x00\x03\x00\x00\x50",
        b"\x05\x00" + codec.encode_reply(Reply.HOST_UNREACHABLE),
    ),
    "domain length 255": (
        b"\x05\x01\x00\x05\x01\x00\x03\xff" + b"a" * 255 + b"\x01\xbb",
        b"\x05\x00" + codec.encode_reply(Reply.HOST_UNREACHABLE),
    ),
    "unknown atyp": (
        b"\x05\x01\x00\x05\x01\x00\x07\x7f\x00\x00\x01\x00\x50",
        b"\x05\x00" + codec.encode_reply(Reply.ADDRESS_TYPE_NOT_SUPPORTED),
    ),
    "unknown command": (
        b"\x05\x01\x00\x05\x09\x00\x01\x7f\x00\x00\x01\x00\x50",
        b"\x05\x00" + codec.encode_reply(Reply.COMMAND_NOT_SUPPORTED),
    ),
    "request version 4": (
        b"\x05\x01\x00\x04\x01\x00\x01\x7f\x00\x00\x01\x00\x50",
        b"\x05\x00",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
async def test_bad_input_is_answered_or_closed(
    start_server: StartServer,
    start_socks: StartSocks,
    caplog: pytest.LogCaptureFixture,
    case: str,
) -> None:
    _, origin = await start_server(hello)
    any_port = ConnectPolicy(allowed_ports=None, allow=["127.0.0.1"])
    _, port = await start_socks(SocksServer(any_port))
    sent, expected = BAD_INPUT[case]
    assert await exchange(port, sent, half_close=True) == expected
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    # A good client is still served.
    stream, reply = await socks_request(port, Command.CONNECT, "127.0.0.1", origin)
    async with stream:
        assert reply.reply == Reply.SUCCEEDED


async def test_slowloris_on_the_greeting_is_closed(
    start_server: StartServer, start_socks: StartSocks, socks_log: LogCapture
) -> None:
    """A client that sends its greeting a byte at a time, or nothing, is
    closed at handshake_timeout without a reply; the others go on."""
    _, origin = await start_server(hello)
    _, port = await start_socks(SocksServer(loopback(origin), handshake_timeout=0.2))
    async with await trio.open_tcp_stream("127.0.0.1", port) as slow:
        await slow.send_all(b"\x05")
        stream, reply = await socks_request(port, Command.CONNECT, "127.0.0.1", origin)
        await stream.aclose()
        assert reply.reply == Reply.SUCCEEDED
        with trio.fail_after(10):
            assert await read_until_closed(slow) == b""
    lines = [r.getMessage() for r in socks_log.records]
    assert any(" bad-request [handshake too slow]" in line for line in lines), lines


async def test_http_stays_http_with_a_sniffer(
    start_server: StartServer, start_socks: StartSocks
) -> None:
    """With sniff, HTTP is served as before: keep-alive, pipelining."""
    _, port = await start_socks(SocksServer(), http=hello)
    request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await exchange(
        port, request * 2 + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert answer.count(b"HTTP/1.1 200") == 3


async def test_handshake_users_constant_time_path(
    start_server: StartServer, start_socks: StartSocks
) -> None:
    """A user name with ':' (no users-file name has one) is refused, never
    split into another user's name and password."""
    _, origin = await start_server(hello)
    _, port = await start_socks(SocksServer(loopback(origin), users=alice_users()))
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(codec.encode_greeting([2]))
        assert await read_exactly(stream, 2) == b"\x05\x02"
        await stream.send_all(codec.encode_credentials(b"alice:a-pw", b"x"))
        assert await read_until_closed(stream) == b"\x01\x01"
    # The good pair still works.
    stream, reply = await socks_request(
        port, Command.CONNECT, "127.0.0.1", origin, auth=(b"alice", b"a-pw")
    )
    await stream.aclose()
    assert reply.reply == Reply.SUCCEEDED


async def test_handshake_helper_is_what_clients_send() -> None:
    """The test client speaks the codec's bytes (guards the helpers)."""
    left, right = trio.testing.memory_stream_pair()

    async def server_side() -> None:
        assert await read_exactly(right, 3) == b"\x05\x01\x00"
        await right.send_all(b"\x05\x00")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(server_side)
        await handshake(left)


async def test_proxy_protocol_names_the_client(
    start_server: StartServer, socks_log: LogCapture
) -> None:
    """Behind a balancer: the PROXY header's source is the client the log
    and the per-client limits see."""
    _, origin = await start_server(hello)
    limits = TunnelLimits(per_client=1)
    socks = SocksServer(loopback(origin), limits=limits)
    _, port = await start_server(
        not_http, sniff=socks.sniff_all, proxy_protocol=ProxyProtocol(["127.0.0.1"])
    )

    async def through_balancer(client: str) -> tuple[trio.SocketStream, int]:
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        header = encode_proxy_header(1, (client, 40000), ("127.0.0.1", port))
        await stream.send_all(header)
        await handshake(stream)
        await stream.send_all(
            codec.encode_request(Command.CONNECT, "127.0.0.1", origin)
        )
        return stream, (await read_reply(stream)).reply

    first, reply = await through_balancer("198.51.100.7")
    assert reply == Reply.SUCCEEDED
    assert dict(limits.by_client) == {"198.51.100.7": 1}
    second, reply = await through_balancer("198.51.100.7")
    assert reply == Reply.NOT_ALLOWED  # the same client's bound
    other, reply = await through_balancer("203.0.113.9")
    assert reply == Reply.SUCCEEDED  # another client behind the same balancer
    for stream in (first, second, other):
        await stream.aclose()
    with trio.fail_after(10):
        while len(socks_log.records) < 3:  # noqa: ASYNC110 - ends on their own
            await trio.sleep(0.01)
    clients = sorted(r.getMessage().split()[1] for r in socks_log.records)
    assert clients == ["198.51.100.7:40000", "198.51.100.7:40000", "203.0.113.9:40000"]
