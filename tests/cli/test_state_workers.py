"""Limits that hold across ``--workers N`` (the supervisor's shared-memory
table) and the admin listener over every worker: real processes on
loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import trio

from ..helpers import read_head, read_until_closed, start_upstream
from ..hijack_process import HijackProcess, run_hijack
from ..upgrades.test_connect import connect_head, status_of

TOKEN = "test-admin-token-0123456789"


async def hold(stream: trio.SocketStream) -> None:
    """An upstream that keeps every tunnel open until its client leaves."""
    async for _ in stream:
        pass


async def open_tunnel(port: int, target: str) -> tuple[int, trio.SocketStream]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    await stream.send_all(connect_head(target))
    head, _ = await read_head(stream)
    return status_of(head), stream


def proxy_args(upstream_port: int, *more: str) -> list[str]:
    return [
        "proxy",
        "--listen",
        "127.0.0.1:0",
        "--allow-private",
        "--allow-port",
        str(upstream_port),
        *more,
    ]


async def test_workers_hold_a_per_client_limit_of_one(nursery: trio.Nursery) -> None:
    """The issue's repro: six CONNECTs in a row, three workers, one tunnel."""
    upstream_port = await start_upstream(nursery, hold)
    args = proxy_args(upstream_port, "--workers", "3", "--max-tunnels-per-client", "1")
    async with run_hijack(args, stop_signal=signal.SIGINT) as proxy:
        port = await proxy.port()
        streams = []
        statuses = []
        for _ in range(6):
            status, stream = await open_tunnel(port, f"127.0.0.1:{upstream_port}")
            statuses.append(status)
            streams.append(stream)
        assert statuses == [200, 429, 429, 429, 429, 429]
        for stream in streams:
            await stream.aclose()


async def admin(
    port: int, method: str, path: str, token: str | None = TOKEN
) -> tuple[int, bytes]:
    """One request to the admin listener: (status, body)."""
    lines = [f"{method} {path} HTTP/1.1", "Host: admin", "Connection: close"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token}")
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(("\r\n".join(lines) + "\r\n\r\n").encode())
        answer = await read_until_closed(stream)
    head, _, body = answer.partition(b"\r\n\r\n")
    return status_of(head), body


async def admin_port(proxy: HijackProcess) -> int:
    return int((await proxy.wait_for(r"admin on http://[^ ]+:(\d+)/"))[1])


