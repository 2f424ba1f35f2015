"""Counts shared by every node, in Redis (``--state redis://...``).

Client: coredis (https://github.com/alisaifee/coredis), the maintained,
fully typed async Redis client that runs on anyio, hence under Trio as it
is. redis-py's asyncio client needs an asyncio loop; the Trio-only clients
(redio, redtrio) have not been released since 2022.

Leases. Each counted key (``client:ADDR``, ``user:NAME``) is a sorted set
of lease ids scored by their expiry (Redis's own clock, ``TIME``, so the
nodes' clocks do not matter). Taking a lease is one Lua script: drop the
expired members of every key, refuse if one is at its bound, else add the
lease to all of them. One call at a time carries every lease asked for
while the previous one was on its way, and the leases given back
meanwhile (a ZREM each): under load the client's cost per call, most of
what a Redis lease costs, is shared (measured in ``bench/state_rows.py``).
A lease given back with no lease asked for within ``RELEASE_DELAY`` goes
in a call of its own; if that fails, the lease runs out with the TTL. The
node renews its live leases every third of the time to live (one call for
all of them); a node that dies stops renewing, and its leases drop out
within the TTL.

Bandwidth per user: a fair split. Each node gives a user
``rate * (the user's tunnels here) / (the user's tunnels everywhere)``,
the total read at every lease and every renewal: the budget is never
exceeded by more than what changes between two renewals, and it converges
every renewal (a third of the TTL); an idle tunnel's part is not lent to
the others. No Redis call happens per relayed chunk.

Failures. Every call is bounded by ``timeout``. When one fails the state is
*unavailable*: one WARNING line, the availability hook (a metric) told,
and a probe every second until Redis answers; then one INFO line, every
live lease is written again (so the counts are right again), and leases
are taken from Redis again. While unavailable, ``closed`` (the default)
refuses new tunnels (503) at once; ``open`` counts them in this process
(per-node limits).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import secrets
import socket
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any

import trio

from ._base import Bound, Lease, LimitReached, State, StateUnavailable
from ._local import LocalState

__all__ = ["RedisState", "StateStartError", "redacted"]

logger = logging.getLogger("hijack.state")

#: Seconds between probes while Redis cannot be reached.
PROBE_INTERVAL = 1.0
PREFIX = "hijack:lease:"
#: With the admin listener on: every node publishes its live tunnels there
#: (refreshed every PUBLISH_INTERVAL, gone after the TTL) and takes the
#: ids other nodes asked it to end from ``ENDS + node``.
TUNNELS = "hijack:tunnels:"
ENDS = "hijack:end:"
PUBLISH_INTERVAL = 1.0
#: Seconds a lease given back may wait for an acquire call to ride with.
RELEASE_DELAY = 0.05

# Every lease asked for while the previous call was on its way, in one
# call, with the leases given back meanwhile: ARGV = ttl, the number r of
# leases given back and their ids (their keys are the first r of KEYS),
# then per lease asked for its id, its number of keys n and their n bounds
# (-1: none); its n keys are the next n of KEYS. Each lease is all or
# nothing: {0, total...} when taken, {i, count} when refused at key i.
_ACQUIRE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local released = tonumber(ARGV[2])
for i = 1, released do redis.call('ZREM', KEYS[i], ARGV[2 + i]) end
local out = {}
local a, k = 3 + released, 1 + released
while a <= #ARGV do
  local id, n = ARGV[a], tonumber(ARGV[a + 1])
  local answer = {0}
  for i = 0, n - 1 do
    local key = KEYS[k + i]
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
    local count = redis.call('ZCARD', key)
    local limit = tonumber(ARGV[a + 2 + i])
    if limit >= 0 and count >= limit then
      answer = {i + 1, count}
      break
    end
  end
  if answer[1] == 0 then
    for i = 0, n - 1 do
      local key = KEYS[k + i]
      redis.call('ZADD', key, now + ttl, id)
      redis.call('PEXPIRE', key, ttl * 2)
      answer[i + 2] = redis.call('ZCARD', key)
    end
  end
  out[#out + 1] = answer
  a = a + 2 + n
  k = k + n
end
return out
"""

# KEYS[i] and ARGV[i + 1] (a lease id) go together; one call renews (or
# writes again, after an outage) every live lease of the node.
_RENEW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
local totals = {}
for i, key in ipairs(KEYS) do
  redis.call('ZADD', key, now + ttl, ARGV[i + 1])
  redis.call('PEXPIRE', key, ttl * 2)
