"""``--metrics``: Prometheus exposition summed over workers, /healthz and
/readyz; and the Metrics hooks on a library Server."""

from __future__ import annotations

import base64
import errno
import os
import re
import signal

import trio
from prometheus_client.parser import text_string_to_metric_families

from hijack import Request, Response, Server
from hijack.cli._metrics import Metrics
from hijack.testing import MemoryListener

from ..conftest import StartServer
from ..helpers import read_exactly, read_until, read_until_closed
from ..hijack_process import http_get, read_by_peer, run_hijack


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def _scrape(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = await http_get(port, "/metrics")
    assert status == 200
    return _samples(body.decode())


def _value(
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float],
    name: str,
    **labels: str,
) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_library_hooks_count_requests_and_states(
    start_server: StartServer,
) -> None:
    metrics = Metrics()

    async def handler(request: Request) -> Response:
        return Response(200 if request.path == "/" else 404, body=b"hi")

    server, port = await start_server(
        handler, on_state=metrics.on_state, on_request=metrics.on_request
    )
    for path in ("/", "/", "/missing"):
        assert (await http_get(port, path))[0] in (200, 404)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await read_until(stream, b"hi")
        await trio.testing.wait_all_tasks_blocked()
        metrics.sample(server)
        registry = metrics.registry
        assert registry.get_sample_value("hijack_connections", {"state": "idle"}) == 1
    get = registry.get_sample_value
    assert get("hijack_requests_total", {"status": "200"}) == 3
    assert get("hijack_requests_total", {"status": "404"}) == 1
    assert get("hijack_request_duration_seconds_count") == 4
    assert get("hijack_connections_accepted_total") == 4


def test_proxy_protocol_rejections_counter_is_there_for_the_reader() -> None:
    metrics = Metrics()
    metrics.on_proxy_protocol_rejection("untrusted")
    metrics.on_proxy_protocol_rejection("untrusted")
    assert (
        metrics.registry.get_sample_value(
            "hijack_proxy_protocol_rejections_total", {"reason": "untrusted"}
        )
        == 2
    )


def _websocket_upgrade() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


async def _open_tunnel(port: int) -> trio.SocketStream:
    tunnel = await trio.open_tcp_stream("127.0.0.1", port)
    await tunnel.send_all(
        f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    )
    assert (await read_until(tunnel, b"\r\n\r\n")).startswith(b"HTTP/1.1 200 ")
    return tunnel


async def test_metrics_summed_over_workers_and_readiness_through_shutdown() -> None:
    args = ["demo", "--listen", "127.0.0.1:0", "--workers", "2"]
    args += ["--metrics", "127.0.0.1:0", "--shutdown-grace", "20"]
    async with run_hijack(args) as hijack:
        port = await hijack.port()
        metrics_port = await hijack.metrics_port()
        assert await http_get(metrics_port, "/healthz") == (200, b"ok\n")
        assert await http_get(metrics_port, "/readyz") == (200, b"ok\n")
        for _ in range(20):  # fresh connections: both workers get some
            assert (await http_get(port, "/hello"))[0] == 200
        websocket = await trio.open_tcp_stream("127.0.0.1", port)
        async with websocket:
            await websocket.send_all(_websocket_upgrade())
            assert (await read_until(websocket, b"\r\n\r\n")).startswith(
                b"HTTP/1.1 101 "
            )
            # Three masked text frames "a" (RFC 6455 5.2; mask 0 keeps it plain).
            await websocket.send_all(b"\x81\x81\x00\x00\x00\x00a" * 3)
            assert await read_exactly(websocket, 9) == b"\x81\x01a" * 3
        # CONNECT tunnels to the server itself: one used and closed, one
        # left open.
        hello = b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        closed = await _open_tunnel(port)
        await closed.send_all(hello)
        answer = await read_until_closed(closed)
        await closed.aclose()
        tunnel = await _open_tunnel(port)
        connect_ok = {"kind": "connect", "outcome": "ok", "port": str(port)}
        with trio.fail_after(10):  # gauges are sampled every second
            while True:
                samples = await _scrape(metrics_port)
                if (
                    _value(samples, "hijack_hijacked_open") == 1
                    and _value(samples, "hijack_tunnels_total", **connect_ok)
                    and _value(
                        samples, "hijack_websocket_messages_total", direction="out"
                    )
                ):
                    break
                await trio.sleep(0.2)
        assert _value(samples, "hijack_connections", state="hijacked") == 1
        assert _value(samples, "hijack_tunnels_total", **connect_ok) == 1
        assert _value(samples, "hijack_relay_bytes_total", direction="up") == len(hello)
        assert _value(samples, "hijack_relay_bytes_total", direction="down") == len(
            answer
        )
        # 20 + the one through the tunnel, + 2 CONNECTs answered 200.
        assert _value(samples, "hijack_requests_total", status="200") == 23
        assert _value(samples, "hijack_requests_total", status="101") == 1
        assert _value(samples, "hijack_websocket_connections_total") == 1
        for direction in ("in", "out"):
            assert (
                _value(samples, "hijack_websocket_messages_total", direction=direction)
                == 3
            )
        assert _value(samples, "hijack_connections_accepted_total") >= 22
        # pids of workers that wrote samples: requests came to both.
        assert len(re.findall(r"worker \d+ serving", hijack.stderr)) == 2

        hijack.signal(signal.SIGTERM)
        # A worker drains only after the supervisor stopped being ready.
        await hijack.wait_for("shutting down", stream="stderr")
        assert (await http_get(metrics_port, "/readyz"))[0] == 503
        assert (await http_get(metrics_port, "/healthz"))[0] == 200
        # The tunnel still works during the drain; closing it ends it.
        await tunnel.send_all(hello)
        answer = await read_until_closed(tunnel)
        assert b"hello from hijack" in answer
        await tunnel.aclose()
        assert await hijack.wait() == 0


