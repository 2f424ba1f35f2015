"""``python -m hijack``: the same as the ``hijack`` command."""

from ._cli import main

raise SystemExit(main())
