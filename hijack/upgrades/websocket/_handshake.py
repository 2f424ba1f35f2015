"""The opening handshake (RFC 6455 4.2) on a hijack Request; on HTTP/2 the
Extended CONNECT of RFC 8441 (``:protocol websocket``, answered ``200``,
the WebSocket then runs over the request's stream).

hijack checks the request itself (so each mistake gets its own status: 400,
403, 426 with ``Sec-WebSocket-Version``) and writes the ``101`` through
``request.hijack()`` (so the server records it and adds Date and Server).
Extension negotiation is the protocol's: ``ServerProtocol.process_extensions``
with `websockets`' permessage-deflate factory (RFC 7692), whose inflater is
bounded by ``max_message_size``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Collection, Iterable
from typing import Literal

from websockets.datastructures import Headers as WSHeaders
from websockets.exceptions import InvalidHandshake
from websockets.extensions import ServerExtensionFactory
from websockets.extensions.permessage_deflate import ServerPerMessageDeflateFactory
from websockets.protocol import OPEN

from ... import Headers, Request, Response
from ._errors import WebSocketHandshakeError
from ._protocol import ServerProtocol
from ._websocket import PING_INTERVAL, PING_TIMEOUT, MiB, WebSocket, protocol_logger

ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455, 1.3

Compression = Literal["deflate"] | None


def is_websocket_request(request: Request) -> bool:
    """True if the client asks for a WebSocket: ``Upgrade: websocket`` on
    HTTP/1.1, an Extended CONNECT with ``:protocol websocket`` on HTTP/2
    (RFC 8441).

    Route on this, then let :func:`accept_websocket` check the rest."""
    return request.protocol == "websocket" or "websocket" in request.headers.tokens(
        "upgrade"
    )


def check_websocket_request(
    request: Request, *, allowed_origins: Collection[str | None] | None = None
) -> None:
    """Raise :class:`WebSocketHandshakeError` if :func:`accept_websocket`
    would refuse ``request``: for a handler with work to do between the
    check and the ``101`` (a bridge dials its upstream there)."""
    _check_handshake(request, allowed_origins)


def _check_handshake(
    request: Request, allowed_origins: Collection[str | None] | None
) -> str | None:
    """Validate the upgrade request (RFC 6455 4.2.1, or RFC 8441 on
    HTTP/2); return the key (None on HTTP/2, which has none)."""
    headers = request.headers

    def bad(detail: str) -> WebSocketHandshakeError:
        return WebSocketHandshakeError(400, detail)

    if request.http_version == "2":
        # RFC 8441 4-5: an Extended CONNECT; no Upgrade, Connection or key.
        if request.method != "CONNECT" or request.protocol != "websocket":
            raise bad("a WebSocket over HTTP/2 is an Extended CONNECT (RFC 8441)")
        _check_version_and_origin(headers, allowed_origins)
        return None
    if request.method != "GET":
        raise bad("a WebSocket handshake uses GET")
    if request.http_version != "1.1":
        raise bad("a WebSocket handshake needs HTTP/1.1")
    if "content-length" in headers or "transfer-encoding" in headers:
        raise bad("a WebSocket handshake has no body")
    if "websocket" not in headers.tokens("upgrade"):
        raise bad("missing 'Upgrade: websocket'")
    if "upgrade" not in headers.tokens("connection"):
        raise bad("missing 'Connection: Upgrade'")
    _check_version_and_origin(headers, allowed_origins)
    keys = headers.get_all("sec-websocket-key")
    if len(keys) != 1:
        raise bad("need exactly one Sec-WebSocket-Key")
    # RFC 6455 4.1: the key is base64 of 16 random bytes.
    try:
        raw_key = base64.b64decode(keys[0].strip(), validate=True)
    except (binascii.Error, ValueError):
        raw_key = b""
    if len(raw_key) != 16:
        raise bad("Sec-WebSocket-Key must be base64 of 16 bytes")
    return keys[0].strip()


def _check_version_and_origin(
    headers: Headers, allowed_origins: Collection[str | None] | None
) -> None:
    versions = headers.get_all("sec-websocket-version")
    if versions != ["13"]:
        # 4.2.2: tell the client which version we speak.
        status = 426 if versions else 400
        raise WebSocketHandshakeError(
            status, "WebSocket version 13 required", [("Sec-WebSocket-Version", "13")]
        )
    if allowed_origins is not None:
        origins = headers.get_all("origin")
        origin = origins[0].strip().lower() if len(origins) == 1 else None
        allowed = {o.lower() if o is not None else None for o in allowed_origins}
        if len(origins) > 1 or origin not in allowed:
            raise WebSocketHandshakeError(403, f"origin {origin!r} not allowed")


def _accept_token(key: str) -> str:
    digest = hashlib.sha1(key.encode("ascii") + ACCEPT_GUID).digest()
    return base64.b64encode(digest).decode("ascii")


def _choose_subprotocol(request: Request, supported: Iterable[str]) -> str | None:
    """The client's most preferred subprotocol that we support, if any."""
    ours = set(supported)
    for offered in request.headers.get_all("sec-websocket-protocol"):
        for name in offered.split(","):
            if name.strip() in ours:
                return name.strip()
    return None


