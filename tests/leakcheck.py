"""Leak check: no new open fd and no new live trio task after a test.

A snapshot is taken before the test (fd numbers with their targets from
``/proc/self/fd``, and every task reachable from the root task); after the
test, once the fixtures that started servers have been torn down, the check
waits (bounded) for things to settle and fails listing whatever is new.

What is legitimately alive and so ignored: every task that already existed
at the snapshot (pytest-trio's fixture tasks, the test task, trio's system
tasks) and the checking task itself. Tasks that pytest-trio's ``nursery``
fixture is still cancelling are not leaks: the check waits for them. The
relay's shared splice pipe pool keeps *idle* pipes open on purpose (two fds
each): they are closed before the fd count (:func:`release_caches`); a pipe
still in use by a live relay is reported.

Enable it for a module with ``no_leaks = leak_fixture()`` plus
``pytestmark = pytest.mark.usefixtures("no_leaks")``, or make server fixtures
depend on it (see the conftest snippet in the README section).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import pytest
import trio
import trio.testing

__all__ = [
    "Snapshot",
    "leak_fixture",
    "leaks_since",
    "live_tasks",
    "no_leaks",
    "open_fds",
    "release_caches",
]

FD_DIR = "/proc/self/fd"


def open_fds() -> dict[int, str]:
    """Open fds of this process and what they point at."""
    fds = {}
    for name in os.listdir(FD_DIR):
        try:
            fds[int(name)] = os.readlink(os.path.join(FD_DIR, name))
        except OSError:  # the fd listdir itself used, now closed
            continue
    return fds


def release_caches() -> None:
    """Close what the package keeps open on purpose between uses: the idle
    pipes of the relay's shared splice pool (it stays usable)."""
    try:
        from hijack import _splice
    except ImportError:  # pragma: no cover - no splice fast path here
        return
    _splice.DEFAULT_PIPE_POOL.close()


def _walk(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
    yield task
    for nursery in task.child_nurseries:
        for child in nursery.child_tasks:
            yield from _walk(child)


def live_tasks() -> set[trio.lowlevel.Task]:
    """Every task of the current run, found from the root task down."""
    root = trio.lowlevel.current_root_task()
    return set() if root is None else set(_walk(root))


@dataclass(frozen=True)
class Snapshot:
    fds: dict[int, str]
    tasks: frozenset[trio.lowlevel.Task]

    @classmethod
    def take(cls) -> Snapshot:
        return cls(open_fds(), frozenset(live_tasks()))


def leaks_since(before: Snapshot) -> list[str]:
    """What is open now that was not at ``before``, one line per item."""
    release_caches()
    me = trio.lowlevel.current_task()
    problems = [
        f"task {task.name!r}" for task in live_tasks() - before.tasks if task is not me
    ]
    now = open_fds()
    # Compare fd number *and* target: a closed fd may be reused for another.
    new = {fd: target for fd, target in now.items() if before.fds.get(fd) != target}
    if len(now) > len(before.fds) or new.keys() - before.fds.keys():
        problems += [f"fd {fd} -> {target}" for fd, target in sorted(new.items())]
    return problems


async def settle_and_check(before: Snapshot, rounds: int = 200) -> None:
    """Let teardown finish (bounded), then fail if anything is left."""
    problems = leaks_since(before)
    for _ in range(rounds):
        if not problems:
            return
        await trio.testing.wait_all_tasks_blocked()
        problems = leaks_since(before)
        if problems:
            await trio.sleep(0.01)  # real sockets: let the kernel deliver EOFs
            problems = leaks_since(before)
    if problems:
        pytest.fail("leaked after the test:\n  " + "\n  ".join(problems))


@asynccontextmanager
async def no_leaks(rounds: int = 200) -> AsyncIterator[None]:
    """``async with no_leaks(): ...`` fails if the body leaves a task or fd."""
    before = Snapshot.take()
    yield
    await settle_and_check(before, rounds)


def leak_fixture(name: str = "no_leaks") -> Callable[..., Any]:
    """A function-scoped async fixture named ``name`` running :func:`no_leaks`
    around whatever depends on it."""

    async def fixture() -> AsyncIterator[None]:
        async with no_leaks():
            yield

    return pytest.fixture(name=name)(fixture)
