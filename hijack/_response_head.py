"""Response heads: the headers every response gets, and the head of a hijack
response, which is written by hand."""

from __future__ import annotations

import time
from email.utils import formatdate

from ._errors import HijackError
from ._message import BYTES_LIKE, Response

__all__ = ["date_and_server", "hijack_head", "response_headers"]

SERVER_HEADER = (b"server", b"hijack")


class _Date:
    """The Date header, formatted once a second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.value = formatdate(second, usegmt=True).encode("ascii")
        return cls.value


def date_and_server(names: set[bytes]) -> list[tuple[bytes, bytes]]:
    """The headers every response gets unless the handler set them (``names``:
    the lowercased names it set)."""
    extra = []
    if b"date" not in names:
        extra.append((b"date", _Date.now()))
    if b"server" not in names:
        extra.append(SERVER_HEADER)
    return extra


def response_headers(
    response: Response, *, add_length: bool, close: bool
) -> list[tuple[bytes, bytes]]:
    """The headers of ``response`` as sent: Date and Server unless set,
    Content-Length when ``add_length`` and the body is bytes, and
    ``Connection: close`` when ``close``."""
    headers = response.headers
    names = {k.lower() for k, _ in headers}
    extra = date_and_server(names)
    body = response.body
    if (
        add_length
        and isinstance(body, BYTES_LIKE)
        and b"content-length" not in names
        and b"transfer-encoding" not in names
        and response.status not in (204, 304)
    ):
        extra.append((b"content-length", str(len(body)).encode()))
    if close:
        extra.append((b"connection", b"close"))
    return extra + headers if extra else headers


def hijack_head(response: Response) -> bytes:
    """The head of a hijack response, plus Date and Server. Written by hand:
    the connection leaves HTTP, so h11 must not add framing headers (a raw
    stream after a 200 has no Transfer-Encoding). Raises :class:`HijackError`
    for a body or for CR, LF or NUL in the reason or a header (a response
    splitting attempt), before anything is written."""
    if not isinstance(response.body, bytes) or response.body:
        raise HijackError("a hijack response carries no body")
    reason = response.reason.encode("latin-1")
    if any(c in reason for c in b"\r\n\x00"):
        raise HijackError(f"bad reason {reason!r}")
    names = {k.lower() for k, _ in response.headers}
    lines = [b"HTTP/1.1 %d %s\r\n" % (response.status, reason)]
    for name, value in response.headers + date_and_server(names):
        if (
            not name
            or any(c in name for c in b"\r\n\x00 :\t")
            or any(c in value for c in b"\r\n\x00")
        ):
            raise HijackError(f"bad header {name!r}: {value!r}")
        lines.append(name + b": " + value + b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)
