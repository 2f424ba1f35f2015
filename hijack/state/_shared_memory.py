"""Counts shared by the workers of one machine (``--workers N``), exact,
with nothing to install: a table in shared memory that the supervisor
creates and every worker maps.

Why shared memory and not the supervisor answering each worker over a
socket: a lease is then a lock, a hash and two small reads and writes in
the worker itself (about 10 us, see ``bench/``), with no round trip to
another process on the path of every tunnel set-up, and the supervisor
stays a process that only starts, watches and replaces workers.

Layout (``Table``): a header, one *owner* word per column (the pid of the
worker that writes that column, 0: free), then ``slots`` rows, each
``digest | count per column | the user's two token buckets``. A key is
found by its 16-byte BLAKE2b digest (open addressing, linear probing); a
worker only ever changes its own column, and a key's count is the sum of
its row. Every read-check-write happens under one ``lockf`` lock on the
shared file, so two workers never both take the last place; the kernel
drops a lock whose holder dies, even by SIGKILL.

Ownership: a worker claims a free column when it attaches. When a worker
exits, however it exits, the supervisor (which waits on every worker)
clears its column (:meth:`Table.release_owner`): its tunnels are given back
at once. The table is the supervisor's, so the counts survive a SIGHUP
rolling restart: the old workers' tunnels stay counted in their columns
until they end or their worker exits.

Bandwidth per user: the user's row also holds a token bucket per
direction, drawn from by every worker under the same lock, with the
machine's monotonic clock: one budget for all the workers.
"""

from __future__ import annotations

import fcntl
import hashlib
import mmap
import os
import struct
import time
from collections.abc import Sequence

from .._throttle import TokenBucket
from ._base import Bound, Lease, LimitReached, State, StateUnavailable

__all__ = ["STATE_FD_ENV", "SharedBucket", "SharedState", "Table"]

#: The environment variable that hands the table's fd to a worker.
STATE_FD_ENV = "HIJACK_STATE_FD"

_MAGIC = b"HJST"
_HEADER = struct.Struct("<4sII")  # magic, slots, columns
_HEADER_SIZE = 64
_DIGEST = 16
_EMPTY = bytes(_DIGEST)
_OWNER = struct.Struct("<q")
_COUNT = struct.Struct("<i")
_BUCKET = struct.Struct("<dd")  # tokens, stamp (time.monotonic)
#: Rows: distinct clients and users with a tunnel open at once (a row
#: whose counts are all zero is reused).
DEFAULT_SLOTS = 8192


def _digest(key: str) -> bytes:
    return hashlib.blake2b(key.encode(), digest_size=_DIGEST).digest()


