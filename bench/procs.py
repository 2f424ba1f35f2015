"""Server processes: start one, wait for its port, read its RSS, profile it,
stop it. Each server runs in its own session (process group), so a server
that forks workers (proxy.py) is stopped whole, and only what we started."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BENCH_PY = BENCH / ".venv" / "bin" / "python"
LOGS = BENCH / "logs"
PROFILES = BENCH / "profiles"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_port(port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port} after {timeout}s")


def rss_kib(pid: int) -> int:
    """Resident set size of one process, from /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every live process in group ``pgid`` (a
    server and the workers it forked), from /proc/PID/stat."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the process just ended
        # Fields after the command name (which may hold spaces): state is
        # field 3, pgrp 5, utime 14, stime 15 (1-based).
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / CLOCK_TICKS


class ServerProc:
    """``with ServerProc(name, argv, port) as server:`` runs a server for the
    block. Output goes to ``bench/logs/<name>.log``."""

    def __init__(
        self,
        name: str,
        argv: list[str],
        port: int,
        *,
        cwd: Path = BENCH,
        profile: bool = False,
    ) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.cwd = cwd
        self.profile = profile
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = LOGS / f"{name}.log"
        self._spy: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ServerProc:
        LOGS.mkdir(exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
            )
        try:
            wait_port(self.port, 20, self.proc)
        except BaseException as exc:
            self.stop()
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{self.name} did not start: {exc}\n{tail}") from exc
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def cpu_seconds(self) -> float:
        return group_cpu_seconds(self.pid)

    def start_profile(self, label: str, seconds: float) -> None:
        """Sample this server with py-spy for ``seconds`` (it stops by
        itself); the collapsed stacks go to ``bench/profiles/<label>.txt``."""
        if not self.profile:
            return
        PROFILES.mkdir(exist_ok=True)
        spy = BENCH / ".venv" / "bin" / "py-spy"
        out = PROFILES / f"{label}.txt"
        self._spy = subprocess.Popen(
            [str(spy), "record", "--pid", str(self.pid), "--duration",
             str(max(1, round(seconds))), "--rate", "250", "--format", "raw",
             "--nonblocking", "--nolineno", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    def wait_profile(self) -> None:
        if self._spy is not None:
            try:
                self._spy.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._spy.kill()
                self._spy.wait()
            self._spy = None

    def stop(self) -> None:
        self.wait_profile()
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 3.0), (signal.SIGTERM, 3.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
