"""Run the ``hijack`` command as a real process and read what it prints."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import trio

from .helpers import ask

#: Real time: one process start on a loaded 2-core box, bounded.
START_TIMEOUT = 30
#: Real time: a graceful stop (``stop_signal``) before SIGKILL.
STOP_TIMEOUT = 10


class HijackProcess:
    """``hijack ARGS...``: stdout and stderr collected as they come."""

    def __init__(self, process: trio.Process) -> None:
        self.process = process
        self.stdout = ""
        self.stderr = ""
        self._changed = trio.Event()
        #: Set when stdout and stderr both reached EOF: every process that
        #: held them (the command, its workers) has exited.
        self.output_closed = trio.Event()
        self._open_outputs = 2

    async def _pump(self, stream: trio.abc.ReceiveStream, name: str) -> None:
        async for chunk in stream:
            setattr(self, name, getattr(self, name) + chunk.decode(errors="replace"))
            self._changed.set()
            self._changed = trio.Event()
        self._open_outputs -= 1
        if not self._open_outputs:
            self.output_closed.set()
        await self.process.wait()  # EOF: wake wait_for() to see the exit
        self._changed.set()

    async def wait_for(self, pattern: str, *, stream: str = "stdout") -> re.Match[str]:
        """The first match of ``pattern`` in the output, waiting for it."""
        with trio.fail_after(START_TIMEOUT):
            while True:
                match = re.search(pattern, getattr(self, stream))
                if match:
                    return match
                if self.process.returncode is not None:
                    raise AssertionError(
                        f"exited ({self.process.returncode}) before {pattern!r}:\n"
                        f"{self.stdout}\n{self.stderr}"
                    )
                await self._changed.wait()

    async def address(self) -> str:
        """Where it said it listens (``http://127.0.0.1:PORT``,
        ``http://unix:PATH``, ``127.0.0.1:PORT`` for ``forward``)."""
        return (await self.wait_for(r"listening on (\S+)"))[1]

    async def port(self) -> int:
        return int((await self.wait_for(r"listening on https?://[^ ]+:(\d+)"))[1])

    async def metrics_port(self) -> int:
        return int((await self.wait_for(r"metrics on http://[^ ]+:(\d+)"))[1])

    async def pids(self) -> list[int]:
        match = await self.wait_for(r"workers: ([\d ]+)\)")
        return [int(pid) for pid in match[1].split()]

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def wait(self, timeout: float = START_TIMEOUT) -> int:
        with trio.fail_after(timeout):
            return await self.process.wait()


@contextlib.asynccontextmanager
async def run_hijack(
    args: Sequence[str],
    *,
    env: dict[str, str] | None = None,
    stop_signal: int | None = None,
    cwd: str | os.PathLike[str] | None = None,
    entry: Sequence[str] = (sys.executable, "-m", "hijack"),
) -> AsyncIterator[HijackProcess]:
    """Start ``python -m hijack ARGS`` (or ``entry ARGS``); on exit, SIGKILL
    it (and its whole session: workers) if it is still running. With
    ``stop_signal`` it is first asked to stop with that signal (bounded by
    STOP_TIMEOUT): a graceful exit also writes the child's coverage data."""
    process = await trio.lowlevel.open_process(
        [*entry, *args],
        stdout=-1,
        stderr=-1,
        env=dict(os.environ, **(env or {})),
        start_new_session=True,
        cwd=cwd,
    )
    runner = HijackProcess(process)
    try:
        async with trio.open_nursery() as nursery:
            assert process.stdout is not None and process.stderr is not None
            nursery.start_soon(runner._pump, process.stdout, "stdout")
            nursery.start_soon(runner._pump, process.stderr, "stderr")
            try:
                yield runner
            finally:
                if stop_signal is not None and process.returncode is None:
                    process.send_signal(stop_signal)
                    with trio.move_on_after(STOP_TIMEOUT):
                        await process.wait()
                if process.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(process.pid, signal.SIGKILL)
                with trio.CancelScope(shield=True):
                    await process.wait()
    finally:
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                await pipe.aclose()


async def http_get(port: int, path: str = "/") -> tuple[int, bytes]:
    """One GET on a fresh connection to 127.0.0.1: (status, body)."""
    request = f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    response = await ask(port, request.encode())
    return response.status, response.body


def _proc_net_address(address: tuple[str, int]) -> str:
    """``("127.0.0.1", 8080)`` as /proc/net/tcp writes it: ``0100007F:1F90``."""
    packed = socket.inet_aton(address[0])
    return f"{int.from_bytes(packed, 'little'):08X}:{address[1]:04X}"


async def read_by_peer(stream: trio.SocketStream) -> None:
    """Wait until the process at the other end of ``stream`` (IPv4) has read
    every byte sent on it: its socket's receive queue, as /proc/net/tcp
    shows it, is empty. No event crosses the process boundary for that, so
    the queue is looked at until it is (bounded); nothing is assumed about
    how long the other process takes."""
    ours = _proc_net_address(stream.socket.getsockname())
    theirs = _proc_net_address(stream.socket.getpeername())
    with trio.fail_after(START_TIMEOUT):
        while True:
            for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
                fields = line.split()
                unread = int(fields[4].partition(":")[2], 16)
                if fields[1] == theirs and fields[2] == ours and unread == 0:
                    return
            await trio.sleep(0.01)


async def exited(pid: int) -> None:
    """Wait until ``pid`` exited, even if it is not our child: its pidfd
    turns readable then."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        with trio.fail_after(START_TIMEOUT):
            await trio.lowlevel.wait_readable(fd)
    finally:
        os.close(fd)
