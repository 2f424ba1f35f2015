"""``hijack hash-password`` on a terminal: the password is asked twice
(without echo) and must match. The command runs on a real pseudo-terminal
as its stdin, in a session of its own (no controlling terminal, so getpass
prompts on stderr and reads the terminal on stdin)."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time

from hijack.tunnel.users import PasswordHash


def read_until(fd: int, marker: bytes, seen: bytearray) -> None:
    deadline = time.monotonic() + 30
    while marker not in seen:
        left = deadline - time.monotonic()
        assert left > 0, f"no {marker!r} in {bytes(seen)!r}"
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            assert chunk, f"EOF before {marker!r} in {bytes(seen)!r}"
            seen += chunk


def hash_password_on_a_terminal(first: bytes, second: bytes) -> tuple[int, str, str]:
    primary, secondary = os.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "hijack", "hash-password"],
            stdin=secondary,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        os.close(secondary)
        assert process.stderr is not None and process.stdout is not None
        prompts = bytearray()
        err = process.stderr.fileno()
        # Answer each prompt once it is shown: getpass flushes what was
        # typed before it turned echo off.
        read_until(err, b"password: ", prompts)
        os.write(primary, first + b"\n")
        read_until(err, b"again: ", prompts)
        os.write(primary, second + b"\n")
        out, rest = process.communicate(timeout=60)
    finally:
        os.close(primary)
    return process.returncode, out.decode(), (bytes(prompts) + rest).decode()


def test_the_password_is_asked_twice_and_hashed() -> None:
    code, out, _ = hash_password_on_a_terminal(b"correct horse", b"correct horse")
    assert code == 0
    assert PasswordHash.parse(out.strip()).matches(b"correct horse")


def test_two_different_passwords_are_refused() -> None:
    code, out, err = hash_password_on_a_terminal(b"correct horse", b"battery")
    assert code == 1 and out == ""
    assert "hijack hash-password: the passwords differ" in err
