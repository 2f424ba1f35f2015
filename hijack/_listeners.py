"""Listeners: TCP on loopback by default, and UNIX sockets created safely.

A UNIX socket is bound inside a fresh private (0700) directory next to the
target path, given its final mode there, then renamed into place. So there is
no moment when the socket is reachable with wider permissions than asked, and
no process-wide ``umask`` juggling (which races with other threads).
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import tempfile

import trio

__all__ = ["UnixSocketListener", "open_unix_listener"]

# sun_path is 108 bytes on Linux, and it must hold the terminating NUL.
UNIX_PATH_MAX = 107


class UnixSocketListener(trio.abc.Listener[trio.SocketStream]):
    """A SocketListener on a UNIX socket path; removes its file on close
    (only if the file there is still the one it created)."""

    def __init__(self, listener: trio.SocketListener, path: str) -> None:
        self.listener = listener
        self.path = path
        info = os.stat(path)
        self._identity = (info.st_dev, info.st_ino)

    @property
    def socket(self) -> trio.socket.SocketType:
        """The listening socket."""
        return self.listener.socket

    async def accept(self) -> trio.SocketStream:
        """The next connection (trio's ``Listener`` contract)."""
        return await self.listener.accept()

    async def aclose(self) -> None:
        """Stop listening and remove the socket file if it is still ours."""
        try:
            info = os.stat(self.path)
            if (info.st_dev, info.st_ino) == self._identity:
                os.unlink(self.path)
        except FileNotFoundError:
            pass
        finally:
            await self.listener.aclose()


async def _check_existing(path: str) -> None:
    """Refuse a non-socket file and a live socket; a stale one may go."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(
            errno.EEXIST, f"{path} exists and is not a socket; not removing it"
        )
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with probe:
        try:
            await probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            return  # stale: nothing listens there
    raise OSError(errno.EADDRINUSE, f"something is already listening on {path}")


async def open_unix_listener(
    path: str | os.PathLike[str], *, mode: int = 0o660, backlog: int = 4096
) -> UnixSocketListener:
    """Listen on a UNIX socket at ``path`` with permissions ``mode``.

    Errors: ``ValueError`` if the path is longer than the OS allows,
    ``FileExistsError`` if a non-socket file is there, ``OSError(EADDRINUSE)``
    if a server is listening there. A stale socket file is replaced.
    """
    path = os.fspath(path)
    size = len(os.fsencode(path))
    if size > UNIX_PATH_MAX:
        raise ValueError(
            f"UNIX socket path is {size} bytes; the OS limit is {UNIX_PATH_MAX}: "
            f"{path!r}"
        )
    await _check_existing(path)
    private_dir, temp_path = _make_private_dir(path)
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(temp_path)
        os.chmod(temp_path, mode)
        sock.listen(backlog)
        os.rename(temp_path, path)
    except BaseException:
        sock.close()
        raise
    finally:
        _remove_private_dir(private_dir, temp_path)
    return UnixSocketListener(trio.SocketListener(sock), path)


def _make_private_dir(path: str) -> tuple[str, str]:
    directory = os.path.dirname(os.path.abspath(path))
    private_dir = tempfile.mkdtemp(prefix=".hj", dir=directory)  # mode 0700
    temp_path = os.path.join(private_dir, "s")
    if len(os.fsencode(temp_path)) > UNIX_PATH_MAX:
        os.rmdir(private_dir)
        raise ValueError(
            f"UNIX socket path {path!r} is in a directory too deep to bind "
            "safely; use a shorter directory"
        )
    return private_dir, temp_path


def _remove_private_dir(private_dir: str, temp_path: str) -> None:
    if os.path.lexists(temp_path):  # bind or chmod failed: not renamed
        os.unlink(temp_path)
    os.rmdir(private_dir)
