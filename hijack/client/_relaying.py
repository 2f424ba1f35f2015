"""How the client side relays its forwarded connections: one relay hub
for all of them where the platform has one (Linux), else a ``relay()``
per connection. Shared by ``forward``, ``socks_forward`` and ``reverse``."""

from __future__ import annotations

import trio

from .. import Hub, relay

__all__ = ["relay_through", "start_hub"]


async def start_hub(nursery: trio.Nursery) -> Hub | None:
    """A hub serving in ``nursery``, or None where there is none."""
    try:
        hub = Hub()
    except RuntimeError:  # not Linux: every connection awaits relay()
        return None
    await nursery.start(hub.serve)
    return hub


async def relay_through(
    hub: Hub | None, a: trio.abc.Stream, b: trio.abc.Stream
) -> None:
    """Relay ``a`` and ``b`` until both ends are done, through ``hub`` if
    it can take them (plain sockets); both are closed on return."""
    if hub is not None and hub.can_take(a, b):
        await hub.relay(a, b)
    else:
        await relay(a, b)
