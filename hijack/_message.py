"""What a handler sees and returns: Request, Response, Headers, HTTPError."""

from __future__ import annotations

import http
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Protocol, overload

if TYPE_CHECKING:
    from ._connection import Connection
    from ._hijack import Hijacked

__all__ = ["Body", "HTTPError", "Headers", "Request", "Response"]

HeaderInput = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]
Body = bytes | AsyncIterable[bytes]
# For isinstance on the hot path: a tuple, not a union built per call.
BYTES_LIKE = (bytes, bytearray, memoryview)


class HTTPError(Exception):
    """Raise from a handler (or the body reader raises it) to answer with
    ``status`` (plus ``headers``, e.g. ``WWW-Authenticate``). The server
    answers with :meth:`response`, then closes the connection if the request
    body was not fully read. ``detail`` goes into the body: keep secrets and
    internal details out of it."""

    def __init__(
        self, status: int, detail: str = "", headers: HeaderInput | None = None
    ) -> None:
        self.status = status
        self.detail = detail
        self.headers = encode_headers(headers)
        super().__init__(
            f"{status} {phrase(status)}" + (f": {detail}" if detail else "")
        )

    def response(self) -> Response:
        """The error response hijack sends for this error (the only builder
        of error answers: the server's own, and every upgrade's): a
        plain-text body ``"<status> <phrase>\\n<detail>\\n"`` and ``headers``.
        Return it from a handler to answer without closing the connection."""
        body = f"{self.status} {phrase(self.status)}\n".encode()
        if self.detail:
            body += self.detail.encode("utf-8", "replace") + b"\n"
        content_type = (b"content-type", b"text/plain; charset=utf-8")
        return Response(self.status, [content_type, *self.headers], body)


def phrase(status: int) -> str:
    """The standard reason phrase of ``status`` ("" if it has none)."""
    return _PHRASES.get(status, "")


# Looked up per Response: HTTPStatus(status) is an enum call (~0.5 us).
_PHRASES = {status.value: status.phrase for status in http.HTTPStatus}


def encode_headers(headers: HeaderInput | None) -> list[tuple[bytes, bytes]]:
    """Headers as h11 takes them: a list of ``(name, value)`` byte pairs
    (``str`` is encoded as latin-1)."""
    if headers is None:
        return []
    # A list is the common case: skip the (slower) ABC check for Mapping.
    if type(headers) is not list and isinstance(headers, Mapping):
        headers = headers.items()
    return [
        (
            name if isinstance(name, bytes) else name.encode("latin-1"),
            value if isinstance(value, bytes) else value.encode("latin-1"),
        )
        for name, value in headers
    ]


class Headers:
    """Request headers: case-insensitive, multi-valued, in arrival order.

    ``raw`` holds h11's ``(lowercased name, value)`` byte pairs untouched.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw

    @overload
    def get(self, name: str) -> str | None: ...
    @overload
    def get(self, name: str, default: str) -> str: ...
    def get(self, name: str, default: str | None = None) -> str | None:
        """The first value of ``name`` (any case), or ``default``."""
        key = name.lower().encode("latin-1")
        for k, v in self.raw:
            if k == key:
                return v.decode("latin-1")
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name`` (any case), in arrival order."""
        key = name.lower().encode("latin-1")
        return [v.decode("latin-1") for k, v in self.raw if k == key]

    def tokens(self, name: str) -> list[str]:
        """The comma-separated tokens of every ``name`` header, lowercased
        (``Connection: keep-alive, Upgrade`` -> ``["keep-alive", "upgrade"]``)."""
        return [
            token.strip().lower()
            for value in self.get_all(name)
            for token in value.split(",")
            if token.strip()
        ]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        key = name.lower().encode("latin-1")
        return any(k == key for k, _ in self.raw)

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for k, v in self.raw:
            yield k.decode("latin-1"), v.decode("latin-1")

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return f"Headers({list(self)!r})"


class Response:
    """An HTTP response: status, headers and a body.

    ``body`` is ``bytes`` (sent with Content-Length) or an async iterable of
    ``bytes`` (sent chunked to HTTP/1.1 clients, close-delimited to 1.0).
    The server adds ``Date`` and ``Server`` unless present.
    """

    __slots__ = ("body", "headers", "reason", "status")

    def __init__(
        self,
        status: int = 200,
        headers: HeaderInput | None = None,
        body: Body = b"",
        reason: str = "",
    ) -> None:
        if not 100 <= status <= 999:
            raise ValueError(f"bad status code {status}")
        self.status = status
        self.headers = encode_headers(headers)
        self.body = body
        self.reason = reason or phrase(status)

    def __repr__(self) -> str:
        return f"<Response {self.status} {self.reason}>"


