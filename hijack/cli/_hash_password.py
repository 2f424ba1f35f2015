"""``hijack hash-password``: a password hash for a users file."""

from __future__ import annotations

import argparse
import getpass
import sys

from ._command import Command, CommandLine

__all__ = ["COMMAND"]


def run(args: argparse.Namespace, line: CommandLine) -> int:
    from ..tunnel.users import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            print("hijack hash-password: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("hijack hash-password: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


COMMAND = Command(
    name="hash-password",
    help="print a password hash for a users file",
    description="Read a password (prompted twice on a terminal, else the "
    "first line of stdin) and print its salted scrypt hash, for the "
    "'password' key of a users file.",
    run=run,
)
