"""Inherited listening sockets and the service manager's notify socket.

systemd socket activation (sd_listen_fds(3)): the manager binds and listens,
then starts us with the sockets as fds 3.. and ``LISTEN_FDS`` / ``LISTEN_PID``
in the environment. The sockets already listen: we wrap them as they are
(calling ``listen()`` again would reset a backlog the manager chose). The
worker supervisor hands its own sockets to its workers the same way.

sd_notify(3): one datagram per state change (``READY=1`` once serving,
``STOPPING=1`` when a shutdown starts) to the socket named by
``NOTIFY_SOCKET`` (a path, or ``@name`` for the abstract namespace).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable, MutableMapping

import trio

__all__ = ["listeners_from_fds", "notify", "systemd_listen_fds"]

#: sd_listen_fds(3): passed sockets start at fd 3.
SD_LISTEN_FDS_START = 3


def systemd_listen_fds(
    environ: MutableMapping[str, str] | None = None, *, unset: bool = True
) -> list[int]:
    """The fds systemd passed to this process (empty if none).

    ``LISTEN_PID`` must name this process, so a child that inherited the
    variables does not take sockets meant for its parent. With ``unset``
    (the default, as sd_listen_fds(3) recommends) the variables are removed,
    so processes we start do not see them either."""
    env = os.environ if environ is None else environ
    count_text = env.get("LISTEN_FDS", "")
    pid_text = env.get("LISTEN_PID", "")
    if unset:
        for name in ("LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"):
            env.pop(name, None)
    if not count_text or pid_text != str(os.getpid()):
        return []
    if not count_text.isdigit():
        raise ValueError(f"LISTEN_FDS is not a number: {count_text!r}")
    return list(range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count_text)))


def listeners_from_fds(fds: Iterable[int]) -> list[trio.SocketListener]:
    """Wrap inherited listening sockets (systemd, a supervisor) as trio
    listeners, without ``bind()`` or ``listen()``.

    Errors: ``ValueError`` naming the fd if one is not a listening stream
    socket (a datagram socket, a socket nobody called ``listen()`` on).

    Resource handling: the listeners own the fds from now on; closing a
    listener closes its fd.
    """
    listeners = []
    for fd in fds:
        sock = socket.socket(fileno=fd)  # family and type read from the fd
        try:
            listener = trio.SocketListener(trio.socket.from_stdlib_socket(sock))
        except ValueError as exc:
            sock.close()
            raise ValueError(f"inherited fd {fd}: {exc}") from None
        listeners.append(listener)
    return listeners


def notify(state: str, environ: MutableMapping[str, str] | None = None) -> bool:
    """Send ``state`` (e.g. ``"READY=1"``) to ``NOTIFY_SOCKET``; False when
    there is none. Errors sending are the manager's problem, not a reason
    to stop serving: they are swallowed, and the result is False."""
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # the abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False
    return True
