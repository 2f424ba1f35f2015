"""UDP ASSOCIATE (RFC 1928 section 7), done safely.

An association is a UDP relay socket bound on the address the client
reached over TCP, announced in the reply. What it does with datagrams:

* Only the client that associated may use it: datagrams must come from the
  TCP control connection's client address, and from the port the request
  named (or, when it named port 0, the port of the first datagram). Others
  are dropped and counted.
* ``FRAG != 0``: dropped and counted (fragmentation is optional; no
  reassembly queue to fill).
* Each destination is judged by the user's :class:`ConnectPolicy`, names
  resolved by hijack once per association; the verdict (the address to send
  to, or the refusal) is cached in a bounded table.
* Answers are relayed back only from peers the client sent to (a bounded
  table): the relay does not open a hole for anyone else.
* It ends when the TCP control connection ends (EOF or error), after
  ``udp_idle_timeout`` without a datagram either way, or at the server's
  shutdown; then both sockets are closed and the control connection too.

Memory per association is bounded: two sockets, four tasks, two tables of
fixed size, no queue (each datagram is sent before the next is read).

The hot path does no parsing it has done before: a datagram's header bytes
(RSV, FRAG, address, port) key the verdict table, whose entry is where to
send it; the peer's address as the socket reports it keys the table of the
header its answers get. The
association counts as one tunnel against ``max_tunnels`` and the client's
and user's limits for its whole life.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
from typing import Any

import trio

from .. import Hijacked, join_host_port
from ..tunnel.lifecycle import Outcome, TunnelRecord
from ..tunnel.policy import ConnectError, ConnectPolicy, IPAddress, Resolver
from ._session import Refused, send
from .codec import Reply, SocksError, SocksRequest

__all__ = ["Association", "serve_association"]

#: Largest datagram read (UDP's own bound; the SOCKS header comes off it).
MAX_DATAGRAM = 65535
#: Destinations whose verdict an association remembers.
MAX_VERDICTS = 256
#: Peers an association remembers sending to (their answers are relayed).
MAX_PEERS = 1024

#: A socket address as recvfrom gives it and sendto takes it.
SockAddr = tuple[Any, ...]


class Association:
    """The state of one UDP association, and its counters."""

    def __init__(
        self,
        client_ip: IPAddress,
        client_port: int,
        policy: ConnectPolicy,
        resolver: Resolver,
        resolve_timeout: float,
        *,
        dual_stack: bool,
    ) -> None:
        self.client_ip = client_ip
        #: 0 until the first datagram from the client's address fixes it.
        self.client_port = client_port
        #: The client's address as the relay socket reports it, once known.
        self.client: SockAddr | None = None
        self.policy = policy
        self.resolver = resolver
        self.resolve_timeout = resolve_timeout
        self.dual_stack = dual_stack
        #: Header bytes -> (where to send, the peer's key), or the refusal.
        self.verdicts: dict[bytes, tuple[SockAddr, tuple[str, int]] | ConnectError] = {}
        #: A peer as the outbound socket reports it -> its answers' header.
        self.peers: dict[tuple[str, int], bytes] = {}
        self.datagrams_up = 0
        self.datagrams_down = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.dropped: dict[str, int] = {}
        self.last_active = trio.current_time()
        self.timed_out = False

    def drop(self, why: str) -> None:
        self.dropped[why] = self.dropped.get(why, 0) + 1

    def from_client(self, source: SockAddr) -> bool:
        """Is ``source`` the associated client? The first datagram from its
        address fixes the port when the request named none."""
        if self.client is not None:
            return bool(source[0] == self.client[0] and source[1] == self.client[1])
        try:
            ip = _unmapped(ipaddress.ip_address(str(source[0]).split("%")[0]))
        except ValueError:
            return False
        if ip != self.client_ip:
            return False
        if self.client_port == 0:
            self.client_port = source[1]
        if source[1] != self.client_port:
            return False
        self.client = source
        return True

    async def destination(
        self, datagram: bytes
    ) -> tuple[SockAddr, tuple[str, int], int] | None:
        """Where ``datagram`` goes (the address for sendto and the peer's
        key) and where its payload starts; None when it is dropped (and
        counted)."""
        if len(datagram) < 10 or datagram[2]:
            self.drop("fragment" if len(datagram) >= 3 and datagram[2] else "malformed")
            return None
        kind = datagram[3]
        end = (
            10
            if kind == 1
            else 22
            if kind == 4
            else 7 + datagram[4]
            if kind == 3
            else 0
        )
        key = datagram[:end]
        cached = self.verdicts.get(key) if end else None
        if cached is None:
            cached = await self._judge(datagram)
            if cached is None:
                return None
            if len(self.verdicts) >= MAX_VERDICTS:
                del self.verdicts[next(iter(self.verdicts))]
            self.verdicts[key] = cached
        if isinstance(cached, ConnectError):
            self.drop("refused")
            return None
        return cached[0], cached[1], end

    async def _judge(
        self, datagram: bytes
    ) -> tuple[SockAddr, tuple[str, int]] | ConnectError | None:
        """The first datagram to a destination: parse, resolve, judge."""
        from . import codec

        try:
            header = codec.parse_udp(datagram)
        except SocksError:
            self.drop("malformed")
            return None
        host, port = header.host, header.port
        try:
            with trio.fail_after(self.resolve_timeout):
                addresses = await self.policy.resolve(
                    host, port, resolver=self.resolver
                )
        except ConnectError as exc:
            return exc
        except trio.TooSlowError:
            return ConnectError(f"cannot resolve {host} in time")
        address = addresses[0]
        target = str(address)
        if self.dual_stack and address.version == 4:
            target = f"::ffff:{address}"
        return (target, port), (target, port)

    def contacted(self, peer: tuple[str, int], target: SockAddr) -> None:
        """The client sent to ``peer``: its answers are relayed."""
        if peer in self.peers:
            return
        if len(self.peers) >= MAX_PEERS:
            del self.peers[next(iter(self.peers))]
        from . import codec

        ip = _unmapped(ipaddress.ip_address(str(target[0])))
        self.peers[peer] = codec.encode_udp(str(ip), target[1], b"")

    def answer_header(self, source: SockAddr) -> bytes | None:
        header = self.peers.get((source[0], source[1]))
        if header is None and ":" in str(source[0]):
            # The kernel may spell an IPv6 address differently: normalise.
            try:
                spelled = str(ipaddress.ip_address(str(source[0]).split("%")[0]))
            except ValueError:
                return None
            header = self.peers.get((spelled, source[1]))
        return header

    def summary(self) -> str:
        dropped = ",".join(f"{k}:{v}" for k, v in sorted(self.dropped.items()))
        return (
            f"datagrams={self.datagrams_up}/{self.datagrams_down}"
            f" dropped={sum(self.dropped.values())}{f'({dropped})' if dropped else ''}"
        )


def _unmapped(address: IPAddress) -> IPAddress:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


async def serve_association(
    control: Hijacked,
    request: SocksRequest,
    policy: ConnectPolicy,
    record: TunnelRecord,
    *,
    resolver: Resolver,
    resolve_timeout: float,
    idle_timeout: float,
) -> None:
    """Serve one UDP ASSOCIATE until it ends (see the module doc). Raises
    the server's refusal (answered by the caller) when no relay can be
    opened."""
    connection = control.connection
    remote, local = connection.remote_address, connection.local_address
    if not (isinstance(remote, tuple) and isinstance(local, tuple)):
        raise Refused(Reply.GENERAL_FAILURE, "UDP needs a TCP client", 400)
    client_ip = _unmapped(ipaddress.ip_address(str(remote[0]).split("%")[0]))
    # A dual-stack listener sees an IPv4 client at a mapped address: the
    # relay binds the IPv4 address, which that client can reach.
    local_ip = _unmapped(ipaddress.ip_address(str(local[0]).split("%")[0]))
    family = socket.AF_INET6 if local_ip.version == 6 else socket.AF_INET
    # Plain non-blocking sockets driven with trio.lowlevel.wait_*: a
    # datagram costs a system call each way, not trio's socket layers.
    relay_socket = socket.socket(family, socket.SOCK_DGRAM)
    outbound = _outbound_socket()
    try:
        relay_socket.setblocking(False)
        relay_socket.bind((str(local_ip), 0))  # an address: nothing to resolve
        if outbound.family == socket.AF_INET6:
            outbound.bind(("::", 0))
        else:
            outbound.bind(("0.0.0.0", 0))
        bound_host, bound_port = relay_socket.getsockname()[:2]
        association = Association(
            client_ip,
            request.port,
            policy,
            resolver,
            resolve_timeout,
            dual_stack=outbound.family == socket.AF_INET6,
        )
        await send(control, codec_reply(bound_host, bound_port))
        record.address = f"udp relay {join_host_port(bound_host, bound_port)}"
        try:
            await _run(control, relay_socket, outbound, association, idle_timeout)
        finally:
            stats = record.stats
            stats.a_to_b, stats.b_to_a = association.bytes_up, association.bytes_down
            stats.timed_out = association.timed_out
            record.detail = association.summary()
        record.outcome = Outcome.IDLE_TIMEOUT if stats.timed_out else Outcome.OK
    finally:
        relay_socket.close()
        outbound.close()


def codec_reply(host: str, port: int) -> bytes:
    from . import codec

    return codec.encode_reply(Reply.SUCCEEDED, host, port)


def _outbound_socket() -> socket.socket:
    """One non-blocking socket for every destination: dual-stack IPv6 where
    the host has IPv6 (IPv4 destinations as mapped addresses), else IPv4."""
    try:
        sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    else:
        with contextlib.suppress(OSError):  # a v6-only host keeps v6 only
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setblocking(False)
    return sock


async def _run(
    control: Hijacked,
    relay_socket: socket.socket,
    outbound: socket.socket,
    association: Association,
    idle: float,
) -> None:
    raw_relay, raw_outbound = relay_socket, outbound
    # The client's address as the relay socket spells it, for sendto.
    client_ip = str(association.client_ip)
    if relay_socket.family == socket.AF_INET6 and association.client_ip.version == 4:
        client_ip = f"::ffff:{client_ip}"

    async with trio.open_nursery() as nursery:
        scope = nursery.cancel_scope

        async def watch_control() -> None:
            """The association lives as long as its TCP connection."""
            try:
                while await control.receive_some(4096):
                    pass  # nothing is expected here; discard it
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass
            scope.cancel()

        async def watch_shutdown() -> None:
            await control.connection.shutdown_requested.wait()
            scope.cancel()

        async def watch_idle() -> None:
            # One timer for the association: the datagrams only note the
            # time (no cancel-scope deadline moved per datagram).
            while True:
                deadline = association.last_active + idle
                if trio.current_time() >= deadline:
                    association.timed_out = True
                    scope.cancel()
                    return
                await trio.sleep_until(deadline)

        async def client_to_destinations() -> None:
            while True:
                data, source = await _receive(raw_relay)
                if not association.from_client(source):
                    association.drop("foreign")
                    continue
                where = await association.destination(data)
                if where is None:
                    continue
                target, peer, offset = where
                # Before the send: the answer may come back before it returns.
                association.contacted(peer, target)
                payload = memoryview(data)[offset:]
                if not await _send(raw_outbound, payload, target):
                    association.drop("send-failed")
                    continue
                association.datagrams_up += 1
                association.bytes_up += len(payload)
                association.last_active = trio.current_time()

        async def destinations_to_client() -> None:
            while True:
                data, source = await _receive(raw_outbound)
                header = association.answer_header(source)
                if header is None or association.client is None:
                    association.drop("unsolicited")
                    continue
                client = (client_ip, association.client_port)
                if not await _send(raw_relay, header + data, client):
                    association.drop("send-failed")
                    continue
                association.datagrams_down += 1
                association.bytes_down += len(data)
                association.last_active = trio.current_time()

        nursery.start_soon(watch_control)
        nursery.start_soon(watch_shutdown)
        nursery.start_soon(watch_idle)
        nursery.start_soon(client_to_destinations)
        nursery.start_soon(destinations_to_client)


async def _receive(sock: socket.socket) -> tuple[bytes, SockAddr]:
    """One datagram, with exactly one scheduler pass: waiting for it, or
    (when one was there already) a checkpoint, so a flood cannot starve
    the other tasks."""
    waited = False
    while True:
        try:
            data, source = sock.recvfrom(MAX_DATAGRAM)
        except BlockingIOError:
            await trio.lowlevel.wait_readable(sock)
            waited = True
            continue
        if not waited:
            await trio.lowlevel.checkpoint()
        return data, source


async def _send(sock: socket.socket, data: bytes | memoryview, to: SockAddr) -> bool:
    """Send one datagram (waiting if the send buffer is full); False if the
    kernel refused it (an ICMP error, a datagram too big)."""
    while True:
        try:
            sock.sendto(data, to)
            return True
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
        except OSError:
            return False