end
for i, key in ipairs(KEYS) do
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  totals[i] = redis.call('ZCARD', key)
end
return totals
"""

_TAKE_ENDS = """
local ids = redis.call('LRANGE', KEYS[1], 0, -1)
redis.call('DEL', KEYS[1])
return ids
"""

_RELEASE = """
for i, key in ipairs(KEYS) do redis.call('ZREM', key, ARGV[i]) end
return 0
"""


class StateStartError(Exception):
    """Redis refused us at start (a wrong password, a wrong database): the
    command prints this one line and exits 2."""


def redacted(url: str) -> str:
    """``url`` without its password (for logs and errors)."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    netloc = f"{user}:***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (anyio wraps some in exception groups)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


class RedisState(State):
    """Leases in Redis at ``url`` (``redis://``, ``rediss://``, ``unix://``).

    ``password`` (from a file or the config file) wins over one in the URL.
    ``ttl``: seconds a lease lives unless renewed. ``timeout``: the bound of
    every Redis call. ``fail_open``: while Redis cannot be reached, count
    here (per-node limits) instead of refusing. ``on_availability(bool)``
    is told every change (metrics). ``client`` replaces the coredis client
    (tests).

    Resource handling: :meth:`serve` owns the client's connections; run it
    in the server's nursery before serving (it returns ``started`` once
    the first answer from Redis, or its absence, is known).
    """

    immediate = False

    def __init__(
        self,
        url: str,
        *,
        password: str | None = None,
        ttl: float = 30.0,
        timeout: float = 1.0,
        fail_open: bool = False,
        on_availability: Callable[[bool], None] = lambda available: None,
    ) -> None:
        if ttl <= 0 or timeout <= 0:
            raise ValueError("ttl and timeout must be > 0")
        if urllib.parse.urlsplit(url).scheme not in ("redis", "rediss", "unix"):
            raise ValueError(
                f"{redacted(url)}: not a redis://, rediss:// or unix:// URL"
            )
        self.url = url
        self.description = redacted(url)
        self.ttl = ttl
        self.timeout = timeout
        self.fail_open = fail_open
        self.on_availability = on_availability
        self.available = True
        self.node = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._password = password
        self._ids = itertools.count()
        self.leases: dict[str, _RedisLease] = {}
        #: This node's own leases per key (the numerator of the split), and
        #: the fallback counts while Redis is away (fail_open).
        self.local = LocalState()
        self.totals: dict[str, int] = {}
        self._to_release: list[tuple[str, str]] = []
        self._asked: list[_Asked] = []
        self._acquire_wanted = trio.Event()
        self._release_wanted = trio.Event()
        self._client: Any = None
        self._scripts: dict[str, Any] = {}
        #: Set by the admin listener: publish this node's tunnels (a
        #: function giving them as JSON rows) and end those asked for.
        self.publish: Callable[[], list[dict[str, Any]]] | None = None
        self.end_local: Callable[[str], bool] = lambda id: False
        self.admin_node = self.node  # the name the tunnels' rows give
        logging.getLogger("coredis").setLevel(logging.WARNING)  # its retries

    # -- the upkeep -----------------------------------------------------------

    def _new_client(self) -> Any:
        import coredis
        from coredis.retry import NoRetryPolicy

        options: dict[str, Any] = {
            "stream_timeout": self.timeout,
            "connect_timeout": self.timeout,
            "retry_policy": NoRetryPolicy(),
            "verify_version": False,
        }
        if self._password is not None:
            options["password"] = self._password
        return coredis.Redis.from_url(self.url, **options)

    async def serve(
        self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        client = self._new_client()
        refused = None
        async with client:
            self._client = client
            for name, source in (
                ("acquire", _ACQUIRE),
                ("renew", _RENEW),
                ("release", _RELEASE),
                ("take_ends", _TAKE_ENDS),
            ):
                self._scripts[name] = client.register_script(source)
            refused = await self._first_contact()
            if refused is None:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._acquire_forever)
                    nursery.start_soon(self._release_forever)
                    nursery.start_soon(self._publish_forever)
                    task_status.started()
                    await self._renew_forever()
        # Raised out here: inside, coredis's task group would wrap it.
        if refused is not None:
            raise refused

    async def _first_contact(self) -> StateStartError | None:
        """A refusal (password, database) stops the start; a Redis that is
        not there yet only makes the state unavailable."""
        from coredis.exceptions import (
            AuthenticationError,
            AuthorizationError,
            ResponseError,
        )

        try:
            with trio.fail_after(self.timeout):
                await self._client.ping()
        except Exception as exc:
            leaf = _leaf(exc)
            if isinstance(leaf, (AuthenticationError, AuthorizationError)) or (
                isinstance(leaf, ResponseError) and "DB index" in str(leaf)
            ):
                return StateStartError(f"--state {self.description}: {leaf}")
            self._unavailable(exc)
        else:
            logger.info("state: leases in %s (ttl %gs)", self.description, self.ttl)
        return None

    async def _renew_forever(self) -> None:
        while True:
            if self.available:
                await trio.sleep(self.ttl / 3)
            else:
                await trio.sleep(PROBE_INTERVAL)
            try:
                await self._renew()
            except Exception as exc:
                self._unavailable(exc)
            else:
                self._back()

    async def _renew(self) -> None:
        if not self.available:
            with trio.fail_after(self.timeout):
                await self._client.ping()
        pairs = [(key, id) for id, lease in self.leases.items() for key in lease.keys]
        if not pairs:
            return
        with trio.fail_after(self.timeout):
            totals = await self._scripts["renew"](
                keys=[key for key, _ in pairs],
                args=[int(self.ttl * 1000), *(id for _, id in pairs)],
            )
        for (key, _), total in zip(pairs, totals, strict=True):
            self.totals[key] = int(total)

    async def _acquire_forever(self) -> None:
        """One call at a time, with every lease asked for meanwhile: under
        load a call carries many leases, and the client's cost per call
        (most of the CPU of a Redis lease) is shared by them."""
        while True:
            await self._acquire_wanted.wait()
            self._acquire_wanted = trio.Event()
            batch, self._asked = self._asked, []
            if not batch:
                continue
            answers: list[list[int]] | None = None
            if self.available:
                given_back, self._to_release = self._to_release, []
                args: list[str | int] = [int(self.ttl * 1000), len(given_back)]
                args += [id for _, id in given_back]
                for asked in batch:
                    args += [asked.id, len(asked.keys), *asked.limits]
                keys = [key for key, _ in given_back]
                keys += [key for asked in batch for key in asked.keys]
                try:
                    with trio.fail_after(self.timeout):
                        answers = await self._scripts["acquire"](keys=keys, args=args)
                except Exception as exc:
                    self._unavailable(exc)
            for n, asked in enumerate(batch):
                asked.answer = None if answers is None else answers[n]
                if asked.abandoned and asked.answer and not asked.answer[0]:
                    self._to_release.extend((key, asked.id) for key in asked.keys)
                    self._release_wanted.set()
                asked.done.set()

    async def _release_forever(self) -> None:
        """Leases given back go with the next acquire call; when none comes
        within RELEASE_DELAY, in a call of their own."""
        while True:
            await self._release_wanted.wait()
            await trio.sleep(RELEASE_DELAY)
            self._release_wanted = trio.Event()
            batch, self._to_release = self._to_release, []
            if not self.available or not batch:
                continue  # they run out with their TTL
            try:
                with trio.fail_after(self.timeout):
                    await self._scripts["release"](
                        keys=[key for key, _ in batch], args=[id for _, id in batch]
                    )
            except Exception as exc:
                self._unavailable(exc)

    async def _publish_forever(self) -> None:
        import json

        while True:
            await trio.sleep(PUBLISH_INTERVAL)
            if self.publish is None or not self.available:
                continue
            rows = self.publish()
            try:
                with trio.fail_after(self.timeout):
                    await self._client.set(
                        TUNNELS + self.admin_node,
                        json.dumps(rows),
                        px=int(self.ttl * 1000),
                    )
                    ids = await self._scripts["take_ends"](
                        keys=[ENDS + self.admin_node]
                    )
            except Exception as exc:
                self._unavailable(exc)
                continue
            for id in ids:
                self.end_local(id.decode() if isinstance(id, bytes) else str(id))

    async def all_tunnels(self) -> list[dict[str, Any]]:
        """Every node's published tunnels (this node's as last published)."""
        import json

        rows: list[dict[str, Any]] = []
        with trio.fail_after(self.timeout):
            keys = [key async for key in self._client.scan_iter(match=TUNNELS + "*")]
            if keys:
                for blob in await self._client.mget(keys):
                    if blob is not None:
                        rows.extend(json.loads(blob))
        return rows

    async def ask_end(self, node: str, id: str) -> None:
        """Ask ``node`` to end tunnel ``id`` (it does within a second)."""
        with trio.fail_after(self.timeout):
            await self._client.rpush(ENDS + node, [id])
            await self._client.pexpire(ENDS + node, int(self.ttl * 1000))

    def _unavailable(self, exc: BaseException) -> None:
        if not self.available:
            return
        self.available = False
        leaf = _leaf(exc)
        reason = "no answer in time" if isinstance(leaf, trio.TooSlowError) else leaf
        logger.warning(
            "state: Redis %s unavailable (%s): %s until it answers again",
            self.description,
            reason,
            "limits counted per node"
            if self.fail_open
            else "refusing new tunnels (503)",
        )
        self.on_availability(False)

    def _back(self) -> None:
        if self.available:
            return
        self.available = True
        logger.warning(
            "state: Redis %s answers again: limits shared again (%d live leases "
            "written back)",
            self.description,
            len(self.leases),
        )
        self.on_availability(True)

    # -- leases -----------------------------------------------------------------

    async def take(self, bounds: Sequence[Bound]) -> Lease:
        if self.available and self._client is not None:
            asked = _Asked(
                f"{self.node}:{next(self._ids)}",
                [PREFIX + bound.key for bound in bounds],
                [-1 if b.limit is None else b.limit for b in bounds],
            )
            self._asked.append(asked)
            self._acquire_wanted.set()
            try:
                await asked.done.wait()  # the batch's call is bounded
            finally:
                # Cancelled (the client left): a lease granted after all is
                # given back by the batch.
                asked.abandoned = not asked.done.is_set()
            answer = asked.answer
            if answer is not None:
                keys = asked.keys
                if answer[0]:
                    self.totals[keys[int(answer[0]) - 1]] = int(answer[1])
                    raise LimitReached(bounds[int(answer[0]) - 1])
                for key, total in zip(keys, answer[1:], strict=True):
                    self.totals[key] = int(total)
                local = self.local.take_now([Bound(b.key, None) for b in bounds])
                lease = self.leases[asked.id] = _RedisLease(self, asked.id, keys, local)
                return lease
        if not self.fail_open:
            raise StateUnavailable(f"Redis {self.description} unavailable")
        # Per-node limits meanwhile; written to Redis when it answers again.
        id = f"{self.node}:{next(self._ids)}"
        local = self.local.take_now(bounds)
        keys = [PREFIX + bound.key for bound in bounds]
        lease = self.leases[id] = _RedisLease(self, id, keys, local)
        return lease

    def _given_back(self, lease: _RedisLease) -> None:
        self.leases.pop(lease.id, None)
        for key in lease.keys:  # no entry per client seen long ago
            if key.removeprefix(PREFIX) not in self.local.counts:
                self.totals.pop(key, None)
        self._to_release.extend((key, lease.id) for key in lease.keys)
        self._release_wanted.set()

    def share(self, key: str) -> float:
        mine = self.local.counts.get(key, 0)
        total = max(self.totals.get(PREFIX + key, 0), mine)
        return mine / total if total else 1.0

    def counts(self) -> collections.Counter[str]:
        """This node's own leases per key."""
        return self.local.counts


class _Asked:
    """One lease waiting for the next acquire call."""

    __slots__ = ("abandoned", "answer", "done", "id", "keys", "limits")

    def __init__(self, id: str, keys: list[str], limits: list[int]) -> None:
        self.id = id
        self.keys = keys
        self.limits = limits
        self.done = trio.Event()
        self.answer: list[int] | None = None
        self.abandoned = False


class _RedisLease(Lease):
    __slots__ = ("_local", "_state", "id", "keys")

    def __init__(
        self, state: RedisState, id: str, keys: list[str], local: Lease
    ) -> None:
        self._state: RedisState | None = state
        self.id = id
        self.keys = keys
        self._local = local

    def release(self) -> None:
        state = self._state
        if state is None:
            return
        self._state = None
        self._local.release()
        state._given_back(self)
