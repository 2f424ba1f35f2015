"""The examples run as the README says (driven here through their code)."""

from __future__ import annotations

import functools
import importlib.util
import os
import signal
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import trio

from hijack import PeerCredentials, Server
from hijack.testing import Peer, open_test_client

from ..daemons import Daemons, free_port, wait_listening
from ..helpers import read_until_closed

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load_example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def ask(path: str) -> bytes:
    async with await trio.open_unix_socket(path) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return await read_until_closed(stream)


async def test_unix_peercred_allows_and_refuses(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    example = load_example("unix_peercred")
    allowed = Server(example.make_handler({os.getuid()}))
    refused = Server(example.make_handler({os.getuid() + 1}))
    await nursery.start(allowed.serve_unix, str(tmp_path / "a.sock"))
    await nursery.start(refused.serve_unix, str(tmp_path / "r.sock"))
    data = await ask(str(tmp_path / "a.sock"))
    assert data.startswith(b"HTTP/1.1 200 ")
    assert data.endswith(
        f"uid={os.getuid()} gid={os.getgid()} pid={os.getpid()}\n".encode()
    )
    data = await ask(str(tmp_path / "r.sock"))
    assert data.startswith(b"HTTP/1.1 403 ")
    await allowed.shutdown()
    await refused.shutdown()


async def test_unix_peercred_with_faked_credentials() -> None:
    """The same handler without a socket: hijack.testing shows it the
    credentials a test chooses (another user, or none at all)."""
    example = load_example("unix_peercred")
    alice = Peer(peer_credentials=PeerCredentials(pid=42, uid=1000, gid=100))
    bob = Peer(peer_credentials=PeerCredentials(pid=43, uid=1001, gid=100))
    async with open_test_client(example.make_handler({1000})) as client:
        response = await client.request("GET", "/", peer=alice)
        assert (response.status, response.body) == (200, b"uid=1000 gid=100 pid=42\n")
        assert (await client.request("GET", "/", peer=bob)).status == 403
        assert (await client.request("GET", "/")).status == 403  # no credentials


async def run_example(daemons: Daemons, args: list[str], port: int) -> None:
    """Start ``python examples/ARGS...`` and wait until ``port`` accepts (the
    examples print before they listen: there is no line to wait for).
    Stopped with Ctrl-C (SIGINT) at the end of the test."""
    await daemons.start(
        [sys.executable, str(EXAMPLES / args[0]), *args[1:]],
        listening=[("127.0.0.1", port)],
        stop_signal=signal.SIGINT,
        stdout=None,  # shown by pytest when the test fails
        stderr=None,
    )


async def get(port: int, raw: bytes) -> bytes:
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(raw)
        return await read_until_closed(stream)


GET_CLOSE = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


async def test_examples_run_as_the_readme_says(
    nursery: trio.Nursery, daemons: Daemons
) -> None:
    async def upstream(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"upstream says " + await stream.receive_some())

    listeners = await nursery.start(
        functools.partial(trio.serve_tcp, upstream, 0, host="127.0.0.1")
    )
    up_port = listeners[0].socket.getsockname()[1]

    port = free_port()
    await run_example(
        daemons, ["tcp_proxy.py", f"127.0.0.1:{up_port}", str(port)], port
    )
    data = await get(
        port,
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\nhi",
    )
    assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert data.endswith(b"\r\n\r\nupstream says hi")

    port = free_port()
    await run_example(daemons, ["ws_echo.py", str(port)], port)
    data = await get(port, GET_CLOSE)
    assert data.startswith(b"HTTP/1.1 200 ") and b"WebSocket" in data

    port = free_port()
    await run_example(daemons, ["connect_proxy.py", str(port)], port)
    data = await get(port, b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert data.startswith(b"HTTP/1.1 403 ")  # loopback refused by default
    data = await get(port, GET_CLOSE)
    assert b"CONNECT proxy" in data


async def _ctrl_c_when_serving(args: list[str], port: int | None, path: Path) -> str:
    """Start an example, press Ctrl-C once it serves; its stderr."""
    process = await trio.lowlevel.open_process(
        [sys.executable, str(EXAMPLES / args[0]), *args[1:]],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    assert process.stderr is not None
    stderr = b""
    try:
        if port is not None:
            await wait_listening(port)
        else:  # a UNIX socket: it answers once served
            with trio.fail_after(30):
                while True:
                    try:
                        await ask(str(path))
                        break
                    except OSError:
                        await trio.sleep(0.025)
        process.send_signal(signal.SIGINT)
        with trio.fail_after(30):
            while chunk := await process.stderr.receive_some():
                stderr += chunk
            assert await process.wait() == 0, stderr.decode()
    finally:
        if process.returncode is None:
            process.kill()
        with trio.CancelScope(shield=True):
            await process.wait()
            await process.stderr.aclose()
    return stderr.decode()


@pytest.mark.parametrize(
    "example",
    [
        "tcp_proxy.py 127.0.0.1:9",
        "ws_echo.py",
        "connect_proxy.py",
        "ws_tunnel.py 127.0.0.1:9",
        "unix_peercred.py",
    ],
)
async def test_examples_stop_quietly_on_ctrl_c(example: str, tmp_path: Path) -> None:
    """Ctrl-C while serving: exit 0 and no traceback (on 3.11 trio raises
    the KeyboardInterrupt in an exception group, which
    contextlib.suppress(KeyboardInterrupt) does not catch)."""
    args = example.split()
    path = tmp_path / "whoami.sock"
    port = None
    if args[0] == "unix_peercred.py":
        args.append(str(path))
    else:
        port = free_port()
        args.append(str(port))
    stderr = await _ctrl_c_when_serving(args, port, path)
    assert "Traceback" not in stderr
    assert "KeyboardInterrupt" not in stderr
    assert not path.exists()  # unix_peercred's socket file goes with it
