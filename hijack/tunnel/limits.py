"""Limits per client and per user: tunnels open at once, and bandwidth.

Bandwidth is a token bucket per direction (bytes per second; see
:class:`hijack.Throttle`), one for each tunnel and one shared by all the
tunnels of a user, handed to the relay as its ``throttle``.

Where the tunnels are counted: in this object (the default, one process),
or in a :class:`~hijack.state.State` given as ``state`` (shared by the
workers of a machine, or by every node through Redis); see
``docs/explanation/more-than-one-process.md``.
"""

from __future__ import annotations

import collections

from .. import Throttle, TokenBucket
from ..state import Bound, Lease, LimitReached, State, StateUnavailable
from .policy import ConnectError
from .users import User

__all__ = ["LimitsUnavailable", "TooManyTunnels", "TunnelLease", "TunnelLimits"]


class TooManyTunnels(ConnectError):
    """A client address or a user has as many tunnels open as allowed (429)."""

    status = 429


class LimitsUnavailable(ConnectError):
    """The shared state that counts the limits cannot be reached and its
    failure mode is ``closed`` (503)."""

    status = 503


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

    ``state``: count in that :class:`~hijack.state.State` instead (shared
    by workers or nodes); ``by_client`` and ``by_user`` then count this
    process's own tunnels. A state that must be awaited (Redis) needs
    :meth:`acquire_async` (which works with every state), and may raise
    :class:`LimitsUnavailable` (503).
    """

    def __init__(
        self,
        *,
        per_client: int | None = None,
        per_user: int | None = None,
        tunnel_bandwidth: int | None = None,
        user_bandwidth: int | None = None,
        state: State | None = None,
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
        self.state = state
        self.by_client: collections.Counter[str] = collections.Counter()
        self.by_user: collections.Counter[str] = collections.Counter()
        # A user's buckets live while the user has a tunnel open.
        self._user_buckets: dict[str, tuple[int, TokenBucket, TokenBucket]] = {}

    def _user_throttle(self, user: User) -> tuple[TokenBucket, TokenBucket] | None:
        rate = user.bandwidth or self.user_bandwidth
        if rate is None:
            return None
        known = self._user_buckets.get(user.name)
        if known is None or known[0] != rate:  # new, or reloaded
            if self.state is not None:
                buckets = self.state.buckets(f"user:{user.name}", rate)
            else:
                buckets = (TokenBucket(rate), TokenBucket(rate))
            known = self._user_buckets[user.name] = (rate, *buckets)
        return known[1], known[2]

    def acquire(self, client: str, user: User | None) -> TunnelLease:
        """Count one tunnel of ``client`` (an address, without the port) and
        ``user``; raise :class:`TooManyTunnels` at a bound. The lease gives
        the tunnel's throttles; release it when the tunnel ends (``with``,
        or ``release()`` from whoever ends the tunnel, e.g. a relay hub)."""
        if self.state is not None:
            bounds = self._bounds(client, user)
            try:
                claim = self.state.take_now(bounds) if bounds else None
            except LimitReached as exc:
                raise TooManyTunnels(_refusal(exc)) from None
            except StateUnavailable as exc:
                raise LimitsUnavailable(str(exc)) from None
            return self._counted(client, user, claim)
        if self.per_client is not None and self.by_client[client] >= self.per_client:
            raise TooManyTunnels(f"client {client} has {self.per_client} tunnels open")
        limit = None if user is None else (user.max_tunnels or self.per_user)
        if user is not None and limit is not None and self.by_user[user.name] >= limit:
            raise TooManyTunnels(f"user {user.name} has {limit} tunnels open")
        return self._counted(client, user, None)

    async def acquire_async(self, client: str, user: User | None) -> TunnelLease:
        """:meth:`acquire` for every state, the ones that answer over the
        network (Redis) included: 429 at a bound, 503
        (:class:`LimitsUnavailable`) when the state cannot count now."""
        state = self.state
        if state is None or state.immediate:
            return self.acquire(client, user)
        bounds = self._bounds(client, user)
        try:
            claim = await state.take(bounds) if bounds else None
        except LimitReached as exc:
            raise TooManyTunnels(_refusal(exc)) from None
        except StateUnavailable as exc:
            raise LimitsUnavailable(str(exc)) from None
        return self._counted(client, user, claim)

    def _bounds(self, client: str, user: User | None) -> list[Bound]:
        """The keys a tunnel is counted on in a shared state. A user with a
        shared bandwidth is counted even without a bound: the split of the
        bandwidth needs the count."""
        bounds = []
        if self.per_client is not None:
            bounds.append(Bound(f"client:{client}", self.per_client))
        if user is not None:
            limit = user.max_tunnels or self.per_user
            if limit is not None or (user.bandwidth or self.user_bandwidth):
                bounds.append(Bound(f"user:{user.name}", limit))
        return bounds

    def _counted(
        self, client: str, user: User | None, claim: Lease | None
    ) -> TunnelLease:
        """A granted tunnel (``claim``: the shared state's lease, if any):
        this process's counts and throttles."""
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
        return TunnelLease(self, client, user, throttle, claim)

    def _release(self, client: str, user: User | None) -> None:
        _decrement(self.by_client, client)
        if user is not None and not _decrement(self.by_user, user.name):
            self._user_buckets.pop(user.name, None)


class TunnelLease:
    """One counted tunnel. ``throttle`` is ``(client->upstream,
    upstream->client)`` for ``relay(throttle=...)``, None where unlimited.
    ``release()`` (idempotent; also on leaving a ``with`` block) uncounts it."""

    __slots__ = ("_claim", "_limits", "client", "released", "throttle", "user")

    def __init__(
        self,
        limits: TunnelLimits,
        client: str,
        user: User | None,
        throttle: tuple[Throttle | None, Throttle | None],
        claim: Lease | None = None,
    ) -> None:
        self._limits = limits
        self._claim = claim
        self.client = client
        self.user = user
        self.throttle = throttle
        self.released = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self._limits._release(self.client, self.user)
            if self._claim is not None:
                self._claim.release()

    def __enter__(self) -> TunnelLease:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


def _refusal(exc: LimitReached) -> str:
    """The 429's reason, as the in-process path words it."""
    kind, _, name = exc.bound.key.partition(":")
    return f"{kind} {name} has {exc.bound.limit} tunnels open"


def _decrement(counter: collections.Counter[str], key: str) -> int:
    """Count one down; drop the key at zero (no entry per past client)."""
    left = counter[key] - 1
    if left:
        counter[key] = left
    else:
        del counter[key]
    return left
