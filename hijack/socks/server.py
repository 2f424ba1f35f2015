"""A SOCKS5 server (RFC 1928, RFC 1929) as a stream handler of the core
:class:`~hijack.Server`.

``Server(handler, sniff=SocksServer(...).sniff_all)`` serves SOCKS5 only;
``sniff=SocksServer(...).sniff`` serves SOCKS5 and HTTP on one port (a SOCKS5
client's first byte is 0x05, an HTTP request's a letter). Each connection
gets a :class:`~hijack.Hijacked` stream, so the server's registry, shutdown
grace, ``on_state`` hooks, PROXY protocol (``remote_address``) and relay hub
work as for a hijacked HTTP connection.

What a connection goes through (each step bounded by ``handshake_timeout``
until the request is read):

1. Method negotiation: username/password (RFC 1929) when there are users,
   else "no authentication". A client that offers neither gets ``05 FF``.
2. Credentials, checked by :meth:`Users.check_basic` (same hashes, same
   constant time, unknown names as slow as known ones) or against ``auth``.
3. The request. CONNECT: the destination (IPv4, IPv6 or a name, which hijack
   resolves) is judged by the user's :class:`ConnectPolicy`, limits are
   taken, a checked address is dialled (directly or through ``routes``),
   then ``00`` with the bound address, and the bytes are relayed (the relay
   hub when both ends are plain sockets). UDP ASSOCIATE: see
   :mod:`hijack.socks.udp`. BIND: ``07``.

Replies: ``02`` the policy, the user's rules or a limit refuses; ``03``
network unreachable; ``04`` host unreachable, a name that does not resolve
or is not a host name; ``05`` connection refused; ``06`` no connection
within ``connect_timeout``; ``07`` BIND or an unknown command; ``08`` an
unknown address type; ``01`` anything else (a parent proxy failing, the
server at ``max_tunnels``). Garbage, a wrong version or a slow handshake:
closed without a reply. One INFO line per request on ``hijack.socks``.
"""

from __future__ import annotations

import contextvars
import errno
import hashlib
import hmac
import logging
from base64 import b64encode
from collections.abc import Callable
from typing import NoReturn, TypeVar

import trio

from .. import Hijacked, StreamHandler, join_host_port
from ..tunnel._dial import Dialer, dial_tcp
from ..tunnel._upstream import ProxyVersion
from ..tunnel.lifecycle import (
    Outcome,
    TunnelBusy,
    TunnelHook,
    TunnelLife,
    TunnelRecord,
    TunnelTimeout,
    client_host,
)
from ..tunnel.limits import TooManyTunnels, TunnelLease, TunnelLimits
from ..tunnel.parent_proxy import ParentProxyError, Routes
from ..tunnel.policy import (
    BadConnectTarget,
    ConnectError,
    ConnectPolicy,
    ConnectRefused,
    IPAddress,
    Resolver,
)
from ..tunnel.users import User, Users
from . import codec
from ._session import Answered, ClientGone, Refused, send, send_quietly
from .codec import AuthMethod, Command, Reply, SocksError, SocksRequest

__all__ = ["SocksServer"]

logger = logging.getLogger("hijack.socks")

DEFAULT_POLICY = ConnectPolicy()
READ_SIZE = 4096
M = TypeVar("M")

# errno of a failed connect -> the reply that says it.
_ERRNO_REPLIES = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
}
# The connects that failed in this task's tunnel (for the reply code): set
# around each tunnel, appended to by the dialer the life cycle calls.
_FAILED: contextvars.ContextVar[list[OSError] | None] = contextvars.ContextVar(
    "socks_failed_connects", default=None
)


