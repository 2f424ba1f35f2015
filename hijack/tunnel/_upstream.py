"""What every shipped upgrade does to a stream it dialled, before relaying."""

from __future__ import annotations

from typing import Literal

import trio

from .. import Connection, copy_tcp_keepalive, proxy_header_for

__all__ = ["ProxyVersion", "check_proxy_version", "prepare_upstream"]

ProxyVersion = Literal[1, 2]


def check_proxy_version(version: int | None) -> ProxyVersion | None:
    if version not in (None, 1, 2):
        raise ValueError(f"send_proxy_protocol must be 1, 2 or None, not {version!r}")
    return version  # type: ignore[return-value]


async def prepare_upstream(
    connection: Connection,
    upstream: trio.abc.Stream,
    send_proxy_protocol: ProxyVersion | None,
) -> None:
    """TCP keepalive as on the client's connection, then, if asked, a PROXY
    protocol header naming the client: the first bytes the upstream gets.

    Errors: the upstream's (``trio.BrokenResourceError``, ``OSError``); the
    caller owns ``upstream`` and closes it."""
    copy_tcp_keepalive(connection, upstream)
    if send_proxy_protocol is not None:
        header = proxy_header_for(connection, send_proxy_protocol)
        await upstream.send_all(header)
