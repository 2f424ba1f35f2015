"""stdin/stdout as one tunnel end, for ``hijack forward --listen -`` (ssh's
``ProxyCommand``).

This changes the whole process: fd 1 is pointed at /dev/null when the tunnel
ends, and trio makes fds 0 and 1 non-blocking while it uses them (the flag is
shared with every duplicate of the descriptor). So it belongs to the command,
not to the library: a program embedding hijack keeps its stdio as it was.
"""

from __future__ import annotations

import os

import trio

from .._relay import relay
from ..client.forward import Mode, open_tunnel
from ..tunnel.parent_proxy import ParentProxy

__all__ = ["forward_stdio"]


class _Stdout(trio.abc.SendStream):
    """Our stdout, through a duplicate of fd 1 (fd 1 itself must stay valid
    for ``sys.stdout``). Closing it also points fd 1 at /dev/null: the reader
    must see EOF now, not at exit. ssh, for one, keeps our stdin open until
    it sees EOF on our stdout, and we would wait for each other forever."""

    def __init__(self) -> None:
        self._out = trio.lowlevel.FdStream(os.dup(1))
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._out.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._out.wait_send_all_might_not_block()

    async def aclose(self) -> None:
        # Before any await: aclose_forcefully() runs us cancelled.
        if not self._closed:
            self._closed = True
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                os.dup2(devnull, 1)
            finally:
                os.close(devnull)
        await self._out.aclose()


async def forward_stdio(
    via: tuple[str, int] | str,
    target: tuple[str, int] | None,
    mode: Mode,
    *,
    auth: tuple[str, str] | None = None,
    upstream_proxy: ParentProxy | None = None,
) -> None:
    """Open one tunnel and relay it to stdin/stdout, until both directions
    reach EOF.

    stdin EOF is passed on as ``send_eof`` on the tunnel. Tunnel EOF closes
    stdout for real: fd 1 is pointed at /dev/null so the reader sees EOF at
    once. fds 0 and 1 must be pipes, sockets or ttys (not regular files);
    they are used through duplicates, whose shared blocking flag is restored
    on return. Raises ``TunnelError`` or ``OSError`` if the tunnel cannot be
    opened; a cancel closes the tunnel.
    """
    was_blocking = os.get_blocking(0), os.get_blocking(1)
    tunnel = await open_tunnel(
        via, target, mode, auth=auth, upstream_proxy=upstream_proxy
    )
    stdin: trio.lowlevel.FdStream | None = None
    stdout: _Stdout | None = None
    try:
        stdin = trio.lowlevel.FdStream(os.dup(0))
        stdout = _Stdout()
        await relay(tunnel, trio.StapledStream(stdout, stdin))
    finally:
        # relay() closed everything if it ran; this covers a failed dup.
        with trio.CancelScope(shield=True):
            for stream in (tunnel, stdin, stdout):
                if stream is not None:
                    await trio.aclose_forcefully(stream)
        os.set_blocking(0, was_blocking[0])
        os.set_blocking(1, was_blocking[1])