class SocksServer:
    """SOCKS5 (CONNECT, UDP ASSOCIATE; BIND answered ``07``) with hijack's
    destination policy, users, limits and parent proxies.

    ``users`` (a :class:`Users`) requires RFC 1929 username/password and
    applies each user's rules; ``auth=(user, password)`` requires one fixed
    pair; neither: no authentication (the command allows that only on a
    loopback listener or with an explicit flag). ``connect_timeout`` covers
    resolving and dialling, ``handshake_timeout`` everything before the
    request is read (a slow client is closed without a reply),
    ``idle_timeout`` a relay with no byte either way. ``udp=False`` answers
    UDP ASSOCIATE with ``07``; ``udp_idle_timeout`` ends an association with
    no datagram either way. ``max_tunnels`` bounds CONNECT tunnels and UDP
    associations open at once.

    CONNECT tunnels run the one tunnel life cycle
    (:class:`~hijack.tunnel.lifecycle.TunnelLife`: judge, limit, dial,
    answer, hub or relay, one end record); every request, refused ones and
    UDP associations included, ends in one
    :class:`~hijack.tunnel.lifecycle.TunnelRecord` (kind ``socks5`` or
    ``socks5-udp``): one log line on ``hijack.socks`` and one
    ``on_tunnel(record)`` call (metrics).
    """

    def __init__(
        self,
        policy: ConnectPolicy = DEFAULT_POLICY,
        *,
        users: Users | None = None,
        auth: tuple[str, str] | None = None,
        connect_timeout: float = 10.0,
        handshake_timeout: float = 10.0,
        idle_timeout: float | None = 300.0,
        max_tunnels: int = 1000,
        resolver: Resolver = trio.socket.getaddrinfo,
        dial: Dialer = dial_tcp,
        routes: Routes | None = None,
        limits: TunnelLimits | None = None,
        send_proxy_protocol: ProxyVersion | None = None,
        on_tunnel: TunnelHook | None = None,
        hand_over: bool = True,
        udp: bool = True,
        udp_idle_timeout: float = 60.0,
    ) -> None:
        if users is not None and auth is not None:
            raise ValueError("give auth (one user) or users, not both")
        if max_tunnels < 1:
            raise ValueError("max_tunnels must be >= 1")
        self.policy = policy
        self.users = users
        self.handshake_timeout = handshake_timeout
        self.max_tunnels = max_tunnels
        self.udp = udp
        self.udp_idle_timeout = udp_idle_timeout
        self._resolver = resolver
        self._dial = dial
        # max_tunnels is checked here: it counts UDP associations too.
        self.life = TunnelLife(
            "socks5",
            logger,
            limits=limits,
            routes=routes,
            connect_timeout=connect_timeout,
            idle_timeout=idle_timeout,
            send_proxy_protocol=send_proxy_protocol,
            on_tunnel=on_tunnel,
            hand_over=hand_over,
            resolver=resolver,
            dial=self._dial_noting_failures,
        )
        self._credentials: bytes | None = None
        if auth is not None:
            # Compare digests: constant time, and the length leaks nothing.
            self._credentials = hashlib.sha256(f"{auth[0]}:{auth[1]}".encode()).digest()
        self._associations = 0

    @property
    def connect_timeout(self) -> float:
        return self.life.connect_timeout

    @property
    def limits(self) -> TunnelLimits | None:
        return self.life.limits

    @property
    def open_tunnels(self) -> int:
        """CONNECT tunnels and UDP associations being set up or open."""
        return self.life.open_tunnels + self._associations

    @property
    def requires_auth(self) -> bool:
        return self.users is not None or self._credentials is not None

    # -- sniffers for Server(sniff=...) ---------------------------------------

    def sniff(self, first: bytes) -> StreamHandler | None:
        """Take connections that begin like SOCKS5 (0x05); leave the rest to
        HTTP."""
        return self if first[:1] == b"\x05" else None

    def sniff_all(self, first: bytes) -> StreamHandler | None:
        """Take every connection (a SOCKS-only port)."""
        return self

    # -- one connection ----------------------------------------------------

    async def __call__(self, stream: Hijacked) -> None:
        record = self.life.begin(stream.connection, "-")
        reader = _Reader(stream)
        try:
            # A bare scope, not trio.fail_after (a generator context manager
            # on every tunnel's set-up path).
            deadline = trio.current_time() + self.handshake_timeout
            with trio.CancelScope(deadline=deadline) as handshake:
                user = await self._negotiate(stream, reader, record)
                request = await reader.read(codec.parse_request, codec.MAX_REQUEST)
            if handshake.cancelled_caught:
                raise trio.TooSlowError
            record.target = join_host_port(request.host, request.port)
            record.port = request.port
            if user is not None:
                record.user = user.name
            await self._serve_request(stream, reader, request, user, record)
        except trio.TooSlowError:
            record.outcome = Outcome.BAD_REQUEST
            record.reason = "handshake too slow"
        except SocksError as exc:
            record.outcome = Outcome.BAD_REQUEST
            record.reason = str(exc)
            if exc.reply is not None:
                await send_quietly(stream, codec.encode_reply(exc.reply))
        except Refused as exc:
            record.refuse(exc.status, exc.reason)
            await send_quietly(stream, codec.encode_reply(exc.reply))
        except ClientGone as exc:
            record.reason = str(exc)
        except Answered:
            pass
        finally:
            self.life.end(record)

    async def _negotiate(
        self, stream: Hijacked, reader: _Reader, record: TunnelRecord
    ) -> User | None:
        """Method negotiation and credentials: the user (None without
        users); :class:`Answered` when the client was refused."""
        methods = await reader.read(codec.parse_greeting, codec.MAX_GREETING)
        if not self.requires_auth:
            if AuthMethod.NO_AUTH not in methods:
                return await self._no_method(stream, record)
            await send(stream, codec.encode_method(AuthMethod.NO_AUTH))
            return None
        if AuthMethod.USERPASS not in methods:
            return await self._no_method(stream, record)
        await send(stream, codec.encode_method(AuthMethod.USERPASS))
        credentials = await reader.read(codec.parse_credentials, codec.MAX_USERPASS)
        ok, user = await self._check(credentials)
        if not ok:
            record.refuse(407, "bad credentials")
            record.user = credentials.username.decode("utf-8", "replace")
            await send_quietly(stream, codec.encode_auth_status(False))
            raise Answered
        await send(stream, codec.encode_auth_status(True))
        return user

    async def _no_method(self, stream: Hijacked, record: TunnelRecord) -> NoReturn:
        record.refuse(
            407,
            "client offers no username/password"
            if self.requires_auth
            else "client offers no method without authentication",
        )
        await send_quietly(stream, codec.encode_method(AuthMethod.NO_ACCEPTABLE))
        raise Answered

    async def _check(self, credentials: codec.Credentials) -> tuple[bool, User | None]:
        """Whether the credentials are good, and the user they name (None
        with ``auth``)."""
        name, password = credentials.username, credentials.password
        token = b64encode(name + b":" + password).decode("ascii")
        if self.users is not None:
            if b":" in name:  # no user name has one: it would split wrongly
                return False, None
            user = await self.users.check_basic(f"Basic {token}")
            return user is not None, user
        assert self._credentials is not None
        digest = hashlib.sha256(name + b":" + password).digest()
        return hmac.compare_digest(digest, self._credentials), None

    async def _serve_request(
        self,
        stream: Hijacked,
        reader: _Reader,
        request: SocksRequest,
        user: User | None,
        record: TunnelRecord,
    ) -> None:
        if request.command is Command.CONNECT:
            await self._connect(stream, reader, request, user, record)
        elif request.command is Command.UDP_ASSOCIATE and self.udp:
            await self._associate(stream, request, user, record)
        else:
            raise Refused(
                Reply.COMMAND_NOT_SUPPORTED,
                f"{request.command.name} is not supported",
                400,
            )

    def _policy_for(self, user: User | None) -> ConnectPolicy:
        if self.users is not None and user is not None:
            return self.users.policy_for(user, self.policy)
        return self.policy

    # -- CONNECT -----------------------------------------------------------------

    async def _connect(
        self,
        stream: Hijacked,
        reader: _Reader,
        request: SocksRequest,
        user: User | None,
        record: TunnelRecord,
    ) -> None:
        """One tunnel through the life cycle; its refusals become replies."""

        async def answer(upstream: trio.abc.Stream) -> trio.abc.Stream:
            local = _local_address(upstream)
            await send(stream, codec.encode_reply(Reply.SUCCEEDED, *local))
            early = reader.leftover()
            if early:  # an optimistic client's first bytes
                await upstream.send_all(early)
            return stream

        failed: list[OSError] = []
        token = _FAILED.set(failed)
        try:
            if self.open_tunnels >= self.max_tunnels:
                raise TunnelBusy(f"{self.open_tunnels} tunnels open")
            await self.life.run(
                record,
                stream.connection,
                host=request.host,
                port=request.port,
                policy=self._policy_for(user),
                user=user,
                answer=answer,
            )
        except ConnectError as exc:
            record.refuse(exc.status, exc.reason)
            raise Refused(_reply_for(exc, failed), exc.reason, exc.status) from None
        finally:
            _FAILED.reset(token)

    async def _dial_noting_failures(
        self, address: IPAddress, port: int
    ) -> trio.abc.Stream:
        """The dialer, remembering why a connect failed (for the reply)."""
        try:
            return await self._dial(address, port)
        except OSError as exc:
            failed = _FAILED.get()
            if failed is not None:
                failed.append(exc)
            raise

    # -- UDP ASSOCIATE ---------------------------------------------------------------

    async def _associate(
        self,
        stream: Hijacked,
        request: SocksRequest,
        user: User | None,
        record: TunnelRecord,
    ) -> None:
        """An association counts as a tunnel (``max_tunnels``, the client's
        and the user's limits) while it lives."""
        from .udp import serve_association

        record.kind = "socks5-udp"
        if self.open_tunnels >= self.max_tunnels:
            raise Refused(
                Reply.GENERAL_FAILURE, f"{self.open_tunnels} tunnels open", 503
            )
        lease: TunnelLease | None = None
        if self.life.limits is not None:
            try:
                lease = await self.life.limits.acquire_async(
                    client_host(stream.connection), user
                )
            except ConnectError as exc:  # 429, or 503: the shared state is away
                reply = (
                    Reply.NOT_ALLOWED if exc.status == 429 else Reply.GENERAL_FAILURE
                )
                raise Refused(reply, exc.reason, exc.status) from None
        self._associations += 1
        try:
            await serve_association(
                stream,
                request,
                self._policy_for(user),
                record,
                resolver=self._resolver,
                resolve_timeout=self.connect_timeout,
                idle_timeout=self.udp_idle_timeout,
            )
        finally:
            self._associations -= 1
            if lease is not None:
                lease.release()


