"""``--workers N``: a supervisor restarts dead workers, drains on SIGTERM and
replaces workers on SIGHUP without refusing a connection. Real processes on
loopback; every wait is bounded."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from ..helpers import read_until, read_until_closed
from ..hijack_process import exited, http_get, read_by_peer, run_hijack

ECHO = ["echo", "--listen", "127.0.0.1:0", "--workers", "2"]


def _alive(pid: int) -> bool:
    """Running (an exited worker whose supervisor died stays a zombie until
    whoever adopted it reaps it: that is not alive)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


async def test_a_killed_worker_is_restarted() -> None:
    async with run_hijack(ECHO) as hijack:
        port = await hijack.port()
        first, second = await hijack.pids()
        os.kill(first, signal.SIGKILL)
        await hijack.wait_for(
            rf"worker {first} exited unexpectedly \(killed by SIGKILL\); restarting",
            stream="stderr",
        )
        # The replacement announces itself after the exit line.
        await hijack.wait_for(
            r"unexpectedly[^\n]*\n(?:.*\n)*?.*worker (\d+) serving", stream="stderr"
        )
        match = re.findall(r"worker (\d+) serving", hijack.stderr)
        replacement = int(match[-1])
        assert replacement not in (first, second)
        assert _alive(replacement) and _alive(second)
        for _ in range(10):  # both workers answer, on the one socket
            status, body = await http_get(port)
            assert status == 200 and b"WebSocket" in body
        hijack.signal(signal.SIGTERM)
        assert await hijack.wait() == 0
        assert not _alive(replacement) and not _alive(second)


async def test_sigterm_drains_a_request_in_flight() -> None:
    async with run_hijack([*ECHO, "--shutdown-grace", "20"]) as hijack:
        port = await hijack.port()
        # A request in flight: its head half sent, so a worker is reading it.
        busy = await trio.open_tcp_stream("127.0.0.1", port)
        async with busy:  # closed even when an assertion fails
            await busy.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            await read_by_peer(busy)  # a worker is reading the request
            hijack.signal(signal.SIGTERM)
            # Both workers said they drain (after the supervisor stopped
            # being ready): the request is in flight through a shutdown.
            # Each says it on a line of its own (one write per line).
            await hijack.wait_for(
                r"shutting down.*\n(?:.*\n)*?.*shutting down", stream="stderr"
            )
            assert hijack.process.returncode is None  # still draining
            await busy.send_all(b"\r\n")
            data = await read_until_closed(busy)
        assert data.startswith(b"HTTP/1.1 200 ")
        assert b"connection: close" in data.lower()
        assert await hijack.wait() == 0


async def test_sighup_replaces_workers_refusing_no_connection() -> None:
    async with run_hijack(ECHO) as hijack:
        port = await hijack.port()
        old = set(await hijack.pids())
        outcomes: list[int] = []
        reloaded = trio.Event()
        streaming = trio.Event()

        async def client() -> None:
            # A steady stream of fresh connections until the reload is done
            # and a few more after; bounded in count.
            after = 0
            while len(outcomes) < 3000 and after < 20:
                try:
                    status, _ = await http_get(port)
                except OSError:
                    status = -1
                outcomes.append(status)
                if len(outcomes) >= 20:
                    streaming.set()
                if reloaded.is_set():
                    after += 1

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(client)
            await streaming.wait()
            hijack.signal(signal.SIGHUP)
            match = await hijack.wait_for(
                r"reload done: workers \[([\d, ]+)\]", stream="stderr"
            )
            reloaded.set()
        new = {int(pid) for pid in match[1].split(",")}
        assert not new & old
        assert outcomes.count(200) == len(outcomes), (
            f"{len(outcomes) - outcomes.count(200)} of {len(outcomes)} failed"
        )
        for pid in old:  # the old workers drained and left
            await hijack.wait_for(
                rf"worker {pid} exited \(exit code 0\)", stream="stderr"
            )
        hijack.signal(signal.SIGTERM)
        assert await hijack.wait() == 0