async def test_one_process_readyz_turns_503_before_the_drain_ends() -> None:
    args = ["echo", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]
    async with run_hijack([*args, "--shutdown-grace", "20"]) as hijack:
        port = await hijack.port()
        metrics_port = await hijack.metrics_port()
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        await busy.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")  # in flight
        assert (await http_get(metrics_port, "/readyz"))[0] == 200
        # The server is reading it; one process samples its gauges at
        # each scrape: they say so at once.
        await read_by_peer(busy)
        assert (
            _value(await _scrape(metrics_port), "hijack_connections", state="active")
            == 1
        )
        hijack.signal(signal.SIGTERM)
        # Said once readiness is off, before the drain.
        await hijack.wait_for("shutting down", stream="stderr")
        assert (await http_get(metrics_port, "/readyz"))[0] == 503
        assert (await http_get(metrics_port, "/healthz"))[0] == 200
        await busy.send_all(b"\r\n")
        assert (await read_until_closed(busy)).startswith(b"HTTP/1.1 200 ")
        await busy.aclose()
        assert await hijack.wait() == 0


class _FailingOnce(MemoryListener):
    """Out of file descriptors for the first accept, then fine."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 1

    async def accept(self) -> trio.abc.Stream:
        if self.failures:
            self.failures -= 1
            await trio.lowlevel.checkpoint()
            raise OSError(errno.EMFILE, "Too many open files")
        return await super().accept()


async def test_accept_errors_are_counted(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    metrics = Metrics()

    async def handler(request: Request) -> Response:
        return Response(200, body=b"ok")

    server = Server(handler, on_accept_error=metrics.on_accept_error)
    listener = _FailingOnce()
    await nursery.start(server.serve_listeners, [listener])
    client = await listener.connect()  # accepted once the retry comes round
    async with client:
        await client.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await read_until_closed(client)).startswith(b"HTTP/1.1 200 ")
    assert metrics.registry.get_sample_value("hijack_accept_errors_total") == 1
    await server.shutdown(grace=0)


async def test_an_ipv6_metrics_address_is_printed_as_a_url() -> None:
    """``http://[::1]:PORT/metrics``, which a browser or curl opens, not
    ``http://::1:PORT/metrics``."""
    args = ["echo", "--listen", "127.0.0.1:0", "--metrics", "[::1]:0"]
    async with run_hijack(args, stop_signal=signal.SIGTERM) as hijack:
        url = (await hijack.wait_for(r"metrics on (\S+)"))[1]
        assert re.fullmatch(r"http://\[::1\]:\d+/metrics", url), url
        done = await trio.run_process(
            ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", url],
            capture_stdout=True,
        )
        assert done.stdout == b"200"
