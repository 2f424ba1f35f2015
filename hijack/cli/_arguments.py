"""Argument types for the command's options: each turns one flag's text
into a value, or raises ``argparse.ArgumentTypeError`` with the reason (which
argparse prints as one line naming the flag)."""

from __future__ import annotations

import argparse
import ipaddress

from .._address import split_host_port

__all__ = [
    "listen_address",
    "parse_host_port",
    "trusted_sender",
    "user_pass",
    "via_address",
]


def parse_host_port(text: str, *, allow_zero: bool = False) -> tuple[str, int]:
    """``host:port`` or ``[v6]:port`` -> ``(host, port)``, for argparse."""
    try:
        return split_host_port(text, allow_zero_port=allow_zero)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT: {exc}") from None


def listen_address(text: str) -> tuple[str, int]:
    return parse_host_port(text, allow_zero=True)


def via_address(text: str) -> tuple[str, int] | str:
    """``HOST:PORT``, or a ``ws://`` / ``wss://`` URL (websocket mode; any of
    them, or ``http://`` / ``https://``, with ``--reverse``)."""
    if text.startswith(("ws://", "wss://", "http://", "https://")):
        return text
    return parse_host_port(text)


def user_pass(text: str) -> tuple[str, str]:
    user, sep, password = text.partition(":")
    if not sep or not user:
        raise argparse.ArgumentTypeError("expected USER:PASS")
    return user, password


def trusted_sender(text: str) -> str:
    if text != "unix":
        try:
            ipaddress.ip_network(text, strict=False)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a network (10.0.0.0/8, ::1) or 'unix', got {text!r}"
            ) from None
    return text