class Table:
    """The shared table over a file descriptor (a memfd the supervisor
    creates and passes on). Not thread-safe; safe across processes."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        size = os.fstat(fd).st_size
        self.map = mmap.mmap(fd, size)
        magic, slots, columns = _HEADER.unpack_from(self.map, 0)
        self.slots: int = slots
        self.columns: int = columns
        if magic != _MAGIC:
            raise ValueError(f"fd {fd} is not a hijack state table")
        self._counts = struct.Struct(f"<{self.columns}i")
        self._rows_at = _HEADER_SIZE + _OWNER.size * self.columns
        self._buckets_at = _DIGEST + self._counts.size
        self.row_size = self._buckets_at + 2 * _BUCKET.size

    @classmethod
    def create(cls, columns: int, slots: int = DEFAULT_SLOTS) -> Table:
        """A new zeroed table in a memfd (inheritable by the workers)."""
        fd = os.memfd_create("hijack-state", 0)
        rows_at = _HEADER_SIZE + _OWNER.size * columns
        row_size = _DIGEST + 4 * columns + 2 * _BUCKET.size
        os.ftruncate(fd, rows_at + slots * row_size)
        with mmap.mmap(fd, rows_at + slots * row_size) as header:
            _HEADER.pack_into(header, 0, _MAGIC, slots, columns)
        return cls(fd)

    def close(self) -> None:
        self.map.close()

    # -- the lock ---------------------------------------------------------

    def lock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_EX)

    def unlock(self) -> None:
        fcntl.lockf(self.fd, fcntl.LOCK_UN)

    # -- owners -------------------------------------------------------------

    def claim_column(self, pid: int) -> int:
        self.lock()
        try:
            for column in range(self.columns):
                at = _HEADER_SIZE + _OWNER.size * column
                if _OWNER.unpack_from(self.map, at)[0] == 0:
                    _OWNER.pack_into(self.map, at, pid)
                    return column
        finally:
            self.unlock()
        raise StateUnavailable("the shared state table has no free column")

    def release_owner(self, pid: int) -> int:
        """Clear the column of worker ``pid`` (it exited): every tunnel it
        counted is given back. Returns how many leases that was."""
        self.lock()
        try:
            for column in range(self.columns):
                at = _HEADER_SIZE + _OWNER.size * column
                if _OWNER.unpack_from(self.map, at)[0] == pid:
                    _OWNER.pack_into(self.map, at, 0)
                    return self._clear_column(column)
            return 0
        finally:
            self.unlock()

    def _clear_column(self, column: int) -> int:
        released = 0
        offset = self._rows_at + _DIGEST + 4 * column
        for _ in range(self.slots):
            count = _COUNT.unpack_from(self.map, offset)[0]
            if count:
                released += count
                _COUNT.pack_into(self.map, offset, 0)
            offset += self.row_size
        return released

    # -- rows (call under the lock) ------------------------------------------

    def row(self, digest: bytes) -> int:
        """The offset of ``digest``'s row, made if missing (reusing a row
        whose counts are all zero). Call under the lock."""
        slots, size, rows_at = self.slots, self.row_size, self._rows_at
        start = int.from_bytes(digest[:4], "little") % slots
        reusable = -1
        for probe in range(slots):
            at: int = rows_at + ((start + probe) % slots) * size
            found = self.map[at : at + _DIGEST]
            if found == digest:
                return at
            if found == _EMPTY:
                break
            if reusable < 0 and not any(self._counts.unpack_from(self.map, at + 16)):
                reusable = at
        else:
            if reusable < 0:
                raise StateUnavailable("the shared state table is full")
        at = at if reusable < 0 else reusable
        self.map[at : at + _DIGEST] = digest
        self.map[at + self._buckets_at : at + size] = bytes(2 * _BUCKET.size)
        return at

    def total(self, at: int) -> int:
        return int(sum(self._counts.unpack_from(self.map, at + _DIGEST)))

    def count(self, at: int, column: int) -> int:
        return int(_COUNT.unpack_from(self.map, at + _DIGEST + 4 * column)[0])

    def add(self, at: int, column: int, n: int) -> None:
        offset = at + _DIGEST + 4 * column
        _COUNT.pack_into(self.map, offset, _COUNT.unpack_from(self.map, offset)[0] + n)

    def bucket_at(self, at: int, direction: int) -> int:
        return at + self._buckets_at + direction * _BUCKET.size


class SharedState(State):
    """A worker's view of the supervisor's :class:`Table`: leases owned by
    this worker's column, exact across every worker of the machine."""

    description = "shared by the workers"

    def __init__(self, table: Table, pid: int | None = None) -> None:
        self.table = table
        self.column = table.claim_column(os.getpid() if pid is None else pid)

    @classmethod
    def from_environment(cls) -> SharedState | None:
        fd_text = os.environ.get(STATE_FD_ENV, "")
        return cls(Table(int(fd_text))) if fd_text else None

    def take_now(self, bounds: Sequence[Bound]) -> Lease:
        table = self.table
        digests = [_digest(bound.key) for bound in bounds]
        table.lock()
        try:
            rows = [table.row(digest) for digest in digests]
            for bound, at in zip(bounds, rows, strict=True):
                if bound.limit is not None and table.total(at) >= bound.limit:
                    raise LimitReached(bound)
            for at in rows:
                table.add(at, self.column, 1)
        finally:
            table.unlock()
        return _SharedLease(self, rows)

    def share(self, key: str) -> float:
        table = self.table
        table.lock()
        try:
            at = table.row(_digest(key))
            total = table.total(at)
            return table.count(at, self.column) / total if total else 1.0
        finally:
            table.unlock()

    def buckets(self, key: str, rate: int) -> tuple[TokenBucket, TokenBucket]:
        """The user's two buckets, in the table: one budget for all workers.
        Call while this worker holds a lease on ``key`` (its row stays)."""
        table = self.table
        table.lock()
        try:
            at = table.row(_digest(key))
        finally:
            table.unlock()
        return SharedBucket(table, at, 0, rate), SharedBucket(table, at, 1, rate)


class _SharedLease(Lease):
    __slots__ = ("_rows", "_state")

    def __init__(self, state: SharedState, rows: list[int]) -> None:
        self._state: SharedState | None = state
        self._rows = rows

    def release(self) -> None:
        state = self._state
        if state is None:
            return
        self._state = None
        table = state.table
        table.lock()
        try:
            for at in self._rows:
                if table.count(at, state.column) > 0:
                    table.add(at, state.column, -1)
        finally:
            table.unlock()


class SharedBucket(TokenBucket):
    """A :class:`TokenBucket` whose tokens live in the table: every worker
    draws from the same ones. Uses the machine's monotonic clock (the same
    in every process), not the caller's ``now``."""

    __slots__ = ("_at", "_table")

    def __init__(self, table: Table, row: int, direction: int, rate: int) -> None:
        super().__init__(rate)
        self._table = table
        self._at = table.bucket_at(row, direction)

    def _refill(self, now: float) -> float:
        table, at = self._table, self._at
        table.lock()
        try:
            tokens, stamp = _BUCKET.unpack_from(table.map, at)
            clock = time.monotonic()
            if stamp == 0.0:
                tokens = float(self.burst)  # a new row: full, as a new bucket
            elif clock > stamp:
                tokens = min(self.burst, tokens + (clock - stamp) * self.rate)
            _BUCKET.pack_into(table.map, at, tokens, clock)
        finally:
            table.unlock()
        return float(tokens)

    def consume(self, n: int) -> None:
        table, at = self._table, self._at
        table.lock()
        try:
            tokens, stamp = _BUCKET.unpack_from(table.map, at)
            _BUCKET.pack_into(table.map, at, tokens - n, stamp)
        finally:
            table.unlock()
