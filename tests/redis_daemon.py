"""A real redis-server (Debian's ``redis-server``) for the shared-state
tests: on a free loopback port, nothing written to disk, stopped with the
test (through the ``daemons`` fixture)."""

from __future__ import annotations

import gc
import os
import signal
import warnings
from pathlib import Path

import pytest
import trio

from .daemons import Daemons, free_port

REDIS = "/usr/bin/redis-server"
needs_redis = pytest.mark.skipif(
    not os.path.exists(REDIS), reason="redis-server not installed (make sysdeps)"
)


async def start_redis(
    daemons: Daemons, tmp: Path, *, port: int | None = None, password: str = ""
) -> tuple[trio.Process, int]:
    """redis-server on 127.0.0.1:``port`` (a free one by default), with
    ``requirepass`` when ``password`` is given; returns once it accepts."""
    port = port or free_port()
    command = [REDIS, "--port", str(port), "--bind", "127.0.0.1"]
    command += ["--save", "", "--appendonly", "no", "--dir", str(tmp)]
    if password:
        command += ["--requirepass", password]
    process = await daemons.start(
        command, listening=[("127.0.0.1", port)], stop_signal=signal.SIGTERM
    )
    return process, port


async def stop(process: trio.Process) -> None:
    """Stop one daemon now (the test goes on without it)."""
    process.send_signal(signal.SIGKILL)
    await process.wait()


def collect_coredis_garbage() -> None:
    """coredis (6.9) never closes the anyio memory streams of a connection
    that failed; collected later they warn (ResourceWarning) in whatever
    test runs then. Collect them here, where we know where they are from.
    Memory only: the leak check still sees every fd and task."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()
