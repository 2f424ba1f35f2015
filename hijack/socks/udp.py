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

Memory per association is bounded: two sockets, three tasks, two tables of
fixed size, no queue (each datagram is sent before the next is read). The
association counts as one tunnel against ``max_tunnels`` and the client's
and user's limits for its whole life.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import socket

import trio

from .. import Hijacked, join_host_port
from ..tunnel.lifecycle import Outcome, TunnelRecord
from ..tunnel.policy import ConnectError, ConnectPolicy, IPAddress, Resolver
from . import codec
from ._session import Refused, send
from .codec import Reply, SocksError, SocksRequest

__all__ = ["Association", "serve_association"]

#: Largest datagram read (UDP's own bound; the SOCKS header comes off it).
MAX_DATAGRAM = 65535
#: Destinations whose verdict an association remembers.
MAX_VERDICTS = 256
#: Peers an association remembers sending to (their answers are relayed).
MAX_PEERS = 1024


class Association:
    """The state of one UDP association, and its counters."""

    def __init__(
        self,
        client_ip: IPAddress,
        client_port: int,
        policy: ConnectPolicy,
        resolver: Resolver,
        resolve_timeout: float,
    ) -> None:
        self.client_ip = client_ip
        #: 0 until the first datagram from the client's address fixes it.
        self.client_port = client_port
        self.policy = policy
        self.resolver = resolver
        self.resolve_timeout = resolve_timeout
        self.verdicts: collections.OrderedDict[
            tuple[str, int], IPAddress | ConnectError
        ] = collections.OrderedDict()
        self.peers: collections.OrderedDict[tuple[IPAddress, int], None] = (
            collections.OrderedDict()
        )
        self.datagrams_up = 0
        self.datagrams_down = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self.dropped: collections.Counter[str] = collections.Counter()
        self.timed_out = False

    def from_client(self, source: tuple[str, int]) -> bool:
        """Is ``source`` the associated client? The first datagram from its
        address fixes the port when the request named none."""
        try:
            ip = _unmapped(ipaddress.ip_address(source[0].split("%")[0]))
        except ValueError:
            return False
        if ip != self.client_ip:
            return False
        if self.client_port == 0:
            self.client_port = source[1]
        return source[1] == self.client_port

    async def verdict(self, host: str, port: int) -> IPAddress:
        """The checked address to send to, or raise the (cached) refusal."""
        key = (host.lower(), port)
        cached = self.verdicts.get(key)
        if cached is None:
            try:
                with trio.fail_after(self.resolve_timeout):
                    addresses = await self.policy.resolve(
                        host, port, resolver=self.resolver
                    )
                cached = addresses[0]
            except ConnectError as exc:
                cached = exc
            except trio.TooSlowError:
                cached = ConnectError(f"cannot resolve {host} in time")
            self.verdicts[key] = cached
            if len(self.verdicts) > MAX_VERDICTS:
                self.verdicts.popitem(last=False)
        else:
            self.verdicts.move_to_end(key)
        if isinstance(cached, ConnectError):
            raise cached
        return cached

    def contacted(self, address: IPAddress, port: int) -> None:
        key = (address, port)
        self.peers[key] = None
        self.peers.move_to_end(key)
        if len(self.peers) > MAX_PEERS:
            self.peers.popitem(last=False)

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
    relay_socket = trio.socket.socket(family, socket.SOCK_DGRAM)
    outbound = _outbound_socket()
    try:
        await relay_socket.bind((str(local_ip), 0))
        bound_host, bound_port = relay_socket.getsockname()[:2]
        association = Association(
            client_ip, request.port, policy, resolver, resolve_timeout
        )
        await send(control, codec.encode_reply(Reply.SUCCEEDED, bound_host, bound_port))
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


def _outbound_socket() -> trio.socket.SocketType:
    """One socket for every destination: dual-stack IPv6 where the host has
    IPv6 (IPv4 destinations as mapped addresses), else IPv4."""
    try:
        sock = trio.socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    except OSError:
        return trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with contextlib.suppress(OSError):  # a v6-only host keeps v6 only
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    return sock


async def _run(
    control: Hijacked,
    relay_socket: trio.socket.SocketType,
    outbound: trio.socket.SocketType,
    association: Association,
    idle: float,
) -> None:
    dual_stack = outbound.family == socket.AF_INET6
    if dual_stack:
        await outbound.bind(("::", 0))
    else:
        await outbound.bind(("0.0.0.0", 0))

    async with trio.open_nursery() as nursery:
        scope = nursery.cancel_scope
        scope.deadline = trio.current_time() + idle

        def active() -> None:
            scope.deadline = trio.current_time() + idle

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

        async def client_to_destinations() -> None:
            while True:
                data, source = await relay_socket.recvfrom(MAX_DATAGRAM)
                if not association.from_client(source):
                    association.dropped["foreign"] += 1
                    continue
                try:
                    header = codec.parse_udp(data)
                except SocksError:
                    association.dropped["malformed"] += 1
                    continue
                if header.frag != 0:
                    association.dropped["fragment"] += 1
                    continue
                try:
                    address = await association.verdict(header.host, header.port)
                except ConnectError:
                    association.dropped["refused"] += 1
                    continue
                payload = memoryview(data)[header.payload_offset :]
                target = str(address)
                if dual_stack and address.version == 4:
                    target = f"::ffff:{address}"
                try:
                    await outbound.sendto(payload, (target, header.port))
                except OSError:
                    association.dropped["send-failed"] += 1
                    continue
                association.contacted(address, header.port)
                association.datagrams_up += 1
                association.bytes_up += len(payload)
                active()

        async def destinations_to_client() -> None:
            while True:
                data, source = await outbound.recvfrom(MAX_DATAGRAM)
                try:
                    peer = _unmapped(ipaddress.ip_address(source[0].split("%")[0]))
                except ValueError:  # pragma: no cover - the kernel's address
                    continue
                if (peer, source[1]) not in association.peers:
                    association.dropped["unsolicited"] += 1
                    continue
                if association.client_port == 0:
                    continue  # pragma: no cover - we sent, so it is known
                wrapped = codec.encode_udp(str(peer), source[1], data)
                client = str(association.client_ip)
                if relay_socket.family == socket.AF_INET6 and (
                    association.client_ip.version == 4
                ):
                    client = f"::ffff:{client}"
                try:
                    await relay_socket.sendto(
                        wrapped, (client, association.client_port)
                    )
                except OSError:
                    association.dropped["send-failed"] += 1
                    continue
                association.datagrams_down += 1
                association.bytes_down += len(data)
                active()

        nursery.start_soon(watch_control)
        nursery.start_soon(watch_shutdown)
        nursery.start_soon(client_to_destinations)
        nursery.start_soon(destinations_to_client)
    # The deadline passing (not a cancel of ours) means idle.
    association.timed_out = (
        scope.cancelled_caught and trio.current_time() >= scope.deadline
    )
