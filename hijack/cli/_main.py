"""The ``hijack`` command's entry point: the parser built from the
registered commands, and ``main()``.

Every server subcommand listens on ``--listen HOST:PORT`` (default
127.0.0.1:8080) or ``--unix PATH``, prints where it listens, and exits
cleanly on Ctrl-C or SIGTERM through a graceful shutdown (a second Ctrl-C
stops at once). Anything wrong at start-up is one line on stderr and exit
status 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .. import __version__
from . import (
    _admin,
    _demo,
    _echo,
    _forward,
    _hash_password,
    _proxy,
    _socks,
    _tcp,
    _wsbridge,
)
from ._command import Command, CommandLine, StartupError
from ._config_file import with_config_file
from ._logging import BatchedStreamHandler, quiet_record_fields
from ._options import GROUPS
from ._service import run_server

__all__ = ["COMMANDS", "build_parser", "main"]

#: Every subcommand, in the order ``hijack --help`` lists them. A new
#: command is a module with a ``COMMAND`` and one line here.
COMMANDS: tuple[Command, ...] = (
    _proxy.COMMAND,
    _socks.COMMAND,
    _echo.COMMAND,
    _tcp.COMMAND,
    _wsbridge.COMMAND,
    _forward.COMMAND,
    _demo.COMMAND,
    _hash_password.COMMAND,
    _admin.TUNNELS_COMMAND,
)

#: Exit status of a start-up error (argparse's own for a usage error).
STARTUP_ERROR = 2


class Parser(argparse.ArgumentParser):
    """An argparse parser whose errors are a StartupError (one line, no
    usage text; and on a reload, no exit)."""

    def error(self, message: str) -> NoReturn:
        raise StartupError(message, prog=self.prog)


def build_parser(commands: Sequence[Command] = COMMANDS) -> argparse.ArgumentParser:
    parser = Parser(
        prog="hijack",
        description="Serve WebSocket, CONNECT tunnel and raw TCP upgrades over "
        "HTTP/1.1, or forward local TCP connections through such a server.",
    )
    parser.add_argument("--version", action="version", version=f"hijack {__version__}")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: INFO; one line per tunnel at INFO)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    groups = {name: build() for name, build in GROUPS.items()}  # built once
    for command in commands:
        # Plain parsers as parents: argparse only copies their options.
        parents: list[Any] = [groups[name] for name in command.groups]
        subparser = subparsers.add_parser(
            command.name,
            parents=parents,
            help=command.help,
            description=command.description,
        )
        command.add_arguments(subparser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    line = CommandLine(argv, lambda: parser.parse_args(with_config_file(parser, argv)))
    prog = "hijack"
    try:
        args = line.reparse()
        command = next(c for c in COMMANDS if c.name == args.command)
        prog = f"hijack {command.name}"
        command.check(args)
        quiet_record_fields()
        logging.basicConfig(
            level=args.log_level,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            handlers=[BatchedStreamHandler(sys.stderr)],
        )
        if command.run is not None:
            return command.run(args, line)
        return run_server(command, args, line)
    except StartupError as exc:
        print(f"{exc.prog or prog}: {exc}", file=sys.stderr, flush=True)
        return STARTUP_ERROR
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were set
        return 130
