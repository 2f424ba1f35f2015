"""The ``hijack`` command: flags, help, and a real demo process."""

from __future__ import annotations

import argparse
import re
import signal

import pytest
import trio

from hijack.cli._arguments import parse_host_port
from hijack.cli._main import build_parser

from ..hijack_process import run_hijack


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("[::1]:443", ("::1", 443)),
        ("localhost:1", ("localhost", 1)),
    ],
)
def test_parse_host_port(text: str, expected: tuple[str, int]) -> None:
    assert parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text", ["8080", ":80", "host:", "host:x", "host:0", "h:70000"]
)
def test_parse_host_port_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_host_port(text)


@pytest.mark.parametrize(
    ("command", "flags"),
    [
        (
            "proxy",
            [
                "--listen",
                "--unix",
                "--allow-port",
                "--allow",
                "--deny",
                "--allow-private",
                "--auth",
                "--proxy-protocol",
                "--send-proxy-protocol",
            ],
        ),
        (
            "echo",
            [
                "--listen",
                "--unix",
                "--max-message-size",
                "--no-compression",
                "--ping-interval",
                "--ping-timeout",
                "--proxy-protocol",
            ],
        ),
        (
            "tcp",
            [
                "--listen",
                "--unix",
                "--upstream",
                "--proxy-protocol",
                "--send-proxy-protocol",
            ],
        ),
        (
            "wsbridge",
            [
                "--listen",
                "--unix",
                "--upstream",
                "--targets",
                "--allow-origin",
                "--proxy-protocol",
                "--send-proxy-protocol",
            ],
        ),
        ("forward", ["--listen", "--via", "--target", "--mode"]),
        ("demo", ["--listen", "--unix", "--proxy-protocol"]),
    ],
)
def test_help_explains_every_flag(command: str, flags: list[str]) -> None:
    subparsers = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    text = subparsers.choices[command].format_help()
    for flag in flags:
        assert re.search(rf"{flag}\b[^\n]*\n?\s+\S", text), flag


async def test_demo_tunnels_to_itself_and_exits_on_ctrl_c() -> None:
    async with run_hijack(["demo", "--listen", "127.0.0.1:0"]) as demo:
        base = f"http://127.0.0.1:{await demo.port()}"
        direct = await trio.run_process(
            ["curl", "-sS", f"{base}/hello"], capture_stdout=True
        )
        assert direct.stdout.startswith(b"hello from hijack")
        tunnel = await trio.run_process(
            ["curl", "-sS", "-p", "-x", base, f"{base}/hello"], capture_stdout=True
        )
        assert tunnel.stdout.startswith(b"hello from hijack")
        demo.signal(signal.SIGINT)
        assert await demo.wait() == 0


def test_a_command_is_one_registration() -> None:
    """The seam other commands use (hijack/cli/__init__.py): a Command with
    its own options and the shared groups it names, added to the list."""
    from hijack.cli._command import Command
    from hijack.cli._main import COMMANDS

    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--colour", default="blue")

    thing = Command(
        name="thing",
        help="a new command",
        description="A command added by one line.",
        groups=("server", "tunnel"),
        add_arguments=add_arguments,
        handler=lambda args, context: _no_handler,
    )
    parser = build_parser([*COMMANDS, thing])
    args = parser.parse_args(["thing", "--listen", "127.0.0.1:0", "--colour", "red"])
    assert (args.command, args.listen, args.colour) == (
        "thing",
        ("127.0.0.1", 0),
        "red",
    )
    assert args.idle_timeout == 300.0 and args.workers == 1
    assert not hasattr(args, "run") and not hasattr(args, "on_tunnel")
    with pytest.raises(TypeError, match="handler or run"):
        Command(name="neither", help="", description="")


async def _no_handler(request: object) -> None:
    return None
