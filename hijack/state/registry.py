"""The registry of live tunnels that the admin listener shows and ends.

Off by default (``tunnels.enabled`` is False): :meth:`TunnelRegistry.open`
then gives one shared record that does nothing, so a server without
``--admin`` pays one attribute test per tunnel. With it on, every tunnel
the upgrades start is a :class:`LiveTunnel` until it ends; its owner
says how to end it, either a cancel scope around its relay
(``with record.scope(): await relay(...)``) or the relay hub's tunnel
(``record.hand_over(hub_tunnel)``), and ``record.end()`` (the admin's
``DELETE /tunnels/ID``) uses that: the relay closes both streams, so the
client sees the connection end.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import socket
import time
from collections.abc import Iterator
from typing import Any

import trio

from .._hub import HubTunnel
from .._relay import RelayStats

__all__ = ["LiveTunnel", "TunnelRegistry", "tunnels"]


class LiveTunnel:
    """One live tunnel: who, where to, since when, bytes so far, and how to
    end it. ``state``: ``open`` while relaying, ``ending`` once asked to
    end, ``closed`` after."""

    __slots__ = (
        "_asked_to_end",
        "_hub",
        "_registry",
        "_scope",
        "client",
        "id",
        "kind",
        "started",
        "state",
        "stats",
        "target",
        "user",
    )

    def __init__(
        self,
        registry: TunnelRegistry | None,
        id: str,
        kind: str,
        client: str,
        target: str,
        user: str | None,
        stats: RelayStats,
    ) -> None:
        self._registry = registry
        self.id = id
        self.kind = kind
        self.client = client
        self.target = target
        self.user = user
        self.stats = stats
        self.started = time.time()
        self.state = "open"
        self._scope: trio.CancelScope | None = None
        self._asked_to_end = False
        self._hub: HubTunnel | None = None

    def scope(self) -> _RecordScope | contextlib.nullcontext[None]:
        """``with record.scope(): await relay(...)``: the relay is what
        :meth:`end` cancels; the record leaves the registry at the end."""
        return _NO_SCOPE if self._registry is None else _RecordScope(self)

    def hand_over(self, hub_tunnel: HubTunnel) -> None:
        """The tunnel now runs in the relay hub: :meth:`end` closes it
        there; the record leaves the registry once the hub closed it."""
        if self._registry is not None:
            self._hub = hub_tunnel

    @property
    def ended(self) -> bool:
        """Ended through :meth:`end` (an operator), not by itself."""
        return self._asked_to_end

    @property
    def closed(self) -> bool:
        return self.state == "closed" or (self._hub is not None and self._hub.closed)

    def end(self) -> bool:
        """Ask the tunnel to end now (from any task of its process)."""
        if self.closed:
            return False
        self.state = "ending"
        self._asked_to_end = True
        if self._hub is not None:
            self._hub.close()
        elif self._scope is not None:
            self._scope.cancel()
        return True

    def close(self) -> None:
        self.state = "closed"
        if self._registry is not None:
            self._registry._records.pop(self.id, None)

    def as_json(self, node: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "user": self.user,
            "client": self.client,
            "target": self.target,
            "node": node,
            "started": round(self.started, 3),
            "bytes_up": self.stats.a_to_b,
            "bytes_down": self.stats.b_to_a,
            "state": "closed" if self.closed else self.state,
        }


_NO_SCOPE = contextlib.nullcontext()


class _RecordScope:
    __slots__ = ("_cancel", "_record")

    def __init__(self, record: LiveTunnel) -> None:
        self._record = record
        self._cancel = trio.CancelScope()

    def __enter__(self) -> None:
        self._record._scope = self._cancel
        self._cancel.__enter__()

    def __exit__(self, *exc_info: Any) -> bool:
        try:
            return bool(self._cancel.__exit__(*exc_info))
        finally:
            self._record.close()


class TunnelRegistry:
    """This process's live tunnels, by id. ``node`` names the process in
    the admin's answers (``host/pid``); ids are unique across processes
    and machines (a random prefix per process)."""

    def __init__(self) -> None:
        self.enabled = False
        self.node = f"{socket.gethostname()}/{os.getpid()}"
        self._prefix = secrets.token_hex(3)
        self._ids = itertools.count(1)
        self._records: dict[str, LiveTunnel] = {}
        self._prune_at = 64
        self._null = LiveTunnel(None, "", "", "", "", None, RelayStats())
        self._null.state = "closed"  # nothing to end

    def enable(self) -> None:
        self.enabled = True
        self.node = f"{socket.gethostname()}/{os.getpid()}"

    def open(
        self, kind: str, client: str, target: str, user: str | None, stats: RelayStats
    ) -> LiveTunnel:
        """Register a tunnel that starts relaying now (or get the shared
        record that does nothing, when the registry is off)."""
        if not self.enabled:
            return self._null
        record = LiveTunnel(
            self, f"{self._prefix}-{next(self._ids)}", kind, client, target, user, stats
        )
        self._records[record.id] = record
        if len(self._records) >= self._prune_at:
            self._prune()
        return record

    def _prune(self) -> None:
        """Drop the hub's tunnels that ended (they leave no task to say so)."""
        for record in [r for r in self._records.values() if r.closed]:
            record.close()
        self._prune_at = max(64, 2 * len(self._records))

    def find(self, id: str) -> LiveTunnel | None:
        record = self._records.get(id)
        return None if record is None or record.closed else record

    def records(
        self, *, user: str | None = None, kind: str | None = None
    ) -> Iterator[LiveTunnel]:
        self._prune()
        for record in list(self._records.values()):
            if (user is None or record.user == user) and (
                kind is None or record.kind == kind
            ):
                yield record


#: The process's registry (enabled by ``--admin``).
tunnels = TunnelRegistry()
