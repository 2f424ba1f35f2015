"""Shared fixtures: a server on a real loopback port, plus raw-socket helpers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio

from hijack import Handler, Server  # noqa: F401  (re-exported for tests)
