"""Where a reverse tunnel may publish: bind rules (``[HOST:]PORT[-PORT]``).

A rule names one bind address and a port range. ``--allow-reverse`` rules
hold for everyone the server accepts; a user's ``reverse = [...]`` in the
users file adds rules for that user alone. The defaults are the safe ones:

* no rule, no reverse tunnel;
* a rule without HOST binds loopback (``127.0.0.1``), never every address:
  ``0.0.0.0`` or ``::`` must be written out;
* the host must match exactly: a rule for ``0.0.0.0`` does not allow
  ``127.0.0.1``, nor the other way round;
* ports below 1024 only by a rule whose whole range lies below 1024
  (``127.0.0.1:80``, ``0.0.0.0:80-443``): a wide rule such as
  ``1-65535`` covers 1024-65535 only, so nobody publishes a privileged
  port by accident.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = ["DEFAULT_BIND_HOST", "BindRule", "allowed", "format_bind", "parse_bind"]

DEFAULT_BIND_HOST = "127.0.0.1"
PRIVILEGED = 1024


def _split(text: str) -> tuple[str, str]:
    """``[HOST:]REST`` with HOST an IP literal (IPv6 in brackets)."""
    text = text.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"expected [IPV6]:PORT, got {text!r}")
    elif ":" in text:
        host, _, rest = text.rpartition(":")
        if ":" in host:
            raise ValueError(f"an IPv6 host goes in brackets: [{host}]:{rest}")
    else:
        host, rest = DEFAULT_BIND_HOST, text
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"bind host must be an IP address, got {host!r}") from None
    return str(address), rest


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"expected a port 1-65535, got {text!r}")
    return int(text)


def parse_bind(text: str) -> tuple[str, int]:
    """``[HOST:]PORT`` -> ``(host, port)``; HOST defaults to 127.0.0.1."""
    host, port = _split(text)
    return host, _port(port)


def format_bind(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class BindRule:
    """``host`` (normalised IP text) and the ports ``low``-``high``."""

    host: str
    low: int
    high: int

    @classmethod
    def parse(cls, text: str) -> BindRule:
        """``[HOST:]PORT[-PORT]``; ``ValueError`` says what is wrong."""
        host, ports = _split(text)
        low_text, dash, high_text = ports.partition("-")
        low = _port(low_text)
        high = _port(high_text) if dash else low
        if high < low:
            raise ValueError(f"empty port range {ports!r}")
        return cls(host, low, high)

    def allows(self, host: str, port: int) -> bool:
        if port < PRIVILEGED and self.high >= PRIVILEGED:
            return False  # privileged ports only by a rule that stays below
        return host == self.host and self.low <= port <= self.high

    def __str__(self) -> str:
        ports = str(self.low) if self.low == self.high else f"{self.low}-{self.high}"
        return format_bind(self.host, 0).removesuffix("0") + ports


def allowed(rules: Iterable[BindRule], host: str, port: int) -> bool:
    """True if any rule allows publishing ``host:port``."""
    return any(rule.allows(host, port) for rule in rules)