async def test_one_worker_keeps_serving_a_keep_alive_connection_through_reload() -> (
    None
):
    """An open connection is not dropped by SIGHUP: its worker finishes the
    request in flight and closes only between requests."""
    async with run_hijack(ECHO) as hijack:
        port = await hijack.port()
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        async with stream:
            await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            await read_by_peer(stream)  # a worker is reading this head
            hijack.signal(signal.SIGHUP)
            await hijack.wait_for(r"reload done", stream="stderr")
            await stream.send_all(b"\r\n")
            data = await read_until(stream, b"</html>")
            assert data.startswith(b"HTTP/1.1 200 ")
        hijack.signal(signal.SIGTERM)
        assert await hijack.wait() == 0


async def test_workers_on_a_unix_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "hijack.sock")
    async with run_hijack(["echo", "--unix", path, "--workers", "2"]) as hijack:
        await hijack.wait_for(rf"listening on unix:{re.escape(path)} \(2 workers")
        for _ in range(4):
            stream = await trio.open_unix_socket(path)
            async with stream:
                await stream.send_all(
                    b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                assert (await read_until_closed(stream)).startswith(b"HTTP/1.1 200 ")
        hijack.signal(signal.SIGTERM)
        assert await hijack.wait() == 0
    assert not os.path.exists(path)


async def test_workers_stop_when_the_supervisor_is_gone() -> None:
    async with run_hijack(ECHO) as hijack:
        await hijack.port()
        pids = await hijack.pids()
        os.kill(hijack.process.pid, signal.SIGKILL)  # no chance to clean up
        with trio.fail_after(20):  # the workers hold stderr until they exit
            await hijack.output_closed.wait()
        # Each worker saw its lifeline close and drained.
        assert hijack.stderr.count("the supervisor is gone: shutting down") == 2
        for pid in pids:  # after stderr, atexit work (coverage) may run
            await exited(pid)
        assert not any(_alive(pid) for pid in pids)


def test_a_bad_configuration_is_refused_before_any_worker(tmp_path: Path) -> None:
    """The supervisor checks what each worker would: one line, exit 2, and
    no worker started to say it again."""
    command = [sys.executable, "-m", "hijack", "demo", "--unix", str(tmp_path / "s")]
    done = subprocess.run(
        [*command, "--workers", "2"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr == (
        "hijack demo: --unix: the demo tunnels to itself over TCP; use --listen\n"
    )
    assert not (tmp_path / "s").exists()


async def test_a_worker_that_cannot_start_is_a_startup_error() -> None:
    """A worker that exits before it serves: WorkerStartError (a
    StartupError: the command prints it in one line and exits 2)."""
    from hijack.cli._command import StartupError
    from hijack.cli._supervisor import Supervisor, WorkerStartError

    assert issubclass(WorkerStartError, StartupError)
    supervisor = Supervisor([sys.executable, "-c", "pass"], [], 2, grace=1)
    with pytest.RaisesGroup(WorkerStartError, flatten_subgroups=True):
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)


async def test_workers_run_the_installed_package_not_the_working_directory(
    tmp_path: Path,
) -> None:
    """A ``hijack.py`` in the current directory must not stand in for the
    package in the workers (``python -m hijack`` would import it first)."""
    (tmp_path / "hijack.py").write_text(
        "raise SystemExit('the hijack.py of the working directory ran')\n"
    )
    script = Path(sys.executable).with_name("hijack")  # the installed command
    async with run_hijack(
        ECHO, cwd=tmp_path, entry=[str(script)], stop_signal=signal.SIGTERM
    ) as echo:
        port = await echo.port()
        assert (await http_get(port))[0] == 200
        echo.signal(signal.SIGTERM)
        assert await echo.wait() == 0
    assert "working directory" not in echo.stderr
