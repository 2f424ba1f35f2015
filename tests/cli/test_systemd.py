"""systemd socket activation and sd_notify, with the real
``systemd-socket-activate`` (Debian package ``systemd``) in front."""

from __future__ import annotations

import os
import signal
import socket
import sys
from pathlib import Path

import pytest
import trio

from hijack import listeners_from_fds, systemd_listen_fds
from hijack._systemd import notify

from ..helpers import read_until_closed
from ..hijack_process import START_TIMEOUT


def test_listen_fds_only_for_this_process() -> None:
    env = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid()), "LISTEN_FDNAMES": "a:b"}
    assert systemd_listen_fds(env) == [3, 4]
    assert env == {}  # unset, so our children do not take them
    other = {"LISTEN_FDS": "2", "LISTEN_PID": str(os.getpid() + 1)}
    assert systemd_listen_fds(other) == []
    assert systemd_listen_fds({}) == []


def test_a_socket_that_does_not_listen_is_refused_by_fd() -> None:
    sock = socket.socket()
    fd = sock.detach()
    with pytest.raises(ValueError, match=rf"inherited fd {fd}: .*listening"):
        listeners_from_fds([fd])
    with pytest.raises(OSError):
        os.fstat(fd)  # closed, not leaked


async def test_an_inherited_listening_socket_is_served_as_is() -> None:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(7)
    port = sock.getsockname()[1]
    [listener] = listeners_from_fds([sock.detach()])
    async with listener:
        client = await trio.open_tcp_stream("127.0.0.1", port)
        server_side = await listener.accept()
        async with client, server_side:
            await client.send_all(b"x")
            assert await server_side.receive_some() == b"x"


def test_notify_sends_one_datagram_to_an_abstract_socket() -> None:
    name = f"hijack-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as manager:
        manager.bind("\0" + name)
        assert notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert manager.recv(100) == b"READY=1"
    assert not notify("READY=1", {})
    assert not notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/socket"})


@pytest.mark.parametrize("workers", [1, 2])
async def test_systemd_socket_activate_with_notify(
    tmp_path: Path, workers: int
) -> None:
    """The manager listens; hijack serves its socket, says READY=1 once
    serving and STOPPING=1 when told to stop, and answers a request that
    was queued before it started."""
    path = str(tmp_path / "web.sock")
    notify_path = str(tmp_path / "notify")
    manager = trio.socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    await manager.bind(notify_path)
    command = [
        "systemd-socket-activate",
        "--listen",
        path,
        "--setenv",
        f"NOTIFY_SOCKET={notify_path}",
        sys.executable,
        "-m",
        "hijack",
        "echo",
        "--workers",
        str(workers),
    ]
    with manager:
        process = await trio.lowlevel.open_process(
            command, stdout=-1, stderr=-1, start_new_session=True
        )
        try:
            assert process.stderr is not None
            with trio.fail_after(START_TIMEOUT):
                said = b""
                while b"Listening on" not in said:
                    chunk = await process.stderr.receive_some()
                    assert chunk, said
                    said += chunk
                # The manager starts hijack on the first connection; that
                # connection waits in the manager's socket queue meanwhile.
                client = await trio.open_unix_socket(path)
                await client.send_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                assert await manager.recv(100) == b"READY=1"
                data = await read_until_closed(client)
                await client.aclose()
            assert data.startswith(b"HTTP/1.1 200 ")
            assert b"WebSocket" in data
            process.send_signal(signal.SIGTERM)
            with trio.fail_after(START_TIMEOUT):
                assert await manager.recv(100) == b"STOPPING=1"
                assert await process.wait() == 0
        finally:
            if process.returncode is None:
                os.killpg(process.pid, signal.SIGKILL)
                await process.wait()
            for pipe in (process.stdout, process.stderr):
                if pipe is not None:
                    await pipe.aclose()
