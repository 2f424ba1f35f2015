"""hijack: a Trio + h11 HTTP/1.1 server whose handlers can take the connection.

Public API only; the code lives in private modules.
"""

from ._address import format_address as format_address
from ._address import join_host_port as join_host_port
from ._address import split_host_port as split_host_port
from ._config import Limits as Limits
from ._connection import Connection as Connection
from ._connection import ConnState as ConnState
from ._connection import PeerCredentials as PeerCredentials
from ._connection import TLSInfo as TLSInfo
from ._errors import ClientDisconnected as ClientDisconnected
from ._errors import HijackError as HijackError
from ._errors import UsageError as UsageError
from ._exchange import Handler as Handler
from ._hijack import Hijacked as Hijacked
from ._listeners import UnixSocketListener as UnixSocketListener
from ._listeners import open_unix_listener as open_unix_listener
from ._message import Headers as Headers
from ._message import HTTPError as HTTPError
from ._message import Request as Request
from ._message import Response as Response
from ._relay import RelayStats as RelayStats
from ._relay import relay as relay
from ._replay import ReplayStream as ReplayStream
from ._server import Server as Server
from ._throttle import Throttle as Throttle
from ._throttle import TokenBucket as TokenBucket

__all__ = [
    "ClientDisconnected",
    "ConnState",
    "Connection",
    "HTTPError",
    "Handler",
    "Headers",
    "HijackError",
    "Hijacked",
    "Limits",
    "PeerCredentials",
    "RelayStats",
    "ReplayStream",
    "Request",
    "Response",
    "Server",
    "TLSInfo",
    "Throttle",
    "TokenBucket",
    "UnixSocketListener",
    "UsageError",
    "format_address",
    "join_host_port",
    "open_unix_listener",
    "relay",
    "split_host_port",
]

__version__ = "0.1.0"
