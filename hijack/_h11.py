"""h11, or its compiled build when installed.

``pip install hijack[speed]`` adds h11-mypyc (module ``h11_mypyc``: the same
code and API, compiled with mypyc), which roughly doubles a bare h11 loop's
request rate. Plain h11 stays the default dependency; set ``HIJACK_PURE_H11=1``
to ignore the compiled one. The whole test suite runs against both.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import h11
else:
    h11 = None
    if not os.environ.get("HIJACK_PURE_H11"):
        with contextlib.suppress(ImportError):
            import h11_mypyc as h11
    if h11 is None:
        import h11

__all__ = ["h11"]
