"""Argument types for the command's options: each turns one flag's text
into a value, or raises ``argparse.ArgumentTypeError`` with the reason (which
argparse prints as one line naming the flag)."""

from __future__ import annotations

import argparse
import ipaddress
import math

from .._address import split_host_port

__all__ = [
    "host_or_net",
    "listen_address",
    "non_negative_float",
    "parse_host_port",
    "port_number",
    "positive_float",
    "positive_int",
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


def positive_int(text: str) -> int:
    """A count that must be at least 1 (``--workers``, ``--max-tunnels``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a whole number, got {text!r}"
        ) from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def port_number(text: str) -> int:
    """A TCP port, 1 to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a port number, got {text!r}"
        ) from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, got {value}")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite time, got {text!r}")
    return value


def positive_float(text: str) -> float:
    """A time that must be above 0 (``--idle-timeout``)."""
    value = _seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """A time that may be 0 (``--shutdown-grace 0``: stop at once)."""
    value = _seconds(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def host_or_net(text: str) -> str:
    """One ``--allow``/``--deny``/``--direct`` entry, checked by the same
    parser the policy uses, so a bad one is refused here and not later."""
    from ..tunnel.policy import HostRules

    try:
        HostRules.parse([text])
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text
