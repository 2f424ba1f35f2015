"""The access log: one record per HTTP exchange, on logger ``hijack.access``.

An exchange ends when its response is complete, when it is hijacked (the
status is the one sent with ``hijack()``, the duration is the time to switch
protocols; the per-tunnel lines of the upgrades cover the rest), or when the
server answers a bad head itself (method and target then ``-``).

The message is in Common Log Format (the client address first:
``connection.remote_address``, which is the balancer's client once PROXY
protocol is in use). Each log record also carries the fields as
``record.access`` (a mapping), which :class:`JSONAccessFormatter` writes as one
JSON object per line. Library users configure the logger like any other:
nothing is printed unless it (or the root logger) has a handler at INFO.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from ._connection import Connection
from ._message import Headers

__all__ = ["AccessRecord", "JSONAccessFormatter", "RequestHook", "log_access"]

access_logger = logging.getLogger("hijack.access")


@dataclass(frozen=True, slots=True)
class AccessRecord:
    """One finished HTTP exchange.

    status: the final status sent (``None`` after a bare ``hijack()``).
    body_bytes: response body bytes sent (CLF's ``%b``; the head excluded).
    started: wall-clock time (``time.time()``) the request head began.
    duration: seconds from the head's first byte to the end of the exchange.
    """

    connection: Connection
    method: str
    target: str
    http_version: str
    status: int | None
    body_bytes: int
    started: float
    duration: float
    user_agent: str = ""
    referer: str = ""
    upgrade: str = ""

    @property
    def client(self) -> str:
        """The client's address without port (CLF's ``%h``), ``-`` if none."""
        address = self.connection.remote_address
        if isinstance(address, tuple) and address:
            return str(address[0])
        return "-"  # a UNIX socket peer has no address

    @property
    def user(self) -> str:
        """The authenticated user (CLF's ``%u``): what the handler put in
        ``connection.context["hijack.user"]`` (the CONNECT proxy and the TCP
        upgrade with a users file do), ``-`` if none."""
        return str(self.connection.context.get("hijack.user") or "-")

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": _iso_time(self.started),
            "client": self.client,
            "user": self.user,
            "connection": self.connection.id,
            "method": self.method,
            "target": self.target,
            "http_version": self.http_version,
            "status": self.status,
            "bytes": self.body_bytes,
            "duration": round(self.duration, 6),
            "user_agent": self.user_agent,
            "referer": self.referer,
        }


RequestHook = Callable[[AccessRecord], None]


def make_record(
    connection: Connection,
    head: tuple[str, str, str, Headers] | None,
    status: int | None,
    body_bytes: int,
    head_started: tuple[float, float],
) -> AccessRecord:
    """The record of an exchange that began at ``head_started`` (trio clock,
    wall clock). ``head``: method, target, HTTP version and headers; None
    for a head refused before it could be parsed."""
    clock_start, wall_start = head_started
    duration = trio.current_time() - clock_start
    if head is None:
        return AccessRecord(
            connection, "-", "-", "1.1", status, body_bytes, wall_start, duration
        )
    method, target, version, headers = head
    return AccessRecord(
        connection,
        method,
        target,
        version,
        status,
        body_bytes,
        wall_start,
        duration,
        headers.get("user-agent", ""),
        headers.get("referer", ""),
        headers.get("upgrade", "").lower(),
    )


def format_clf(record: AccessRecord, user: str | None = None) -> str:
    """``host ident user [time] "request line" status bytes`` (``user``:
    the record's own unless given)."""
    when = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(record.started))
    if record.method == "-":
        line = "-"
    else:
        line = f"{record.method} {record.target} HTTP/{record.http_version}"
    # The request line is client-controlled: keep one record on one line.
    line = line.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    status = "-" if record.status is None else str(record.status)
    size = str(record.body_bytes) if record.body_bytes else "-"
    user = record.user if user is None else user
    user = user.encode("unicode_escape").decode("ascii").replace(" ", "_")
    return f'{record.client} - {user} [{when}] "{line}" {status} {size}'


def log_access(record: AccessRecord) -> None:
    """Emit ``record`` on ``hijack.access`` (a no-op unless INFO is on).

    The line and the fields are made when a handler formats the record, not
    here: a handler that writes from a thread of its own (the command's)
    takes that work off the connection's path. What could change by then
    (the user a later request on the same connection authenticates as) is
    read now."""
    if access_logger.isEnabledFor(logging.INFO):
        fields = _AccessFields(record)
        access_logger.info(fields, extra={"access": fields})


class _AccessFields(Mapping[str, Any]):
    """An access record's fields (``AccessRecord.as_dict()``), made on first
    use; ``str()`` is its Common Log Format line."""

    __slots__ = ("_fields", "_record", "_user")

    def __init__(self, record: AccessRecord) -> None:
        self._record = record
        self._user = record.user
        self._fields: dict[str, Any] | None = None

    def _made(self) -> dict[str, Any]:
        if self._fields is None:
            self._fields = {**self._record.as_dict(), "user": self._user}
        return self._fields

    def __getitem__(self, key: str) -> Any:
        return self._made()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._made())

    def __len__(self) -> int:
        return len(self._made())

    def __str__(self) -> str:
        return format_clf(self._record, self._user)


class JSONAccessFormatter(logging.Formatter):
    """One JSON object per access record (``--access-log-format json``)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "access", None)
        if fields is None:
            return super().format(record)
        return json.dumps(dict(fields), separators=(",", ":"))


def _iso_time(when: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    return f"{seconds}.{int(when % 1 * 1000):03d}Z"
