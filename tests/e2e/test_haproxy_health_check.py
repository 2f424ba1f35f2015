"""The documentation's HAProxy examples (``docs/snippets/haproxy*.cfg``,
shown by the "behind a balancer" guide) run as written against a real HAProxy
and a real ``hijack proxy`` process: the health check passes (the server
stays UP), and a CONNECT tunnel through HAProxy reaches its destination
(with PROXY protocol, hijack names the real client). The guide's nginx
configuration (``docs/snippets/nginx.conf``) passes ``nginx -t``. The example the README used to show (an HTTP
check of ``/healthz`` on the service port, with ``check-send-proxy``) is run
the same way and fails its check: the test can tell the two apart.

Only the addresses are changed (loopback ports picked here) and the check
interval shortened; HAProxy logs every check result to its stdout
(``option log-health-checks``), which is what the test waits on."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import trio

from ..daemons import Daemons, free_port, nginx_main_config
from ..helpers import connect_from, read_until, start_upstream
from ..hijack_process import run_hijack

HAPROXY = "/usr/sbin/haproxy"
pytestmark = pytest.mark.skipif(
    not os.path.exists(HAPROXY), reason="haproxy not installed (make sysdeps)"
)

SNIPPETS = Path(__file__).resolve().parents[2] / "docs/snippets"

#: What the README showed before: the check goes to the service port, with a
#: PROXY header, and asks for a path the CONNECT proxy does not serve.
OLD_BACKEND = """\
backend hijack
    mode tcp
    option httpchk GET /healthz
    server h1 10.0.0.11:8080 send-proxy-v2 check check-send-proxy inter 2s
"""

#: Prepended to the snippet: HAProxy's log (health checks included) on
#: stdout, where the test reads it.
PREAMBLE = """\
global
    log stdout format raw local0 info

defaults
    log global
    option log-health-checks
    timeout connect 5s
    timeout client 30s
    timeout server 30s

"""


def localized(config: str, front: int, service: int, metrics: int) -> str:
    """The snippet with loopback addresses and a short check interval."""
    for bind in ("bind :443", "bind :3128"):
        config = config.replace(bind, f"bind 127.0.0.1:{front}")
    for server in ("10.0.0.11:8080", "10.0.0.11:3128", "10.0.0.12:3128"):
        config = config.replace(server, f"127.0.0.1:{service}")
    config = config.replace("port 9100", f"port {metrics}")
    return PREAMBLE + config.replace("inter 2s", "inter 100ms")


async def echo(stream: trio.SocketStream) -> None:
    async with stream:
        async for data in stream:
            await stream.send_all(data)


class HAProxyLog:
    """HAProxy's stdout, line by line, waited on."""

    def __init__(self) -> None:
        self.text = ""
        self._changed = trio.Event()

    async def pump(self, stream: trio.abc.ReceiveStream) -> None:
        async with stream:
            async for chunk in stream:
                self.text += chunk.decode(errors="replace")
                self._changed.set()
                self._changed = trio.Event()

    async def wait_for(self, pattern: str) -> re.Match[str]:
        with trio.fail_after(20):
            while (match := re.search(pattern, self.text)) is None:
                await self._changed.wait()
            return match


async def run_haproxy(
    nursery: trio.Nursery, daemons: Daemons, tmp_path: Path, config: str, front: int
) -> HAProxyLog:
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    log = HAProxyLog()
    read_end, write_end = os.pipe()
    output = trio.lowlevel.FdStream(read_end)
    try:
        await daemons.start(
            [HAPROXY, "-db", "-f", str(path)],
            listening=[("127.0.0.1", front)],
            stdout=write_end,
        )
    except BaseException:
        await output.aclose()
        raise
    finally:
        os.close(write_end)
    nursery.start_soon(log.pump, output)
    return log


#: (snippet, hijack reads PROXY protocol, backend replaced by this or None)
EXAMPLES = {
    "plain": ("haproxy.cfg", False, None),
    "proxy-protocol": ("haproxy-proxy-protocol.cfg", True, None),
    "old README": ("haproxy-proxy-protocol.cfg", True, OLD_BACKEND),
}


@pytest.mark.parametrize("example", list(EXAMPLES))
async def test_haproxy_example_health_check_and_tunnel(
    nursery: trio.Nursery, daemons: Daemons, tmp_path: Path, example: str
) -> None:
    snippet_name, proxy_protocol, backend = EXAMPLES[example]
    upstream = await start_upstream(nursery, echo)
    args = ["proxy", "--listen", "127.0.0.1:0", "--metrics", "127.0.0.1:0"]
    args += ["--allow", "127.0.0.1", "--allow-port", str(upstream)]
    if proxy_protocol:
        args += ["--proxy-protocol", "127.0.0.1"]
    async with run_hijack(args) as hijack:
        service, metrics = await hijack.port(), await hijack.metrics_port()
        snippet = (SNIPPETS / snippet_name).read_text()
        if backend is not None:
            snippet = snippet[: snippet.index("\nbackend hijack") + 1] + backend
        front = free_port()
        config = localized(snippet, front, service, metrics)
        log = await run_haproxy(nursery, daemons, tmp_path, config, front)
        check = await log.wait_for(r"Health check for server hijack/h1 (\w+)(.*)")
        if backend is not None:
            assert check[1] == "failed", check[0]
            assert "code: 405" in check[2], check[0]  # CONNECT only, on that port
            return
        assert check[1] == "succeeded", check[0]
        assert "code: 200" in check[2], check[0]

        # Traffic through HAProxy: a CONNECT tunnel from the client's own
        # address; with PROXY protocol, hijack's tunnel log names that
        # client, else HAProxy (127.0.0.1).
        async with await connect_from("127.0.0.5", "127.0.0.1", front) as stream:
            target = f"127.0.0.1:{upstream}"
            await stream.send_all(
                f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode()
            )
            head = await read_until(stream, b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200 "), head
            await stream.send_all(b"through haproxy")
            assert await read_until(stream, b"through haproxy") == b"through haproxy"
        client = r"127\.0\.0\.5" if proxy_protocol else r"127\.0\.0\.1"
        await hijack.wait_for(rf"{client}:\d+ .*{re.escape(target)}", stream="stderr")


NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"


@pytest.mark.skipif(
    not (os.access(NGINX, os.X_OK) and os.path.exists(STREAM_MODULE)),
    reason="nginx or its stream module is not installed (make sysdeps)",
)
async def test_nginx_example_is_a_valid_configuration(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        nginx_main_config(tmp_path)
        + f"load_module {STREAM_MODULE};\nevents {{ worker_connections 64; }}\n"
        + (SNIPPETS / "nginx.conf").read_text()
    )
    command = [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf)]
    result = await trio.run_process(
        [*command, "-e", str(tmp_path / "error.log")], capture_stderr=True, check=False
    )
    assert result.returncode == 0, result.stderr.decode()
    assert b"test is successful" in result.stderr
