"""What one subcommand of ``hijack`` is (:class:`Command`), what its
handler builder is given (:class:`HandlerContext`), and the one error a
start-up or a reload reports (:class:`StartupError`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from .._exchange import Handler
from ..tunnel.lifecycle import TunnelHook

__all__ = [
    "Command",
    "CommandLine",
    "HandlerContext",
    "Hooks",
    "StartupError",
    "only_one",
    "reason",
]


def reason(exc: Exception) -> str:
    """What a start-up error says of ``exc``: an OSError's text without
    the file name the message already gives; others as they say."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc)


class StartupError(Exception):
    """A start-up or reload problem, said in one line that names the flag,
    the file or the key and what is wrong with it.

    At start-up the command prints ``PROG: MESSAGE`` on stderr and exits
    with status 2 before anything is bound (or after closing what was); on
    a SIGHUP reload the message is logged and the running configuration
    keeps serving. ``prog`` is ``hijack COMMAND`` when known."""

    def __init__(self, message: str, *, prog: str | None = None) -> None:
        super().__init__(message)
        self.prog = prog


def only_one(
    group: BaseExceptionGroup[Any], *kinds: type[BaseException]
) -> BaseException:
    """What a run that failed inside nurseries (trio wraps what they raise
    in exception groups) failed with, when that is only exceptions of one
    of ``kinds`` (a StartupError, a Ctrl-C): the first of them, to report
    in one line. Else the group itself, with its traceback: a bug."""
    for kind in kinds:
        matched, rest = group.split(kind)
        if matched is not None and rest is None:
            first: BaseException = matched
            while isinstance(first, BaseExceptionGroup):
                first = first.exceptions[0]
            return first
    return group


@dataclass(slots=True)
class Hooks:
    """What the command plugs into the handlers it builds (metrics today).
    Owned by the Service, so a reload hands the same hooks to the new
    handler."""

    on_tunnel: TunnelHook | None = None
    on_websocket_close: Callable[[Any], None] | None = None
    on_published: Callable[[int], None] | None = None


@dataclass(slots=True)
class HandlerContext:
    """Given to a command's handler builder, at start-up and on each reload.

    ``port``: the TCP port the service listens on (None on a UNIX socket).
    ``hooks``: see :class:`Hooks`. ``kept``: objects a builder keeps from
    one build to the next (the users file's ``Users``, the ``TunnelLimits``
    counting open tunnels): one dict per Service, never a module global.
    """

    command: str
    port: int | None
    hooks: Hooks = field(default_factory=Hooks)
    kept: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CommandLine:
    """The command line as typed, and how to read it again (with its
    ``--config`` file) for a reload or a worker."""

    argv: Sequence[str]
    reparse: Callable[[], argparse.Namespace]


#: Builds the request handler of a server command from its options. Raises
#: StartupError for anything wrong (a file that does not read, ...).
HandlerBuilder = Callable[[argparse.Namespace, HandlerContext], Handler]


@dataclass(frozen=True, kw_only=True, slots=True)
class Command:
    """One subcommand. Exactly one of ``handler`` and ``run`` is given.

    ``add_arguments(parser)``: the command's own options.
    ``groups``: shared option groups it takes, by name (``_options.GROUPS``:
    ``server`` for every HTTP server, ``tunnel``, ``chaining``, ``team``).
    ``check(args)``: what cannot be said by one option's type (two options
    that go together, one that needs another); raise StartupError. Run
    before anything is bound, and again on every reload.
    ``handler(args, context)``: an HTTP server command: the Service binds,
    serves this handler, reloads it on SIGHUP, runs workers.
    ``hint(where)``: what a server prints under its "listening on WHERE"
    line (the demo's commands to try).
    ``run(args, line)``: any other command; returns the exit status.
    """

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None] = lambda parser: None
    groups: tuple[str, ...] = ()
    check: Callable[[argparse.Namespace], None] = lambda args: None
    handler: HandlerBuilder | None = None
    hint: Callable[[str], str] | None = None
    run: Callable[[argparse.Namespace, CommandLine], int] | None = None

    def __post_init__(self) -> None:
        if (self.handler is None) == (self.run is None):
            raise TypeError(f"command {self.name}: give handler or run, not both")
