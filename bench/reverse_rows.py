"""Reverse tunnels against OpenSSH's ``ssh -R`` (issue 17's rows), in one
run, interleaved rounds, best round reported and every round noted:

* throughput, one stream, through the published port: hijack over
  ``http://`` and over ``https://`` against ``ssh -R`` with
  ``aes128-gcm@openssh.com`` (OpenSSH's fastest cipher here: AES-NI);
* connections per second through the published port (connect, one byte
  each way, close; 4 client threads);
* idle published ports: RSS per port on the server and on the client,
  hijack with ``--pool 4`` against one ``ssh`` session with as many
  ``-R`` forwards.

Everything on loopback: sshd (generated host key and config, as root),
``hijack tcp --allow-reverse`` with ``hijack forward --reverse``, and a
target next to the client (an asyncio server in its own process). Run:

    make bench-reverse    (or: .venv/bin/python bench/reverse_rows.py [--quick])

Writes ``bench/RESULTS-reverse.md`` (``--no-write``: print only). Not part
of ``make bench``'s peer table: its peer is OpenSSH, not an HTTP server.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from procs import BENCH_PY, ROOT, ServerProc, rss_kib  # noqa: E402

PY = str(BENCH_PY) if BENCH_PY.exists() else sys.executable
SSHD = "/usr/sbin/sshd"
CIPHER = "aes128-gcm@openssh.com"
MB = 1_000_000

#: The service next to the client: ``send N\n`` -> N bytes then close;
#: ``echo\n`` -> echo until EOF.
TARGET = r"""
import asyncio, sys
CHUNK = b"x" * (1 << 20)
async def serve(reader, writer):
    line = await reader.readline()
    if line.startswith(b"send "):
        left = int(line.split()[1])
        while left > 0:
            writer.write(CHUNK[: min(left, len(CHUNK))])
            left -= len(CHUNK)
            await writer.drain()
    else:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()
async def main():
    port = int(sys.argv[1])
    server = await asyncio.start_server(serve, "127.0.0.1", port, backlog=1024)
    await server.serve_forever()
asyncio.run(main())
"""


def free_port() -> int:
    """A free port below the ephemeral range: the connection row leaves
    tens of thousands of ephemeral ports in TIME_WAIT, and a published port
    must not collide with a client's source port either."""
    for _ in range(200):
        port = random.randrange(10_000, 32_000)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise OSError("no free port in 10000-32000")


# -- load ---------------------------------------------------------------------


def download(port: int, size: int) -> float:
    """One stream of ``size`` bytes from the target through ``port``: MB/s."""
    buffer = bytearray(1 << 20)
    with socket.create_connection(("127.0.0.1", port)) as sock:
        start = time.perf_counter()
        sock.sendall(b"send %d\n" % size)
        got = 0
        while got < size:
            n = sock.recv_into(buffer)
            if not n:
                raise RuntimeError(f"stream ended after {got} of {size} bytes")
            got += n
        return size / MB / (time.perf_counter() - start)


def connection_rate(port: int, seconds: float, threads: int = 4) -> float:
    """Connections per second: connect, one byte each way, close."""
    counts = [0] * threads
    stop = time.perf_counter() + seconds
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            while time.perf_counter() < stop:
                with socket.create_connection(("127.0.0.1", port)) as sock:
                    sock.sendall(b"echo\nx")
                    if sock.recv(1) != b"x":
                        raise RuntimeError("no echo")
                counts[index] += 1
        except BaseException as exc:  # reported below
            errors.append(exc)

    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    if errors:
        raise RuntimeError(f"connection row failed: {errors[0]!r}")
    return sum(counts) / (time.perf_counter() - start)


# -- the contenders -------------------------------------------------------------


def hijack(*args: str) -> list[str]:
    return [PY, "-m", "hijack", "--log-level", "WARNING", *args]


