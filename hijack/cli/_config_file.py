"""``--config FILE.toml``: the same options as the command line, in a file.

Keys are the long option names, with dashes or underscores
(``allow-port = [443, 8443]``, ``allow_private = true``,
``listen = "0.0.0.0:8080"``), the command's own (``log-level``) included.
The file is turned into command-line tokens
placed before the real ones, so argparse checks and converts both the same
way, and an option given on the command line wins: for single options
because the later one counts, for repeatable options (and for the
``--listen``/``--unix`` choice) because the file's tokens for an option the
command line also gives are dropped.
"""

from __future__ import annotations

import argparse
import tomllib
from collections.abc import Sequence
from typing import Any

__all__ = ["with_config_file"]


def with_config_file(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` with the tokens of its ``--config`` file (if any) inserted
    right after the command name. Errors go through ``parser.error``."""
    argv = list(argv)
    command = _command_index(parser, argv)
    if command is None:
        return argv
    rest = argv[command + 1 :]
    path = _config_path(rest)
    if path is None:
        return argv
    subparser = _subparsers(parser)[argv[command]]
    try:
        with open(path, "rb") as file:
            table = tomllib.load(file)
    except OSError as exc:
        subparser.error(f"--config {path}: {exc.strerror or exc}")
    except ValueError as exc:  # TOMLDecodeError, UnicodeDecodeError
        subparser.error(f"--config {path}: {exc}")
    given = _given_options(subparser, rest)
    given_before = _given_options(parser, argv[:command])
    tokens: list[str] = []
    tokens_before: list[str] = []  # options of the command itself: --log-level
    for key, value in table.items():
        action = _action_for(subparser, key)
        if action is not None and action.dest not in ("config", "help"):
            if action.dest not in given:  # else the command line says otherwise
                tokens.extend(_tokens(subparser, path, key, action, value))
            continue
        action = _action_for(parser, key)
        if action is None or isinstance(action, argparse._HelpAction):
            subparser.error(f"--config {path}: unknown option {key!r}")
        if action.dest not in given_before:
            tokens_before.extend(_tokens(parser, path, key, action, value))
    return [*tokens_before, *argv[: command + 1], *tokens, *rest]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _command_index(parser: argparse.ArgumentParser, argv: list[str]) -> int | None:
    commands = _subparsers(parser)
    for index, token in enumerate(argv):
        if token in commands:
            return index
    return None


def _config_path(rest: list[str]) -> str | None:
    for index, token in enumerate(rest):
        if token == "--config" and index + 1 < len(rest):
            return rest[index + 1]
        if token.startswith("--config="):
            return token.partition("=")[2]
    return None


def _action_for(parser: argparse.ArgumentParser, key: str) -> argparse.Action | None:
    flag = "--" + key.replace("_", "-")
    for action in parser._actions:
        if flag in action.option_strings:
            return action
    return None


def _given_options(parser: argparse.ArgumentParser, rest: list[str]) -> set[str]:
    """The dests the command line sets, plus their mutually exclusive peers."""
    given = set()
    for token in rest:
        if token.startswith("--"):
            action = _action_for(parser, token[2:].partition("=")[0])
            if action is not None:
                given.add(action.dest)
    for group in parser._mutually_exclusive_groups:
        dests = {action.dest for action in group._group_actions}
        if dests & given:
            given |= dests
    return given


def _tokens(
    parser: argparse.ArgumentParser,
    path: str,
    key: str,
    action: argparse.Action,
    value: Any,
) -> list[str]:
    flag = action.option_strings[-1]
    if action.nargs == 0:  # store_true
        if not isinstance(value, bool):
            parser.error(f"--config {path}: {key} must be true or false")
        return [flag] if value else []
    values = value if isinstance(value, list) else [value]
    if len(values) != 1 and not isinstance(action, argparse._AppendAction):
        parser.error(f"--config {path}: {key} takes one value")
    out: list[str] = []
    for item in values:
        if isinstance(item, dict | list | bool):
            parser.error(f"--config {path}: {key}: expected a string or number")
        _check_value(parser, path, key, action, str(item))
        out.append(f"{flag}={item}")
    return out


def _check_value(
    parser: argparse.ArgumentParser,
    path: str,
    key: str,
    action: argparse.Action,
    text: str,
) -> None:
    """Convert and check ``text`` as argparse will, now, so a bad value is
    reported with the file and the key it came from (argparse would name
    only the flag, as if it had been typed)."""
    try:
        parser._check_value(action, parser._get_value(action, text))
    except argparse.ArgumentError as exc:
        parser.error(f"--config {path}: {key}: {exc.message}")
