"""What h11 leaves to the server about a request head: pure functions of the
h11 event and the limits, so each rule is read (and tested) on its own.

h11 checks the syntax; these add the limits and the RFC rules it does not
enforce. The connection loop asks :func:`refusal_status` once per head and
answers that status (then closes) when it is not ``None``.
"""

from __future__ import annotations

import re

import h11

from ._config import Limits

__all__ = ["ambiguous_framing", "protocol_error_status", "refusal_status"]

# RFC 9112 3.2 + RFC 3986 3.2.2: Host = uri-host [ ":" port ], where uri-host
# is an IP-literal in brackets or a reg-name (possibly empty).
_HOST_VALUE = re.compile(
    rb"(?:\[[0-9A-Fa-f:.]+\]|\[v[0-9A-Fa-f]+\.[-A-Za-z0-9._~!$&'()*+,;=:]+\]"
    rb"|[-A-Za-z0-9._~!$&'()*+,;=%]*)(?::[0-9]*)?"
)


def head_size(event: h11.Request) -> int:
    """The size of the head as sent, near enough: request line and header
    lines with their separators. h11's own limit only covers heads still
    incomplete, so a big head arriving in one read is measured here."""
    size = len(event.method) + len(event.target) + 12
    return size + sum(len(k) + len(v) + 4 for k, v in event.headers)


def refusal_status(event: h11.Request, limits: Limits) -> int | None:
    """The status to refuse this head with, or None to serve it."""
    # RFC 9110 2.5: serve any 1.x as the highest 1.x we implement.
    if not event.http_version.startswith(b"1."):
        return 505
    if any(k == b"host" and not _HOST_VALUE.fullmatch(v) for k, v in event.headers):
        return 400  # RFC 9112 3.2: an invalid Host value
    if len(event.target) > limits.max_target_size:
        return 414
    if head_size(event) > limits.max_head_size:
        return 431
    lengths = [v for k, v in event.headers if k == b"content-length"]
    # h11 has checked the value is digits; a huge one is refused unread.
    if lengths and int(lengths[0]) > limits.max_body_size:
        return 413
    return None


def ambiguous_framing(event: h11.Request) -> bool:
    """RFC 9112 6.1: Content-Length together with Transfer-Encoding may be a
    smuggling attempt. h11 lets Transfer-Encoding win; we serve the request,
    then close the connection so nothing behind it is ever parsed."""
    names = {k for k, _ in event.headers}
    return b"transfer-encoding" in names and b"content-length" in names


def protocol_error_status(exc: h11.RemoteProtocolError) -> int:
    """The status for a request h11 refused. h11 hints 501 for any
    Transfer-Encoding but a single ``chunked`` (in a head or a trailer); RFC
    9112 6.3 says a request whose final coding is not chunked MUST get 400,
    then close."""
    status = exc.error_status_hint
    return 400 if status == 501 else status