@contextmanager
def hijack_reverse(
    tmp: Path, target: int, publics: list[int], *, tls: bool
) -> Iterator[tuple[ServerProc, ServerProc]]:
    """``hijack tcp --allow-reverse`` and a client publishing ``publics``."""
    port = free_port()
    server_args = ["tcp", "--listen", f"127.0.0.1:{port}", "--upstream", "127.0.0.1:9"]
    server_args += ["--allow-reverse", "127.0.0.1:1024-65535"]
    server_args += ["--access-log-format", "off", "--max-published-ports", "1000"]
    if tls:
        server_args += ["--tls-cert", str(tmp / "cert.pem")]
        server_args += ["--tls-key", str(tmp / "key.pem")]
    via = f"{'https' if tls else 'http'}://localhost:{port}"
    client_args = ["forward", "--reverse", "--via", via, "--pool", "4"]
    for public in publics:
        client_args += ["--publish", f"{public}:127.0.0.1:{target}"]
    os.environ["SSL_CERT_FILE"] = str(tmp / "cert.pem")
    name = "https" if tls else "http"
    with (
        ServerProc(f"reverse-{name}-server", hijack(*server_args), port) as server,
        ServerProc(
            f"reverse-{name}-client", hijack(*client_args), publics[-1], cwd=ROOT
        ) as client,
    ):
        for public in publics:
            wait_accepting(public)
        yield server, client


@contextmanager
def ssh_reverse(
    tmp: Path, sshd_port: int, target: int, publics: list[int]
) -> Iterator[ServerProc]:
    """``ssh -N -R`` for every port in ``publics`` (one session)."""
    argv = ["ssh", "-N", "-p", str(sshd_port), "-i", str(tmp / "id")]
    argv += ["-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"]
    argv += ["-o", "BatchMode=yes", "-o", "ExitOnForwardFailure=yes"]
    argv += ["-o", f"Ciphers={CIPHER}", "-o", "Compression=no", "-o", "LogLevel=ERROR"]
    for public in publics:
        argv += ["-R", f"127.0.0.1:{public}:127.0.0.1:{target}"]
    argv.append(f"{os.environ.get('USER', 'root')}@127.0.0.1")
    with ServerProc("reverse-ssh", argv, publics[-1]) as ssh:
        for public in publics:
            wait_accepting(public)
        yield ssh


