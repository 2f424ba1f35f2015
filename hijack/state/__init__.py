"""Where limits are counted: in this process (the default), shared by the
workers of one machine (``--workers N``: shared memory the supervisor
owns), or shared by every node (``--state redis://...``). One interface,
:class:`State`: leases with an owner and a time to live. And the registry
of live tunnels the admin listener shows (:mod:`hijack.state.registry`)."""

from ._base import Bound as Bound
from ._base import Lease as Lease
from ._base import LimitReached as LimitReached
from ._base import SplitBucket as SplitBucket
from ._base import State as State
from ._base import StateUnavailable as StateUnavailable
from ._local import LocalState as LocalState

__all__ = [
    "Bound",
    "Lease",
    "LimitReached",
    "LocalState",
    "SplitBucket",
    "State",
    "StateUnavailable",
]
