"""The ``hijack`` command: servers, clients and the supervisor built on the
library. Nothing below this package imports it (``tools/check_layers.py``
holds that), so a library user never pays for the command.

``main()`` is the entry point (``hijack`` on the PATH and ``python -m
hijack``)."""

from ._main import main as main

__all__ = ["main"]
