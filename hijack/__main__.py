"""``python -m hijack``: the same as the ``hijack`` command."""

from .cli import main

raise SystemExit(main())
