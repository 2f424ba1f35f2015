"""``host:port`` both ways, and a connection's address as text: each rule
once (Go's ``net.JoinHostPort`` / ``net.SplitHostPort``).

An IPv6 literal is written in brackets whenever a port follows it (RFC 3986
3.2.2), so ``::1`` and port 80 make ``[::1]:80``, and only brackets make a
colon part of the host.
"""

from __future__ import annotations

from typing import Any

__all__ = ["format_address", "join_host_port", "split_host_port"]


def join_host_port(host: str, port: int) -> str:
    """``host:port``, with an IPv6 literal in brackets: ``[::1]:80``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str, *, allow_zero_port: bool = False) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``, brackets removed.

    Raises ``ValueError`` (with the text in the message) for a missing,
    non-numeric or out-of-range port (0 only with ``allow_zero_port``), an
    empty host, an unclosed bracket, or an IPv6 literal without brackets.
    The host is not checked any further: callers that judge hosts (the
    CONNECT policy) do that themselves.
    """
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"unclosed '[' in {text!r}")
        host, rest = text[1:end], text[end + 1 :]
        if not rest.startswith(":"):
            raise ValueError(f"missing port in {text!r}")
        port_text = rest[1:]
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"missing port in {text!r}")
        if ":" in host:
            raise ValueError(f"IPv6 addresses need brackets: {text!r}")
    if not host:
        raise ValueError(f"empty host in {text!r}")
    if not (port_text.isascii() and port_text.isdigit()) or len(port_text) > 5:
        raise ValueError(f"bad port in {text!r}")
    port = int(port_text)
    if not (0 if allow_zero_port else 1) <= port <= 65535:
        raise ValueError(f"port out of range in {text!r}")
    return host, port


def format_address(address: Any) -> str:
    """A socket address as one would write it: ``host:port`` (IPv6 in
    brackets) for TCP, the path for a named UNIX socket, ``"unix"`` for an
    unnamed one (a UNIX client almost never binds a name), ``"-"`` for none
    (a memory stream)."""
    if isinstance(address, tuple) and len(address) >= 2:
        return join_host_port(str(address[0]), int(address[1]))
    if isinstance(address, bytes):  # an abstract UNIX socket name
        address = address.decode("utf-8", "replace")
    if isinstance(address, str):
        return address or "unix"
    return "-"
