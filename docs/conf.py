"""Sphinx configuration of the hijack documentation site (``make docs``).

MyST Markdown pages, the furo theme, the API from docstrings (autodoc), and
our own extension (``_ext/hijack_docs.py``) that writes the command-line
reference from the real argument parser, the config keys, the metric table
and the benchmark charts at build time. No intersphinx: the build reads
nothing from the network.
"""

from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
sys.path.insert(0, str(DOCS / "_ext"))
sys.path.insert(0, str(DOCS.parent))

project = "hijack"
author = "the hijack authors"
copyright = "2026, the hijack authors"

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "hijack_docs",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
exclude_patterns = ["_build", "_generated/README.md"]
root_doc = "index"

# MyST: `{directive}` fences, ```console for shell, $-free Markdown; headings
# get anchors so that [text](page.md#heading) links are checked.
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 4

html_theme = "furo"
html_title = "hijack"
html_static_path: list[str] = []

# Autodoc: signatures with their type hints in the description, members in
# source order, nothing private.
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": True}
# A trio stream's send_all says what trio's does: not repeated here.
autodoc_inherit_docstrings = False

# -n (nitpicky) checks every cross reference. Types from other projects
# cannot be resolved without intersphinx (which would need the network):
# those are named in the text but not linked.
nitpicky = True
nitpick_ignore_regex = [
    (
        r"py:.*",
        r"(trio|h11|ssl|socket|websockets|prometheus_client|collections|"
        r"contextlib|ipaddress|logging|argparse|pathlib|os|types|typing|_typeshed|"
        r"enum|datetime|asyncio|concurrent|python_socks|dataclasses|abc)(\..*)?",
    ),
    # Private modules and names, and type aliases documented in prose.
    (r"py:.*", r"(.*\.)?_[A-Za-z].*"),
    (
        r"py:.*",
        r"(hijack\.)?(StateHook|HeaderInput|Body|Handler|ConnectHook|"
        r"RequestHook|TunnelCallback|Network|AcceptErrorHook|TunnelHook|Mode|"
        r"StreamPair|Dialer|Dial|ProxyVersion|Resolver|IPAddress|App|Compression)",
    ),
    # Short names of trio's and websockets' types in signatures and docstrings.
    (
        r"py:.*",
        r"(Stream|Listener|AsyncResource|HalfCloseableStream|SendStream|"
        r"ReceiveStream|SocketStream|SSLStream|Nursery|Origin|Subprotocol|State|"
        r"LoggerLike|WebSocketURI|ClientExtensionFactory|ServerExtensionFactory|"
        r"re\.Pattern|Frame|Request|Response|Event|Lock|CapacityLimiter)(\..*)?",
    ),
]
