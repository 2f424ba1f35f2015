"""SOCKS5: a sans-I/O codec (:mod:`hijack.socks.codec`) and a server
(:class:`SocksServer`, CONNECT and UDP ASSOCIATE) that runs in the core
:class:`~hijack.Server` through its ``sniff`` hook."""

from .codec import SocksError as SocksError
from .server import SocksServer as SocksServer

__all__ = ["SocksError", "SocksServer"]