class _Exchange(Protocol):
    """What a Request needs from the connection driver (``_http.py``)."""

    async def read_body_chunk(self) -> bytes: ...

    async def hijack(self, response: Response | None) -> Hijacked: ...

    async def start_response(self, response: Response) -> None: ...

    async def send_data(self, data: bytes) -> None: ...


class Request:
    """One HTTP request, handed to the handler.

    Attributes: ``method``, ``target`` (as sent: origin-form ``/path?q``, or
    authority-form ``host:port`` for CONNECT), ``path``, ``query``,
    ``http_version`` (``"1.1"``, or ``"2"`` on HTTP/2), ``protocol`` (see
    below), ``headers`` (:class:`Headers`) and
    ``connection`` (:class:`~hijack.Connection`).

    The body is streamed: ``async for chunk in request.body()`` or
    ``await request.read()``. Reading past the server's ``max_body_size``
    raises ``HTTPError(413)``; a body slower than ``body_timeout`` raises
    ``HTTPError(408)``; a malformed one ``HTTPError(400)``.

    Error handling: these methods raise only ``HTTPError``,
    :class:`~hijack.ClientDisconnected` (the client is gone) and
    :class:`~hijack.UsageError` (misuse, nothing sent; its subclass
    :class:`~hijack.HijackError` for the hijack contract). They work only
    while the handler runs: afterwards they raise ``UsageError``
    (``hijack()``: ``HijackError``).
    """

    __slots__ = (
        "_exchange",
        "connection",
        "headers",
        "http_version",
        "method",
        "path",
        "query",
        "target",
    )

    def __init__(
        self,
        exchange: _Exchange,
        connection: Connection,
        method: str,
        target: str,
        http_version: str,
        headers: Headers,
    ) -> None:
        self._exchange = exchange
        self.connection = connection
        self.method = method
        self.target = target
        self.http_version = http_version
        self.headers = headers
        path, _, query = target.partition("?")
        self.path = path
        self.query = query

    def __repr__(self) -> str:
        return f"<Request {self.method} {self.target} connection={self.connection.id}>"

    @property
    def protocol(self) -> str | None:
        """The ``:protocol`` of an HTTP/2 Extended CONNECT (RFC 8441), e.g.
        ``"websocket"``; None on HTTP/1.1 and for other requests."""
        return getattr(self._exchange, "protocol", None)

    @property
    def has_body(self) -> bool:
        """True if the head announces a body (chunked, or a non-zero length)."""
        length = self.headers.get("content-length")
        return "transfer-encoding" in self.headers or (
            length is not None and length.strip() != "0"
        )

    def body(self) -> AsyncIterator[bytes]:
        """Iterate over the request body as it arrives."""
        return _BodyIterator(self._exchange)

    async def read(self) -> bytes:
        """Read the whole body (bounded by the server's ``max_body_size``)."""
        parts = [chunk async for chunk in self.body()]
        return b"".join(parts)

    async def hijack(self, response: Response | None = None) -> Hijacked:
        """Take the raw connection out of the HTTP layer.

        With ``response`` (a ``101 Switching Protocols``, a 2xx answer to
        CONNECT, or any head without a body) its head is written first. The
        result is a :class:`~hijack.Hijacked`: the transport plus every byte
        read ahead. See the ownership rule in :mod:`hijack._hijack`.

        Raises :class:`~hijack.HijackError` before writing anything for a
        second hijack, a hijack after the handler returned or after
        ``start_response``, a 101 to a request without ``Upgrade`` (or an
        HTTP/1.0 one), a head with a body or with CR/LF/NUL.
        """
        return await self._exchange.hijack(response)

    async def start_response(self, response: Response) -> None:
        """Send the head of ``response`` now; stream the body with
        :meth:`send_data`. The handler then returns ``None``. A 1xx, a 2xx
        to CONNECT (use :meth:`hijack`), a second response or a bad header
        raise :class:`~hijack.UsageError` before anything is sent."""
        await self._exchange.start_response(response)

    async def send_data(self, data: bytes) -> None:
        """Send a chunk of the body started with :meth:`start_response`."""
        await self._exchange.send_data(data)


class _BodyIterator:
    __slots__ = ("_exchange",)

    def __init__(self, exchange: _Exchange) -> None:
        self._exchange = exchange

    def __aiter__(self) -> _BodyIterator:
        return self

    async def __anext__(self) -> bytes:
        chunk = await self._exchange.read_body_chunk()
        if not chunk:
            raise StopAsyncIteration
        return chunk
