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

import errno
import functools
import hashlib
import hmac
import logging
from base64 import b64encode
from collections.abc import Callable
from typing import NoReturn, TypeVar

import trio

from .. import (
    Hijacked,
    HubTunnel,
    StreamHandler,
    Throttle,
    TunnelHook,
    copy_tcp_keepalive,
    join_host_port,
    proxy_header_for,
    relay,
)
from ..tunnel._dial import Dialer, dial_tcp, open_checked
from ..tunnel._upstream import ProxyVersion, check_proxy_version
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
from ._session import Answered, ClientGone, Refused, Session, send, send_quietly
from .codec import AuthMethod, Command, Reply, SocksError, SocksRequest

__all__ = ["SocksServer"]

logger = logging.getLogger("hijack.socks")

DEFAULT_POLICY = ConnectPolicy()
NO_THROTTLE: tuple[Throttle | None, Throttle | None] = (None, None)
READ_SIZE = 4096
M = TypeVar("M")

# errno of a failed connect -> the reply that says it.
_ERRNO_REPLIES = {
    errno.ECONNREFUSED: Reply.CONNECTION_REFUSED,
    errno.ENETUNREACH: Reply.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: Reply.HOST_UNREACHABLE,
    errno.ETIMEDOUT: Reply.TTL_EXPIRED,
}


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
    no datagram either way. ``on_tunnel(outcome, port, stats, user)`` is
    called when each request ends (metrics), as on
    :class:`~hijack.upgrades.connect.ConnectProxy`.
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
        self.connect_timeout = connect_timeout
        self.handshake_timeout = handshake_timeout
        self.idle_timeout = idle_timeout
        self.max_tunnels = max_tunnels
        self.routes = routes
        self.limits = limits
        self.send_proxy_protocol = check_proxy_version(send_proxy_protocol)
        self.on_tunnel = on_tunnel
        self.hand_over = hand_over
        self.udp = udp
        self.udp_idle_timeout = udp_idle_timeout
        self._resolver = resolver
        self._dial = dial
        self._credentials: bytes | None = None
        if auth is not None:
            # Compare digests: constant time, and the length leaks nothing.
            self._credentials = hashlib.sha256(f"{auth[0]}:{auth[1]}".encode()).digest()
        self._open = 0

    @property
    def open_tunnels(self) -> int:
        """CONNECT tunnels and UDP associations being set up or open."""
        return self._open

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
        session = Session(
            client=_format_client(stream.connection.remote_address),
            started=trio.current_time(),
        )
        reader = _Reader(stream)
        try:
            with trio.fail_after(self.handshake_timeout):
                user = await self._negotiate(stream, reader, session)
                request = await reader.read(codec.parse_request, codec.MAX_REQUEST)
            session.command = request.command.name
            session.target = join_host_port(request.host, request.port)
            session.port = request.port
            await self._serve_request(stream, reader, request, user, session)
        except trio.TooSlowError:
            session.outcome = "timeout"
            session.reason = "handshake too slow"
        except SocksError as exc:
            session.outcome = "bad-request"
            session.reason = str(exc)
            if exc.reply is not None:
                await send_quietly(stream, codec.encode_reply(exc.reply))
        except Refused as exc:
            session.outcome = exc.outcome
            session.reason = exc.reason
            await send_quietly(stream, codec.encode_reply(exc.reply))
        except ClientGone as exc:
            session.outcome = "client-gone"
            session.reason = str(exc)
        except Answered:
            pass
        finally:
            if not session.handed:
                self._log(session)

    async def _negotiate(
        self, stream: Hijacked, reader: _Reader, session: Session
    ) -> User | None:
        """Method negotiation and credentials: the user (None without
        users); :class:`Answered` when the client was refused."""
        methods = await reader.read(codec.parse_greeting, codec.MAX_GREETING)
        if not self.requires_auth:
            if AuthMethod.NO_AUTH not in methods:
                return await self._no_method(stream, session)
            await send(stream, codec.encode_method(AuthMethod.NO_AUTH))
            return None
        if AuthMethod.USERPASS not in methods:
            return await self._no_method(stream, session)
        await send(stream, codec.encode_method(AuthMethod.USERPASS))
        credentials = await reader.read(codec.parse_credentials, codec.MAX_USERPASS)
        ok, user = await self._check(credentials)
        if not ok:
            session.outcome = "auth-failed"
            session.reason = "bad credentials"
            session.user = credentials.username.decode("utf-8", "replace")
            await send_quietly(stream, codec.encode_auth_status(False))
            raise Answered
        await send(stream, codec.encode_auth_status(True))
        if user is not None:
            session.user = user.name
        return user

    async def _no_method(self, stream: Hijacked, session: Session) -> NoReturn:
        session.outcome = "auth-failed"
        session.reason = (
            "client offers no username/password"
            if self.requires_auth
            else "client offers no method without authentication"
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
        session: Session,
    ) -> None:
        if request.command is Command.CONNECT:
            await self._connect(stream, reader, request, user, session)
        elif request.command is Command.UDP_ASSOCIATE and self.udp:
            from .udp import serve_association

            policy = self._policy_for(user)
            with self._lease(stream, user):
                await serve_association(
                    stream,
                    request,
                    policy,
                    session,
                    resolver=self._resolver,
                    resolve_timeout=self.connect_timeout,
                    idle_timeout=self.udp_idle_timeout,
                )
        else:
            raise Refused(
                Reply.COMMAND_NOT_SUPPORTED,
                f"{request.command.name} is not supported",
                "unsupported",
            )

    def _policy_for(self, user: User | None) -> ConnectPolicy:
        if self.users is not None and user is not None:
            return self.users.policy_for(user, self.policy)
        return self.policy

    def _lease(self, stream: Hijacked, user: User | None) -> _Counted:
        """Count one tunnel or association (server-wide and in ``limits``);
        raise :class:`Refused` at a bound."""
        if self._open >= self.max_tunnels:
            raise Refused(Reply.GENERAL_FAILURE, f"{self._open} tunnels open", "busy")
        lease = None
        if self.limits is not None:
            try:
                lease = self.limits.acquire(
                    _client_host(stream.connection.remote_address), user
                )
            except TooManyTunnels as exc:
                raise Refused(Reply.NOT_ALLOWED, exc.reason, "limited") from None
        self._open += 1
        return _Counted(self, lease)

    # -- CONNECT -----------------------------------------------------------------

    async def _connect(
        self,
        stream: Hijacked,
        reader: _Reader,
        request: SocksRequest,
        user: User | None,
        session: Session,
    ) -> None:
        policy = self._policy_for(user)
        counted = self._lease(stream, user)
        try:
            upstream = await self._open_upstream(stream, request, policy, session)
            try:
                local = _local_address(upstream)
                await send(stream, codec.encode_reply(Reply.SUCCEEDED, *local))
                early = reader.leftover()
                if early:  # an optimistic client's first bytes
                    await upstream.send_all(early)
            except BaseException:
                await trio.aclose_forcefully(upstream)
                raise
            throttle = NO_THROTTLE if counted.lease is None else counted.lease.throttle
            if (
                self.hand_over
                and throttle == NO_THROTTLE
                and stream.can_hand_to_hub(upstream)
            ):
                stream.hand_to_hub(
                    upstream,
                    idle_timeout=self.idle_timeout,
                    stats=session.stats,
                    on_close=functools.partial(self._hub_ended, session, counted),
                )
                session.handed = True
                return
            await relay(
                stream,
                upstream,
                idle_timeout=self.idle_timeout,
                stats=session.stats,
                throttle=throttle,
            )
            session.outcome = "idle-timeout" if session.stats.timed_out else "ok"
        finally:
            if not session.handed:
                counted.release()

    def _hub_ended(self, session: Session, counted: _Counted, ended: HubTunnel) -> None:
        counted.release()
        session.outcome = {"idle-timeout": "idle-timeout", "closed": "error"}.get(
            ended.reason, "ok"
        )
        self._log(session)

    async def _open_upstream(
        self,
        stream: Hijacked,
        request: SocksRequest,
        policy: ConnectPolicy,
        session: Session,
    ) -> trio.abc.Stream:
        """Judge, resolve once, dial a checked address: the stream, or
        :class:`Refused` with the reply that says why."""
        failures: list[OSError] = []

        async def dial(address: IPAddress, port: int) -> trio.abc.Stream:
            try:
                return await self._dial(address, port)
            except OSError as exc:
                failures.append(exc)
                raise

        host = request.host
        try:
            with trio.fail_after(self.connect_timeout):
                dialed = await open_checked(
                    host,
                    request.port,
                    policy,
                    routes=self.routes,
                    resolver=self._resolver,
                    dial=dial,
                )
        except trio.TooSlowError:
            raise Refused(
                Reply.TTL_EXPIRED,
                f"no connection within {self.connect_timeout}s",
                "timeout",
            ) from None
        except ConnectRefused as exc:
            raise Refused(Reply.NOT_ALLOWED, exc.reason, "denied") from None
        except BadConnectTarget as exc:
            raise Refused(Reply.HOST_UNREACHABLE, exc.reason) from None
        except ParentProxyError as exc:
            raise Refused(Reply.GENERAL_FAILURE, exc.reason, "unreachable") from None
        except ConnectError as exc:
            reply = Reply.HOST_UNREACHABLE  # no address, or none answered
            if failures and failures[-1].errno in _ERRNO_REPLIES:
                reply = _ERRNO_REPLIES[failures[-1].errno]
            raise Refused(reply, exc.reason, "unreachable") from None
        session.address = dialed.address
        session.route = dialed.route if self.routes is not None else ""
        upstream = dialed.stream
        copy_tcp_keepalive(stream.connection, upstream)
        if self.send_proxy_protocol is not None:
            header = proxy_header_for(stream.connection, self.send_proxy_protocol)
            try:
                await upstream.send_all(header)
            except (trio.BrokenResourceError, OSError) as exc:
                await trio.aclose_forcefully(upstream)
                raise Refused(
                    Reply.GENERAL_FAILURE, f"upstream {dialed.address}: {exc}"
                ) from None
        return upstream

    # -- the log -------------------------------------------------------------

    def _log(self, session: Session) -> None:
        duration = trio.current_time() - session.started
        stats = session.stats
        if self.on_tunnel is not None:
            self.on_tunnel(session.outcome, session.port, stats, session.user or None)
        logger.info(
            "SOCKS5 %s %s%s -> %s%s%s %s%s up=%d down=%d%s %.3fs",
            session.command,
            session.client,
            f" user={session.user}" if session.user else "",
            session.target,
            f" ({session.address})" if session.address else "",
            f" {session.route}" if session.route else "",
            session.outcome,
            f" [{session.reason}]" if session.reason else "",
            stats.a_to_b,
            stats.b_to_a,
            session.extra,
            duration,
            extra={
                "client": session.client,
                "user": session.user,
                "command": session.command,
                "route": session.route,
                "target": session.target,
                "outcome": session.outcome,
                "upstream_address": session.address,
                "bytes_up": stats.a_to_b,
                "bytes_down": stats.b_to_a,
                "duration": duration,
            },
        )


class _Counted:
    """One tunnel or association counted by a :class:`SocksServer` (and its
    limits); ``release()`` once, from whoever ends it."""

    __slots__ = ("lease", "released", "server")

    def __init__(self, server: SocksServer, lease: TunnelLease | None) -> None:
        self.server = server
        self.lease = lease
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.server._open -= 1
            if self.lease is not None:
                self.lease.release()

    def __enter__(self) -> _Counted:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


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


def _format_client(address: object) -> str:
    if isinstance(address, tuple) and len(address) >= 2:
        return join_host_port(str(address[0]), int(address[1]))
    return str(address or "-")


def _client_host(address: object) -> str:
    if isinstance(address, tuple) and address:
        return str(address[0])
    return str(address or "-")