def _extension_factories(compression: Compression) -> list[ServerExtensionFactory]:
    """What we offer to negotiate. permessage-deflate with `websockets`'
    server defaults: 12 window bits and memLevel 5 for what we compress
    (about 64 KiB of zlib state per connection instead of 256 KiB), the
    client's own choice for what it compresses, context takeover unless
    either side asks for none (RFC 7692 7.1)."""
    if compression is None:
        return []
    if compression != "deflate":
        raise ValueError(f"unsupported compression {compression!r}: 'deflate' or None")
    return [
        ServerPerMessageDeflateFactory(
            server_max_window_bits=12,
            client_max_window_bits=12,
            compress_settings={"memLevel": 5},
        )
    ]


def _server_protocol(
    request: Request, compression: Compression, max_message_size: int
) -> tuple[ServerProtocol, str | None]:
    """An OPEN ServerProtocol with the extensions the client offered and we
    accept; the ``Sec-WebSocket-Extensions`` answer (None: none accepted)."""
    protocol = ServerProtocol(
        extensions=_extension_factories(compression),
        state=OPEN,
        max_size=max_message_size,
        logger=protocol_logger,
    )
    raw = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in request.headers.raw]
    try:
        answer, protocol.extensions = protocol.process_extensions(WSHeaders(raw))
    except InvalidHandshake as exc:
        raise WebSocketHandshakeError(
            400, f"bad Sec-WebSocket-Extensions: {exc}"
        ) from exc
    return protocol, answer


async def accept_websocket(
    request: Request,
    *,
    subprotocols: Iterable[str] = (),
    max_message_size: int = MiB,
    compression: Compression = "deflate",
    allowed_origins: Collection[str | None] | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
    close_timeout: float = 5.0,
    ping_interval: float | None = PING_INTERVAL,
    ping_timeout: float | None = PING_TIMEOUT,
) -> WebSocket:
    """Check the handshake, answer ``101 Switching Protocols``, return the
    :class:`WebSocket`.

    ``subprotocols``: the ones we speak; the client's first one among them is
    chosen (``ws.subprotocol``, None if no match). ``max_message_size``: a
    bigger incoming message closes with 1009; it bounds compressed messages
    while they inflate (a 64 KiB frame that would inflate to 64 MiB is
    refused after ``max_message_size`` bytes). ``compression``:
    ``"deflate"`` (the default) accepts permessage-deflate when the client
    offers it (browsers always do); None never negotiates it.
    ``allowed_origins``: if given, the browser's ``Origin`` must be one of
    them (put ``None`` in to admit clients that send none), else 403.
    ``close_timeout``: how long a closing handshake may take before the
    connection is cut. ``ping_interval`` / ``ping_timeout``: keepalive
    inside ``async with ws`` (see :class:`WebSocket`).

    Raises :class:`WebSocketHandshakeError` (an ``HTTPError``: 400, 403, or
    426 with ``Sec-WebSocket-Version: 13``) before anything is sent. After
    success the caller owns the WebSocket and must close it (``async with``).
    """
    if max_message_size < 1:
        raise ValueError("max_message_size must be >= 1")
    key = _check_handshake(request, allowed_origins)
    subprotocol = _choose_subprotocol(request, subprotocols)
    protocol, extensions = _server_protocol(request, compression, max_message_size)
    protocol.subprotocol = subprotocol  # type: ignore[assignment]
    # HTTP/2 (RFC 8441 5): a 200 to the Extended CONNECT opens the stream.
    response_headers = (
        []
        if key is None
        else [
            ("Upgrade", "websocket"),
            ("Connection", "Upgrade"),
            ("Sec-WebSocket-Accept", _accept_token(key)),
        ]
    )
    if extensions is not None:
        response_headers.append(("Sec-WebSocket-Extensions", extensions))
    if subprotocol is not None:
        response_headers.append(("Sec-WebSocket-Protocol", subprotocol))
    response_headers.extend(extra_headers)
    status = 200 if key is None else 101
    hijacked = await request.hijack(Response(status, response_headers))
    # Frames the client sent right behind its handshake came in with it.
    early = hijacked.take_buffered()
    if early:
        protocol.receive_data(early)
    return WebSocket(
        hijacked,
        hijacked.connection,
        protocol=protocol,
        subprotocol=subprotocol,
        max_message_size=max_message_size,
        close_timeout=close_timeout,
        ping_interval=ping_interval,
        ping_timeout=ping_timeout,
        path=request.path,
        query=request.query,
        headers=request.headers,
    )