async def test_admin_across_workers_lists_ends_and_a_killed_worker_gives_back(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream_port = await start_upstream(nursery, hold)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    target = f"127.0.0.1:{upstream_port}"
    args = proxy_args(upstream_port, "--workers", "2", "--max-tunnels-per-client", "64")
    args += ["--admin", "127.0.0.1:0", "--admin-token-file", str(token_file)]
    streams: list[trio.SocketStream] = []
    try:
        async with run_hijack(args, stop_signal=signal.SIGINT) as proxy:
            await _admin_across_workers(proxy, target, token_file, streams)
    finally:
        for stream in streams:
            await stream.aclose()


async def _admin_across_workers(
    proxy: HijackProcess,
    target: str,
    token_file: Path,
    streams: list[trio.SocketStream],
) -> None:
    port, control = await proxy.port(), await admin_port(proxy)
    pids = await proxy.pids()
    # 401: no token, a wrong one, another scheme.
    assert (await admin(control, "GET", "/tunnels", None))[0] == 401
    assert (await admin(control, "GET", "/tunnels", TOKEN + "x"))[0] == 401
    assert (await admin(control, "GET", "/users", "wrong"))[0] == 401
    # Open tunnels until both workers hold some (the kernel spreads
    # accepts, not in a fixed order): every one is listed.
    rows: list[dict[str, object]] = []
    while len({row["node"] for row in rows}) < 2:
        assert len(streams) < 64, rows

        async def one_more() -> None:
            status, stream = await open_tunnel(port, target)
            streams.append(stream)
            assert status == 200

        async with trio.open_nursery() as nursery:  # at once: both wake
            for _ in range(4):
                nursery.start_soon(one_more)
        status, body = await admin(control, "GET", "/tunnels?kind=connect")
        assert status == 200
        rows = json.loads(body)["tunnels"]
        assert len(rows) == len(streams)
    assert {str(row["node"]).rpartition("/")[2] for row in rows} == {
        str(pid) for pid in pids
    }
    assert all(row["target"] == target and row["state"] == "open" for row in rows)
    status, body = await admin(control, "GET", "/users")
    assert json.loads(body)["users"]["-"]["tunnels"] == len(streams)
    # DELETE ends one tunnel, whichever worker runs it: its client sees EOF.
    first = rows[0]
    ended = next(
        s for s in streams if str(s.socket.getsockname()[1]) in str(first["client"])
    )
    assert (await admin(control, "DELETE", f"/tunnels/{first['id']}"))[0] == 204
    with trio.fail_after(10):
        assert await read_until_closed(ended) == b""
    assert (await admin(control, "DELETE", f"/tunnels/{first['id']}"))[0] == 404
    # hijack tunnels: the table, through the same API.
    listed = await trio.to_thread.run_sync(
        lambda: subprocess.run(
            [
                sys.executable,
                "-m",
                "hijack",
                "tunnels",
                "--admin",
                f"127.0.0.1:{control}",
                "--admin-token-file",
                str(token_file),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    )
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[0].split() == [
        "ID", "KIND", "USER", "CLIENT", "TARGET", "NODE", "AGE", "UP", "DOWN"
    ]  # fmt: skip
    assert len(listed.stdout.splitlines()) == len(streams)  # header + the rest
    # SIGKILL a worker: its tunnels end and their leases are given back.
    _, body = await admin(control, "GET", "/tunnels")
    rows = json.loads(body)["tunnels"]
    victim = int(str(rows[0]["node"]).rpartition("/")[2])
    held = sum(1 for row in rows if str(row["node"]).endswith(f"/{victim}"))
    os.kill(victim, signal.SIGKILL)
    await proxy.wait_for(
        rf"worker {victim} exited: {held} tunnel leases given back", stream="stderr"
    )


async def test_a_killed_worker_gives_its_tunnel_back(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    upstream_port = await start_upstream(nursery, hold)
    target = f"127.0.0.1:{upstream_port}"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    args = proxy_args(upstream_port, "--workers", "2", "--max-tunnels-per-client", "1")
    args += ["--admin", "127.0.0.1:0", "--admin-token-file", str(token_file)]
    async with run_hijack(args, stop_signal=signal.SIGINT) as proxy:
        port, control = await proxy.port(), await admin_port(proxy)
        status, tunnel = await open_tunnel(port, target)
        assert status == 200
        status, refused = await open_tunnel(port, target)
        assert status == 429
        await refused.aclose()
        _, body = await admin(control, "GET", "/tunnels")
        (row,) = json.loads(body)["tunnels"]
        victim = int(str(row["node"]).rpartition("/")[2])
        os.kill(victim, signal.SIGKILL)
        with trio.fail_after(10):
            assert await read_until_closed(tunnel) == b""
        await proxy.wait_for(rf"worker {victim} exited: 1 tunnel", stream="stderr")
        status, again = await open_tunnel(port, target)
        assert status == 200
        await again.aclose()
        await tunnel.aclose()


async def test_admin_needs_a_token_file_one_line_exit_2(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("abc\n")
    for more, problem in [
        ([], "--admin needs --admin-token-file FILE"),
        (["--admin-token-file", str(tmp_path / "none")], "No such file"),
        (["--admin-token-file", str(short)], "16 characters or more"),
    ]:
        args = ["proxy", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", *more]
        async with run_hijack([*args, "--workers", "2"]) as proxy:
            assert await proxy.wait() == 2
            await proxy.output_closed.wait()
        assert problem in proxy.stderr
        assert len(proxy.stderr.splitlines()) == 1, proxy.stderr


async def test_counts_survive_a_sighup_rolling_restart(nursery: trio.Nursery) -> None:
    """The table is the supervisor's: after every worker is replaced, the
    old worker's tunnel (still draining) is still counted."""
    upstream_port = await start_upstream(nursery, hold)
    target = f"127.0.0.1:{upstream_port}"
    args = proxy_args(upstream_port, "--workers", "2", "--max-tunnels-per-client", "1")
    async with run_hijack(
        [*args, "--shutdown-grace", "30"], stop_signal=signal.SIGINT
    ) as proxy:
        port = await proxy.port()
        status, tunnel = await open_tunnel(port, target)
        assert status == 200
        proxy.signal(signal.SIGHUP)
        await proxy.wait_for(r"reload done", stream="stderr")
        status, refused = await open_tunnel(port, target)
        assert status == 429
        await refused.aclose()
        await tunnel.aclose()  # the old worker's tunnel ends: given back
        with trio.fail_after(10):
            while True:  # the end travels through the old worker: polled
                status, stream = await open_tunnel(port, target)
                await stream.aclose()
                if status == 200:
                    break
                await trio.sleep(0.05)
