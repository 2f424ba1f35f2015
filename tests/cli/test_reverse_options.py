"""The reverse-tunnel options of the command, refused before anything
starts: each bad value is one line on stderr naming the option, exit 2.
In-process (``hijack.cli.main``) where the check runs before any server;
one subprocess for the check made while building the handler."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hijack.cli import main
from hijack.tunnel.users import hash_password

FORWARD = ["forward", "--reverse", "--via", "http://127.0.0.1:1"]
TCP = ["tcp", "--upstream", "127.0.0.1:9"]
SOON = ["--reconnect-max", "soon"]
TWO_WORKERS = ["--workers", "2", "--listen", "127.0.0.1:0"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            [*FORWARD, "--remote", "nine", "--target", "127.0.0.1:1"],
            "argument --remote",
        ),
        (
            [*FORWARD, "--remote", "9000", "--target", "127.0.0.1:1", "--pool", "-1"],
            "--pool must be >= 0",
        ),
        (
            [*FORWARD, "--remote", "9000", "--target", "127.0.0.1:1", *SOON],
            "argument --reconnect-max: expected seconds > 0, got 'soon'",
        ),
        (
            [*TCP, "--allow-reverse", "9000", "--reverse-keepalive", "0"],
            "argument --reverse-keepalive: expected seconds > 0, got '0'",
        ),
        (
            [*TCP, "--allow-reverse", "9000", "--max-published-ports", "0"],
            "--max-published-ports must be >= 1",
        ),
        (
            # A name that is not localhost may reach anyone: not loopback.
            [*TCP, "--listen", "gateway.example:0", "--allow-reverse", "9000"],
            "--allow-reverse needs --users when listening on gateway.example",
        ),
    ],
)
def test_a_bad_reverse_option_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err


def test_users_with_reverse_rules_need_one_worker(tmp_path: Path) -> None:
    """The users file gives a user rules of their own: reverse tunnels are
    on without --allow-reverse, and so is the one-process rule."""
    users = tmp_path / "users.toml"
    users.write_text(
        f'[users.alice]\npassword = "{hash_password("x", n=2, r=1)}"\n'
        'reverse = ["9000"]\n'
    )
    done = subprocess.run(
        [sys.executable, "-m", "hijack", *TCP, "--users", str(users), *TWO_WORKERS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"--users {users}: reverse tunnels need one process" in done.stderr
