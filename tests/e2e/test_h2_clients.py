"""HTTP/2 against real clients: curl (--http2 over TLS, --http2-prior-knowledge),
nghttp2's nghttp and h2load (bounded runs), headless Chromium over TLS (the
echo page's WebSocket over RFC 8441; a local HTTPS origin loaded through
``hijack proxy --http2`` with the CONNECT on an HTTP/2 stream), and HAProxy
with an HTTP/2 backend carrying a WebSocket (RFC 8441 towards hijack).
Every one is checked on the server side too: the request arrived on HTTP/2."""

from __future__ import annotations

import functools
import os
import re
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
import trustme

from hijack import AccessRecord, Handler, Request, Response, Server
from hijack.client.wsclient import connect_websocket
from hijack.upgrades.websocket import make_echo_handler

from ..daemons import Daemons, free_port
from ..hijack_process import run_hijack
from ..leakcheck import leak_fixture

no_leaks = leak_fixture()
pytestmark = pytest.mark.usefixtures("no_leaks")

CHROMIUM = shutil.which("chromium")
HAPROXY = "/usr/sbin/haproxy"
#: Real time: one client run on a loaded 2-core box, bounded.
CLIENT_TIMEOUT = 60

PROBE_PAGE = b"""<!doctype html><html><body><div id="out">waiting</div><script>
const ws = new WebSocket("wss://" + location.host + "/");
ws.onopen = () => ws.send("ping over rfc 8441");
ws.onmessage = (e) => { document.getElementById("out").textContent = "echo:" + e.data; };
</script></body></html>"""


class TLS:
    """A test CA, a certificate for 127.0.0.1 and its files."""

    def __init__(self, tmp: Path) -> None:
        self.ca = trustme.CA()
        cert = self.ca.issue_cert("127.0.0.1", "localhost")
        self.server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        cert.configure_cert(self.server_context)
        self.ca_file = tmp / "ca.pem"
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.cert_file = tmp / "cert.pem"
        self.key_file = tmp / "key.pem"
        cert.cert_chain_pems[0].write_to_path(str(self.cert_file))
        cert.private_key_pem.write_to_path(str(self.key_file))


def app() -> tuple[Handler, list[AccessRecord]]:
    echo = make_echo_handler()

    async def handler(request: Request) -> Response | None:
        if request.path == "/body":
            data = await request.read()
            return Response(200, {"content-type": "text/plain"}, b"got %d" % len(data))
        if request.path == "/hello":
            return Response(200, {"content-type": "text/plain"}, b"hello\n")
        if request.path == "/probe":
            return Response(200, {"content-type": "text/html"}, PROBE_PAGE)
        return await echo(request)

    handler.serves_extended_connect = True  # type: ignore[attr-defined]
    return handler, []


async def start(
    nursery: trio.Nursery, tls: TLS | None = None
) -> tuple[Server, int, list[AccessRecord]]:
    handler, records = app()
    server = Server(handler, http2=True, on_request=records.append)
    listeners = await nursery.start(
        functools.partial(
            server.serve_tcp,
            0,
            ssl_context=None if tls is None else tls.server_context,
        )
    )
    return server, listeners[0].socket.getsockname()[1], records


async def run(command: list[str]) -> str:
    with trio.fail_after(CLIENT_TIMEOUT):
        done = await trio.run_process(command, capture_stdout=True, capture_stderr=True)
    return done.stdout.decode() + done.stderr.decode()


