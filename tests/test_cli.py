"""The ``hijack`` command: flags, help, and a real demo process."""

from __future__ import annotations

import argparse
import functools
import re
import signal
import subprocess
import sys

import pytest
import trio

from hijack._cli import build_parser, parse_host_port


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
    async with trio.open_nursery() as nursery:
        command = [sys.executable, "-m", "hijack", "demo", "--listen", "127.0.0.1:0"]
        process = await nursery.start(
            functools.partial(
                trio.run_process, command, stdout=subprocess.PIPE, check=False
            )
        )
        assert process.stdout is not None
        out = b""
        while b"listening on" not in out:
            chunk = await process.stdout.receive_some()
            assert chunk, "the demo exited early"
            out += chunk
        match = re.search(rb"listening on http://127\.0\.0\.1:(\d+)", out)
        assert match, out
        base = f"http://127.0.0.1:{int(match[1])}"
        direct = await trio.run_process(
            ["curl", "-sS", f"{base}/hello"], capture_stdout=True
        )
        assert direct.stdout.startswith(b"hello from hijack")
        tunnel = await trio.run_process(
            ["curl", "-sS", "-p", "-x", base, f"{base}/hello"], capture_stdout=True
        )
        assert tunnel.stdout.startswith(b"hello from hijack")
        process.send_signal(signal.SIGINT)
        await process.wait()
        assert process.returncode == 0