def _reply_for(exc: ConnectError, failed: list[OSError]) -> Reply:
    """The reply code that says why a CONNECT failed."""
    if isinstance(exc, ConnectRefused | TooManyTunnels):
        return Reply.NOT_ALLOWED
    if isinstance(exc, TunnelTimeout):
        return Reply.TTL_EXPIRED
    if isinstance(exc, BadConnectTarget):
        return Reply.HOST_UNREACHABLE
    if isinstance(exc, TunnelBusy | ParentProxyError):
        return Reply.GENERAL_FAILURE
    if failed and failed[-1].errno in _ERRNO_REPLIES:
        return _ERRNO_REPLIES[failed[-1].errno]
    return Reply.HOST_UNREACHABLE  # no address, or none answered


class _Reader:
    """Reads whole SOCKS5 messages from a stream: never more bytes kept than
    one message's bound, the bytes after the last message kept for later."""

    __slots__ = ("_buffer", "_stream")

    def __init__(self, stream: trio.abc.Stream) -> None:
        self._stream = stream
        self._buffer = bytearray()

    async def read(
        self, parse: Callable[[bytearray], tuple[M, int] | None], bound: int
    ) -> M:
        """The next message ``parse`` (a ``codec.parse_*``) reads."""
        while True:
            parsed = parse(self._buffer)
            if parsed is not None:
                message, size = parsed
                del self._buffer[:size]
                return message
            if len(self._buffer) >= bound:  # pragma: no cover - parsers bound it
                raise SocksError("message longer than its bound")
            try:
                data = await self._stream.receive_some(READ_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
                raise ClientGone(f"client gone: {exc}") from None
            if not data:
                raise ClientGone("client closed during the handshake")
            self._buffer += data

    def leftover(self) -> bytes:
        """The bytes received after the last message (and forget them)."""
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


def _local_address(upstream: trio.abc.Stream) -> tuple[str, int]:
    """BND.ADDR and BND.PORT: the upstream socket's own address."""
    if isinstance(upstream, trio.SocketStream):
        sock = upstream.socket
        try:
            host, port = sock.getsockname()[:2]
            return str(host), int(port)
        except (OSError, ValueError):
            pass
    return "0.0.0.0", 0