async def test_curl_http2_over_tls_and_prior_knowledge(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    tls = TLS(tmp_path)
    server, tls_port, records = await start(nursery, tls)
    plain_server, plain_port, plain_records = await start(nursery)
    body = tmp_path / "body"
    body.write_bytes(os.urandom(300_000))
    out = await run(
        ["curl", "-sS", "--http2", "--cacert", str(tls.ca_file),
         "-w", " %{http_version}", f"https://127.0.0.1:{tls_port}/hello"]
    )  # fmt: skip
    assert out == "hello\n 2"
    out = await run(
        ["curl", "-sS", "--http2", "--cacert", str(tls.ca_file), "--data-binary",
         f"@{body}", "-w", " %{http_version}", f"https://127.0.0.1:{tls_port}/body"]
    )  # fmt: skip
    assert out == "got 300000 2"
    out = await run(
        ["curl", "-sS", "--http2-prior-knowledge", "--data-binary", f"@{body}",
         "-w", " %{http_version}", f"http://127.0.0.1:{plain_port}/body"]
    )  # fmt: skip
    assert out == "got 300000 2"
    assert [r.http_version for r in records + plain_records] == ["2", "2", "2"]
    await server.shutdown(grace=0)
    await plain_server.shutdown(grace=0)


async def test_curl_early_answer_with_unread_body(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    """curl 7.88 fails (exit 92) when a server answers before reading the
    body and then resets the stream with NO_ERROR: the server reads and
    drops a small unread body instead."""
    server, port, _ = await start(nursery)
    body = tmp_path / "body"
    body.write_bytes(b"u" * 100_000)
    out = await run(
        ["curl", "-sS", "--http2-prior-knowledge", "--data-binary", f"@{body}",
         "-w", " %{http_code}", f"http://127.0.0.1:{port}/hello"]
    )  # fmt: skip
    assert out == "hello\n 200"
    await server.shutdown(grace=0)


@pytest.mark.skipif(shutil.which("nghttp") is None, reason="nghttp2-client missing")
async def test_nghttp_and_h2load(nursery: trio.Nursery, tmp_path: Path) -> None:
    tls = TLS(tmp_path)
    server, tls_port, records = await start(nursery, tls)
    plain_server, plain_port, _ = await start(nursery)
    upload = tmp_path / "upload"
    upload.write_bytes(b"n" * 200_000)
    out = await run(["nghttp", "-n", "-s", "-d", str(upload),
                     f"https://127.0.0.1:{tls_port}/body"])  # fmt: skip
    assert re.search(r"\s200\s+\d+\s+/body", out), out
    assert records[-1].http_version == "2" and records[-1].method == "POST"
    for url in (f"http://127.0.0.1:{plain_port}/hello",
                f"https://127.0.0.1:{tls_port}/hello"):  # fmt: skip
        out = await run(["h2load", "-n", "500", "-c", "4", "-m", "10", url])
        assert "500 succeeded, 0 failed, 0 errored" in out, out
        assert "status codes: 500 2xx" in out, out
    await server.shutdown(grace=0)
    await plain_server.shutdown(grace=0)


def chromium(profile: Path, *args: str) -> list[str]:
    assert CHROMIUM is not None
    return [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", "--ignore-certificate-errors",
        "--virtual-time-budget=5000", "--dump-dom", *args,
    ]  # fmt: skip


async def page_showing(text: str, tmp_path: Path, url: str, tries: int = 3) -> str:
    """The DOM of ``url`` once it shows ``text``, loading it up to ``tries``
    times. Headless Chromium's virtual time does not wait for a WebSocket
    (only for fetches): on a loaded machine the budget can run out before
    the page's socket opened, and the DOM is dumped still 'waiting'."""
    dom = ""
    for _ in range(tries):
        profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
        dom = await run(chromium(profile, url))
        if text in dom:
            return dom
    raise AssertionError(f"{url} never showed {text!r}: {dom[:300]!r}")


@pytest.mark.skipif(CHROMIUM is None, reason="chromium missing")
async def test_chromium_websocket_over_rfc8441(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    tls = TLS(tmp_path)
    server, port, records = await start(nursery, tls)
    await page_showing(
        '<div class="info">connected</div>', tmp_path, f"https://127.0.0.1:{port}/"
    )  # the echo page
    await page_showing(
        "echo:ping over rfc 8441", tmp_path, f"https://127.0.0.1:{port}/probe"
    )
    # The server saw the WebSockets arrive as Extended CONNECT on HTTP/2.
    websockets = [r for r in records if r.method == "CONNECT"]
    assert len(websockets) >= 2
    assert {(r.http_version, r.target, r.status) for r in websockets} == {
        ("2", "/", 200)
    }
    await server.shutdown(grace=0)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium missing")
async def test_chromium_through_hijack_proxy_http2(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    tls = TLS(tmp_path)
    origin, origin_port, origin_records = await start(nursery, tls)
    async with run_hijack(
        ["proxy", "--http2", "--listen", "127.0.0.1:0",
         "--tls-cert", str(tls.cert_file), "--tls-key", str(tls.key_file),
         "--allow-port", str(origin_port), "--allow", "127.0.0.1"]
    ) as proxy:  # fmt: skip
        proxy_port = await proxy.port()
        dom = await run(
            chromium(
                tmp_path / "p",
                f"--proxy-server=https://127.0.0.1:{proxy_port}",
                "--proxy-bypass-list=<-loopback>",
                f"https://127.0.0.1:{origin_port}/hello",
            )
        )
        assert "hello" in dom
        # The tunnel: a CONNECT on an HTTP/2 stream of the proxy connection.
        await proxy.wait_for(
            rf'"CONNECT 127.0.0.1:{origin_port} HTTP/2" 200', stream="stderr"
        )
    assert any(r.target == "/hello" for r in origin_records)
    await origin.shutdown(grace=0)


@pytest.mark.skipif(not os.path.exists(HAPROXY), reason="haproxy missing")
async def test_haproxy_h2_backend_carries_a_websocket_as_rfc8441(
    nursery: trio.Nursery, daemons: Daemons, tmp_path: Path
) -> None:
    server, port, records = await start(nursery)
    front = free_port()
    config = tmp_path / "haproxy.cfg"
    config.write_text(
        f"""
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
    timeout tunnel 30s

frontend web
    bind 127.0.0.1:{front}
    default_backend hijack

backend hijack
    server h1 127.0.0.1:{port} proto h2
"""
    )
    await daemons.start(
        [HAPROXY, "-f", str(config), "-db"],
        listening=[("127.0.0.1", front)],
        stderr=subprocess.DEVNULL,
    )
    with trio.fail_after(CLIENT_TIMEOUT):
        ws = await connect_websocket(f"ws://127.0.0.1:{front}/")
        async with ws:
            await ws.send("through haproxy")
            assert await ws.receive() == "through haproxy"
    websockets = [r for r in records if r.method == "CONNECT"]
    assert [(r.http_version, r.status) for r in websockets] == [("2", 200)]
    await server.shutdown(grace=0)
