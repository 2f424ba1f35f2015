"""Real daemons the tests run on loopback (HAProxy, nginx): a generated
config, the process in the test's nursery, ready once its ports accept,
stopped (signal, then SIGKILL after a bound) at the end of the test."""

from __future__ import annotations

import functools
import os
import random
import signal
import socket
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

__all__ = [
    "Daemons",
    "free_port",
    "nginx_http_temp_paths",
    "nginx_main_config",
    "wait_listening",
]

#: Real seconds, bounds on a loaded 2-core box: a daemon's start (a Python
#: one included), then its stop before SIGKILL.
START_TIMEOUT = 30
STOP_TIMEOUT = 10


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (for a config written before the
    daemon that will listen on it starts).

    Picked below the kernel's ephemeral range: a port from ``bind(0)`` is an
    ephemeral one, and until the daemon binds it any outgoing connection
    (``wait_listening``'s own probes included) may take it as its source
    port, and the daemon's bind then fails with EADDRINUSE (seen once)."""
    low = _ephemeral_low()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(100):
        port = random.randrange(max(1024, low - 12_000), low)
        with socket.socket(family) as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port below the ephemeral range ({low})")


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ports:
            return int(ports.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


async def wait_listening(port: int, host: str = "127.0.0.1") -> None:
    """A daemon has bound ``port`` (bounded: a start-up, not timing logic)."""
    for _ in range(START_TIMEOUT * 40):
        try:
            stream = await trio.open_tcp_stream(host, port)
        except OSError:
            await trio.sleep(0.025)
            continue
        await stream.aclose()
        return
    raise AssertionError(f"nothing listened on {host}:{port} in {START_TIMEOUT} s")


class Daemons:
    """The daemons one test starts (in ``nursery``); ``stop()`` ends them
    all (the ``daemons`` fixture calls it at teardown)."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery
        self._running: list[tuple[trio.Process, int]] = []

    async def start(
        self,
        command: Sequence[str],
        *,
        listening: Sequence[tuple[str, int]] = (),
        stop_signal: int = signal.SIGTERM,
        **kwargs: Any,
    ) -> trio.Process:
        """Run ``command`` (output discarded unless ``kwargs`` say where);
        return once every ``(host, port)`` in ``listening`` accepts. It is
        stopped with ``stop_signal``."""
        kwargs.setdefault("stdout", subprocess.DEVNULL)
        kwargs.setdefault("stderr", subprocess.DEVNULL)
        process: trio.Process = await self._nursery.start(
            functools.partial(trio.run_process, list(command), check=False, **kwargs)
        )
        self._running.append((process, stop_signal))
        for host, port in listening:
            await wait_listening(port, host)
        return process

    async def start_nginx(
        self, nginx: str, tmp: Path, config: str, **kwargs: Any
    ) -> trio.Process:
        """nginx (the binary ``nginx``) in the foreground from ``config``
        (its ``events``/``stream``/``http`` blocks, after
        ``nginx_main_config``), every file it writes in ``tmp``, errors in
        ``tmp/error.log``; ``kwargs`` as for :meth:`start`."""
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_main_config(tmp) + config)
        command = [nginx, "-p", str(tmp), "-c", str(conf)]
        return await self.start([*command, "-e", str(tmp / "error.log")], **kwargs)

    async def stop(self) -> None:
        for process, stop_signal in self._running:
            if process.returncode is None:
                process.send_signal(stop_signal)
            with trio.move_on_after(STOP_TIMEOUT) as waited:
                await process.wait()
            if waited.cancelled_caught:
                process.kill()
                await process.wait()
        self._running.clear()


def nginx_main_config(tmp: Path) -> str:
    """nginx's main context for a test: foreground, every file it writes in
    ``tmp`` (with ``-p tmp``), nothing read from /etc. Put it before the
    ``events``, ``stream`` and ``http`` blocks; ``nginx_http_temp_paths``
    goes inside ``http``."""
    # A master running as root hands the work to an unprivileged user that
    # could not enter this test's private tmp dir.
    user = "user root;\n" if os.geteuid() == 0 else ""
    return (
        "daemon off;\nworker_processes 1;\n"
        f"pid {tmp}/nginx.pid;\nerror_log {tmp}/error.log info;\n{user}"
    )


def nginx_http_temp_paths(tmp: Path) -> str:
    """The ``http`` block's temp dirs, in ``tmp`` (the defaults are under
    /var/lib/nginx)."""
    return "".join(
        f"    {name}_temp_path {tmp}/{name};\n"
        for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
