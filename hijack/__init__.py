"""hijack: a Trio + h11 HTTP/1.1 server whose handlers can take the connection.

Public API only; the code lives in private modules.
"""

from ._access_log import AccessRecord as AccessRecord
from ._access_log import JSONAccessFormatter as JSONAccessFormatter
from ._address import format_address as format_address
from ._address import join_host_port as join_host_port
from ._address import split_host_port as split_host_port
from ._config import Limits as Limits
from ._connection import Connection as Connection
from ._connection import ConnState as ConnState
from ._connection import PeerCredentials as PeerCredentials
from ._connection import PeerInfo as PeerInfo
from ._connection import TLSInfo as TLSInfo
from ._errors import ClientDisconnected as ClientDisconnected
from ._errors import HijackError as HijackError
from ._errors import UsageError as UsageError
from ._exchange import Handler as Handler
from ._exchange import Sniffer as Sniffer
from ._exchange import StreamHandler as StreamHandler
from ._hijack import Hijacked as Hijacked
from ._hub import Hub as Hub
from ._hub import HubTunnel as HubTunnel
from ._hub import Limiter as Limiter
from ._keepalive import copy_tcp_keepalive as copy_tcp_keepalive
from ._keepalive import set_tcp_keepalive as set_tcp_keepalive
from ._listeners import UnixSocketListener as UnixSocketListener
from ._listeners import open_unix_listener as open_unix_listener
from ._message import Headers as Headers
from ._message import HTTPError as HTTPError
from ._message import Request as Request
from ._message import Response as Response
from ._proxyproto import ProxyHeader as ProxyHeader
from ._proxyproto import ProxyProtocol as ProxyProtocol
from ._proxyproto import ProxyProtocolError as ProxyProtocolError
from ._proxyproto import ProxyTLS as ProxyTLS
from ._proxyproto import encode_proxy_header as encode_proxy_header
from ._proxyproto import parse_proxy_header as parse_proxy_header
from ._proxyproto import proxy_header_for as proxy_header_for
from ._relay import RelayStats as RelayStats
from ._relay import relay as relay
from ._replay import ReplayStream as ReplayStream
from ._server import Server as Server
from ._systemd import listeners_from_fds as listeners_from_fds
from ._systemd import systemd_listen_fds as systemd_listen_fds
from ._throttle import Throttle as Throttle
from ._throttle import TokenBucket as TokenBucket

#: The release; the distribution is ``trio-hijack`` (``pip install
#: trio-hijack``), the import name ``hijack``.
__version__ = "0.1.0"

__all__ = [
    "AccessRecord",
    "ClientDisconnected",
    "ConnState",
    "Connection",
    "HTTPError",
    "Handler",
    "Headers",
    "HijackError",
    "Hijacked",
    "Hub",
    "HubTunnel",
    "JSONAccessFormatter",
    "Limiter",
    "Limits",
    "PeerCredentials",
    "PeerInfo",
    "ProxyHeader",
    "ProxyProtocol",
    "ProxyProtocolError",
    "ProxyTLS",
    "RelayStats",
    "ReplayStream",
    "Request",
    "Response",
    "Server",
    "Sniffer",
    "StreamHandler",
    "TLSInfo",
    "Throttle",
    "TokenBucket",
    "UnixSocketListener",
    "UsageError",
    "copy_tcp_keepalive",
    "encode_proxy_header",
    "format_address",
    "join_host_port",
    "listeners_from_fds",
    "open_unix_listener",
    "parse_proxy_header",
    "proxy_header_for",
    "relay",
    "set_tcp_keepalive",
    "split_host_port",
    "systemd_listen_fds",
]

__version__ = "0.1.0"