def wait_accepting(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not published after {timeout}s")


def start_sshd(tmp: Path, stack: ExitStack) -> int:
    for name in ("host", "id"):
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / name)],
            check=True,
        )
    (tmp / "authorized_keys").write_text((tmp / "id.pub").read_text())
    port = free_port()
    (tmp / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {tmp / 'host'}\n"
        f"PidFile {tmp / 'sshd.pid'}\nAuthorizedKeysFile {tmp / 'authorized_keys'}\n"
        "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        "PermitRootLogin prohibit-password\nAllowTcpForwarding yes\n"
        f"Ciphers {CIPHER}\nMaxStartups 100\n"
    )
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    stack.enter_context(
        ServerProc(
            "reverse-sshd", [SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")], port
        )
    )
    return port


def make_cert(tmp: Path) -> None:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
         "-keyout", str(tmp / "key.pem"), "-out", str(tmp / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip


def session_rss_kib(ssh: ServerProc) -> int:
    """The ssh client plus every sshd process of its session (not the
    listener): what one more session with its forwards costs."""
    total = ssh.rss_kib()
    for stat in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmdline = stat.read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline and cmdline[0].startswith(b"sshd:"):
            total += rss_kib(int(stat.parent.name))
    return total


# -- the rows -------------------------------------------------------------------


def best_of(rounds: list[float]) -> float:
    return max(rounds)


def run(quick: bool) -> list[str]:
    size = 200 * MB if quick else 1000 * MB
    rounds = 1 if quick else 3
    seconds = 2.0 if quick else 4.0
    idle_ports = 10 if quick else 50
    results: dict[str, list[float]] = {}

    def note(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)
        print(f"  {key}: {value:.1f}", flush=True)

    with tempfile.TemporaryDirectory() as name, ExitStack() as stack:
        tmp = Path(name)
        make_cert(tmp)
        target = free_port()
        stack.enter_context(
            ServerProc(
                "reverse-target", [sys.executable, "-c", TARGET, str(target)], target
            )
        )
        sshd = start_sshd(tmp, stack)
        contenders: list[tuple[str, Callable[[list[int]], object]]] = [
            ("hijack http", lambda ps: hijack_reverse(tmp, target, ps, tls=False)),
            ("hijack https", lambda ps: hijack_reverse(tmp, target, ps, tls=True)),
            ("ssh -R", lambda ps: ssh_reverse(tmp, sshd, target, ps)),
        ]
        for n in range(rounds):
            print(f"round {n + 1}", flush=True)
            for label, open_tunnel in contenders:
                public = free_port()
                with open_tunnel([public]):  # type: ignore[attr-defined]
                    download(public, 20 * MB)  # warm-up
                    note(f"{label} MB/s", download(public, size))
                    note(f"{label} conn/s", connection_rate(public, seconds))
        print("idle published ports", flush=True)
        for label, open_tunnel in contenders:
            if label == "hijack https":
                continue
            one, many = [free_port()], [free_port() for _ in range(idle_ports + 1)]
            measured = []
            for publics in (one, many):
                with open_tunnel(publics) as opened:  # type: ignore[attr-defined]
                    time.sleep(1.0)  # let the pools fill
                    if label == "ssh -R":
                        measured.append((session_rss_kib(opened), 0))
                    else:
                        server, client = opened
                        measured.append((server.rss_kib(), client.rss_kib()))
            per_server = (measured[1][0] - measured[0][0]) / idle_ports
            per_client = (measured[1][1] - measured[0][1]) / idle_ports
            note(f"{label} KiB/port server", per_server)
            if label != "ssh -R":
                note(f"{label} KiB/port client", per_client)
    return report(results, rounds, size, idle_ports)


def report(
    results: dict[str, list[float]], rounds: int, size: int, idle_ports: int
) -> list[str]:
    def best(key: str) -> float:
        return best_of(results[key])

    def every(key: str) -> str:
        return ", ".join(f"{v:.0f}" for v in results[key])

    ssh_rate, ssh_conns = best("ssh -R MB/s"), best("ssh -R conn/s")
    lines = [
        "| row | hijack | ssh -R | ratio | target |",
        "|---|---|---|---|---|",
    ]
    for label, goal in (("hijack http", 2.0), ("hijack https", 1.0)):
        rate = best(f"{label} MB/s")
        lines.append(
            f"| throughput, one stream, {label.split()[1]}:// | {rate:.0f} MB/s "
            f"({every(f'{label} MB/s')}) | {ssh_rate:.0f} MB/s "
            f"({every('ssh -R MB/s')}) | {rate / ssh_rate:.2f}x | >= {goal:g}x |"
        )
    conns = best("hijack http conn/s")
    lines.append(
        f"| connections per second, http:// | {conns:.0f} "
        f"({every('hijack http conn/s')})"
        f" | {ssh_conns:.0f} ({every('ssh -R conn/s')}) | {conns / ssh_conns:.2f}x"
        " | >= 1.0x |"
    )
    server = best_of([-v for v in results["hijack http KiB/port server"]]) * -1
    client = best_of([-v for v in results["hijack http KiB/port client"]]) * -1
    ssh_mem = results["ssh -R KiB/port server"][0]
    lines.append(
        f"| idle published port, --pool 4 | server {server:.0f} KiB, client "
        f"{client:.0f} KiB | sshd + ssh {ssh_mem:.0f} KiB | | stated |"
    )
    lines.append("")
    lines.append(
        f"{rounds} interleaved rounds, best shown, every round in brackets; "
        f"{size // MB} MB per stream; ssh with {CIPHER} (its fastest cipher "
        f"here) for both throughput rows; idle memory: RSS with "
        f"{idle_ports + 1} ports minus with 1, per port."
    )
    return lines


def ssh_version() -> str:
    done = subprocess.run(["ssh", "-V"], capture_output=True, text=True, check=False)
    return done.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    for program in ("ssh", "ssh-keygen", "openssl", SSHD):
        if shutil.which(program) is None:
            raise SystemExit(f"bench/reverse_rows.py needs {program}")
    started = datetime.datetime.now(datetime.UTC)
    lines = run(args.quick)
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        (BENCH / "RESULTS-reverse.md").write_text(
            f"# Reverse tunnels against ssh -R\n\n{started:%Y-%m-%d %H:%M} UTC, "
            f"{platform.node()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, {ssh_version()}, load average "
            f"{os.getloadavg()[0]:.1f} at the end"
            f"; `python bench/reverse_rows.py{' --quick' if args.quick else ''}`.\n\n"
            f"{text}\n"
        )


if __name__ == "__main__":
    main()
