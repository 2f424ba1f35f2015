"""Limits per client and per user: tunnels open at once, and bandwidth.

Bandwidth is a token bucket per direction (bytes per second; see
:class:`hijack.Throttle`), one for each tunnel and one shared by all the
tunnels of a user, handed to the relay as its ``throttle``.
"""

from __future__ import annotations

import collections

from .. import Throttle, TokenBucket
from .policy import ConnectError
from .users import User

__all__ = ["TooManyTunnels", "TunnelLease", "TunnelLimits"]


class TooManyTunnels(ConnectError):
    """A client address or a user has as many tunnels open as allowed (429)."""

    status = 429


class TunnelLimits:
    """Tunnels open at once per client address and per user, and bandwidth
    per tunnel and per user (bytes per second, each direction).

    ``per_client`` / ``per_user`` bound open tunnels (None: no bound); a user's
    ``max_tunnels`` in the users file replaces ``per_user`` for them.
    ``tunnel_bandwidth`` limits every tunnel; ``user_bandwidth`` (or the user's
    ``bandwidth``) is shared by all the tunnels of one user.

    :meth:`acquire` counts a tunnel and gives a :class:`TunnelLease` with
    its throttles, or raises :class:`TooManyTunnels` (429) at a bound.
    Single Trio run: the counters are not locked.
    """

    def __init__(
        self,
        *,
        per_client: int | None = None,
        per_user: int | None = None,
        tunnel_bandwidth: int | None = None,
        user_bandwidth: int | None = None,
    ) -> None:
        for name, value in [
            ("per_client", per_client),
            ("per_user", per_user),
            ("tunnel_bandwidth", tunnel_bandwidth),
            ("user_bandwidth", user_bandwidth),
        ]:
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1 (or None for no limit)")
        self.per_client = per_client
        self.per_user = per_user
        self.tunnel_bandwidth = tunnel_bandwidth
        self.user_bandwidth = user_bandwidth
        self.by_client: collections.Counter[str] = collections.Counter()
        self.by_user: collections.Counter[str] = collections.Counter()
        # A user's buckets live while the user has a tunnel open.
        self._user_buckets: dict[str, tuple[TokenBucket, TokenBucket]] = {}

    def _user_throttle(self, user: User) -> tuple[TokenBucket, TokenBucket] | None:
        rate = user.bandwidth or self.user_bandwidth
        if rate is None:
            return None
        buckets = self._user_buckets.get(user.name)
        if buckets is None or buckets[0].rate != rate:  # new, or reloaded
            buckets = self._user_buckets[user.name] = (
                TokenBucket(rate),
                TokenBucket(rate),
            )
        return buckets

    def acquire(self, client: str, user: User | None) -> TunnelLease:
        """Count one tunnel of ``client`` (an address, without the port) and
        ``user``; raise :class:`TooManyTunnels` at a bound. The lease gives
        the tunnel's throttles; release it when the tunnel ends (``with``,
        or ``release()`` from whoever ends the tunnel, e.g. a relay hub)."""
        if self.per_client is not None and self.by_client[client] >= self.per_client:
            raise TooManyTunnels(f"client {client} has {self.per_client} tunnels open")
        limit = None if user is None else (user.max_tunnels or self.per_user)
        if user is not None and limit is not None and self.by_user[user.name] >= limit:
            raise TooManyTunnels(f"user {user.name} has {limit} tunnels open")
        up: list[TokenBucket] = []
        down: list[TokenBucket] = []
        if self.tunnel_bandwidth is not None:
            up.append(TokenBucket(self.tunnel_bandwidth))
            down.append(TokenBucket(self.tunnel_bandwidth))
        shared = None if user is None else self._user_throttle(user)
        if shared is not None:
            up.append(shared[0])
            down.append(shared[1])
        self.by_client[client] += 1
        if user is not None:
            self.by_user[user.name] += 1
        throttle = (Throttle(*up) if up else None, Throttle(*down) if down else None)
        return TunnelLease(self, client, user, throttle)

    def _release(self, client: str, user: User | None) -> None:
        _decrement(self.by_client, client)
        if user is not None and not _decrement(self.by_user, user.name):
            self._user_buckets.pop(user.name, None)


class TunnelLease:
    """One counted tunnel. ``throttle`` is ``(client->upstream,
    upstream->client)`` for ``relay(throttle=...)``, None where unlimited.
    ``release()`` (idempotent; also on leaving a ``with`` block) uncounts it."""

    __slots__ = ("_limits", "client", "released", "throttle", "user")

    def __init__(
        self,
        limits: TunnelLimits,
        client: str,
        user: User | None,
        throttle: tuple[Throttle | None, Throttle | None],
    ) -> None:
        self._limits = limits
        self.client = client
        self.user = user
        self.throttle = throttle
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._limits._release(self.client, self.user)

    def __enter__(self) -> TunnelLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _decrement(counter: collections.Counter[str], key: str) -> int:
    """Count one down; drop the key at zero (no entry per past client)."""
    left = counter[key] - 1
    if left:
        counter[key] = left
    else:
        del counter[key]
    return left
