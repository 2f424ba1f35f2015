"""SOCKS5 rows (issue 18): hijack socks against pproxy and Dante's danted.

* ``socks setup``: SOCKS5 CONNECT (no authentication) + a 4-byte round
  trip + close, 32 at once: tunnels per second and server CPU per tunnel;
  hijack, pproxy (``-l socks5://``), danted.
* ``socks throughput``: one stream through a SOCKS5 tunnel to the sink,
  upload and download; hijack, pproxy, danted, and the sink directly.
* ``udp associate``: DNS-sized (40-byte) query/answer round trips through
  a UDP ASSOCIATE relay to a UDP echo (8 clients, one query in flight
  each): hijack, danted, and the echo directly.
* ``proxy --socks``: the HTTP CONNECT set-up row against ``hijack proxy``
  and ``hijack proxy --socks`` (the first-byte sniff must not slow HTTP).

Every server runs in its own process from the same virtualenv (bench/.venv
if ``make bench-venv`` made it, else the project's .venv: both hold
hijack and pproxy), with INFO logging off (``--log-level WARNING``; pproxy
and danted log nothing per tunnel either). danted forks worker processes:
its CPU is the whole process group's.

Run with the others (``python bench/run.py --rows socks``) or alone:
``python bench/socks_rows.py [--quick] [--rounds=N] [setup,throughput,udp,proxy]``
(prints the table, writes nothing).
"""

from __future__ import annotations

import shutil
import socket
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import loadgen
from loadgen import HOST, MAX_OPS, Window, recv_exact, run_workers
from procs import BENCH, ROOT, ServerProc, free_port

if TYPE_CHECKING:
    from run import Bench

DANTED = shutil.which("danted") or "/usr/sbin/danted"
MIB = 1 << 20


def _port() -> int:
    """A free TCP port; waits (bounded) while the set-up rows' TIME-WAIT
    connections hold the whole ephemeral range."""
    for _ in range(90):
        try:
            return free_port()
        except OSError:
            time.sleep(1)
    return free_port()


def venv_bin() -> Path:
    bench = BENCH / ".venv" / "bin"
    return bench if (bench / "hijack").exists() else ROOT / ".venv" / "bin"


# -- a SOCKS5 client, blocking, standard library only ----------------------------


def socks_connect(proxy_port: int, target_port: int) -> socket.socket:
    """A SOCKS5 CONNECT (no authentication) to 127.0.0.1:target_port."""
    sock = loadgen.connect(proxy_port)
    sock.sendall(b"\x05\x01\x00")
    if _recv(sock, 2) != b"\x05\x00":
        sock.close()
        raise ConnectionError("SOCKS5 method refused")
    sock.sendall(
        b"\x05\x01\x00\x01" + socket.inet_aton(HOST) + struct.pack("!H", target_port)
    )
    reply = _recv(sock, 10)
    if reply[1] != 0:
        sock.close()
        raise ConnectionError(f"SOCKS5 reply {reply[1]}")
    return sock


def _recv(sock: socket.socket, size: int) -> bytes:
    buf = bytearray(size)
    recv_exact(sock, memoryview(buf))
    return bytes(buf)


def socks_setup_worker(
    proxy_port: int, echo_port: int, inflight: int, window: Window
) -> tuple[int, int]:
    """As loadgen.setup_worker, with SOCKS5 CONNECT."""

    def open_batch(socks: list[socket.socket]) -> None:
        for _ in range(inflight):
            socks.append(socks_connect(proxy_port, echo_port))

    return loadgen.tunnel_batches(inflight, window, open_batch)


def socks_transfer(
    proxy_port: int | None, sink_port: int, upload: bool, size: int, start: float,
    time_limit: float,
) -> tuple[int, float, float]:  # fmt: skip
    """As loadgen.stream_transfer, through a SOCKS5 tunnel."""
    original = loadgen.open_tunnel
    loadgen.open_tunnel = socks_connect  # in this worker only
    try:
        return loadgen.stream_transfer(
            proxy_port, sink_port, upload, size, start, time_limit
        )
    finally:
        loadgen.open_tunnel = original


def udp_worker(
    proxy_port: int | None, echo_port: int, window: Window
) -> tuple[int, int]:
    """One client: 40-byte queries, one in flight, through a UDP
    association (or straight to the echo with ``proxy_port`` None).
    Returns (answers in the window, timeouts)."""
    query = bytes(range(40))
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.settimeout(1.0)
    control = None
    try:
        if proxy_port is None:
            to: tuple[str, int] = (HOST, echo_port)
            datagram = query
        else:
            control = loadgen.connect(proxy_port)
            control.sendall(b"\x05\x01\x00")
            if _recv(control, 2) != b"\x05\x00":
                raise ConnectionError("SOCKS5 method refused")
            udp.bind((HOST, 0))
            control.sendall(
                b"\x05\x03\x00\x01" + socket.inet_aton(HOST)
                + struct.pack("!H", udp.getsockname()[1])
            )  # fmt: skip
            reply = _recv(control, 10)
            if reply[1] != 0:
                raise ConnectionError(f"UDP ASSOCIATE reply {reply[1]}")
            to = (socket.inet_ntoa(reply[4:8]), struct.unpack("!H", reply[8:10])[0])
            datagram = (
                b"\x00\x00\x00\x01" + socket.inet_aton(HOST)
                + struct.pack("!H", echo_port) + query
            )  # fmt: skip
        done = lost = 0
        loadgen._sleep_until(window.start)
        for _ in range(MAX_OPS):
            now = time.monotonic()
            if now >= window.end:
                break
            udp.sendto(datagram, to)
            try:
                answer = udp.recv(2048)
            except TimeoutError:
                lost += 1
                continue
            if not answer.endswith(query):
                lost += 1
            elif now >= window.begin and time.monotonic() <= window.end:
                done += 1
        return done, lost
    finally:
        udp.close()
        if control is not None:
            control.close()


def udp_echo(sock: socket.socket, stop: threading.Event) -> None:
    """The DNS server stand-in: echoes datagrams (a thread of this process)."""
    sock.settimeout(0.2)
    with sock:
        while not stop.is_set():
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            sock.sendto(data, source)


@contextmanager
def udp_echo_thread() -> Iterator[int]:
    """A UDP echo on a port of its own (no TCP port taken for it: the
    set-up rows can leave the ephemeral range full of TIME-WAIT)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((HOST, 0))
    port: int = sock.getsockname()[1]
    stop = threading.Event()
    thread = threading.Thread(target=udp_echo, args=(sock, stop), daemon=True)
    thread.start()
    try:
        yield port
    finally:
        stop.set()
        thread.join()


# -- the servers -------------------------------------------------------------------


def danted_conf(port: int, path: Path) -> Path:
    path.write_text(
        "logoutput: stderr\n"
        f"internal: 127.0.0.1 port = {port}\n"
        "external: 127.0.0.1\n"
        "clientmethod: none\nsocksmethod: none\n"
        "user.privileged: root\nuser.unprivileged: nobody\n"
        "client pass { from: 0.0.0.0/0 to: 0.0.0.0/0 }\n"
        "socks pass { from: 0.0.0.0/0 to: 0.0.0.0/0 "
        "command: connect udpassociate udpreply }\n"
    )
    return path


def servers(
    port: int, allowed: list[int], *, pproxy: bool = True
) -> list[tuple[str, list[str]]]:
    bin_ = venv_bin()
    allow = [a for p in allowed for a in ("--allow-port", str(p))]
    subjects = [
        ("hijack", [str(bin_ / "hijack"), "--log-level", "WARNING", "socks",
                    "--listen", f"127.0.0.1:{port}", "--allow-private", *allow]),
    ]  # fmt: skip
    if pproxy:
        subjects.append(
            ("pproxy", [str(bin_ / "pproxy"), "-l", f"socks5://127.0.0.1:{port}"])
        )
    if Path(DANTED).exists():
        conf = danted_conf(port, BENCH / "logs" / f"danted-{port}.conf")
        subjects.append(("danted", [DANTED, "-f", str(conf), "-N", "1"]))
    return subjects


def _run_background(
    fn: Callable[..., Any], args: list[tuple[Any, ...]]
) -> Callable[[], list[Any]]:
    results: list[Any] = []
    thread = threading.Thread(target=lambda: results.extend(run_workers(fn, args)))
    thread.start()

    def join() -> list[Any]:
        thread.join()
        return results

    return join


# -- rows ------------------------------------------------------------------------


def row_socks(b: Bench, parts: str = "setup,throughput,udp,proxy") -> None:
    (BENCH / "logs").mkdir(exist_ok=True)
    rows = {"setup": _setup, "throughput": _throughput, "udp": _udp,
            "proxy": _proxy_socks}  # fmt: skip
    for part in parts.split(","):
        rows[part](b)


def _setup(b: Bench) -> None:
    from run import _per, upstream

    row = "socks setup"
    echo_port = _port()
    with ServerProc("echo-upstream", upstream("echo", echo_port), echo_port):
        port = _port()
        for name, argv in b.cfg.rounds * servers(port, [echo_port]):
            with b.guard(row, name), b.server(row, name, argv, port) as proc:
                window = b.cfg.window()
                join = _run_background(
                    socks_setup_worker, [(port, echo_port, 8, window)] * 4
                )
                cpu = b.observe(proc, row, window)
                results = join()
                rate = sum(r[0] for r in results) / window.duration
                failures = sum(r[1] for r in results)
                note = f"{failures} failed batches" if failures else ""
                b.add(row, "SOCKS5 CONNECT + 4-byte round trip + close, 32 at once",
                      name, rate, "tunnels/s", note,
                      cpu=_per(cpu, rate, window), cpu_unit="tunnel")  # fmt: skip


def _throughput(b: Bench) -> None:
    from run import _maybe_server, upstream

    row = "socks throughput"
    size = b.cfg.throughput_bytes
    sink_port = _port()
    with ServerProc("sink", upstream("sink", sink_port), sink_port):
        port = _port()
        subjects: list[tuple[str, list[str] | None]] = [("direct (no proxy)", None)]
        subjects += servers(port, [sink_port])
        for name, argv in b.cfg.throughput_rounds * subjects:
            with b.guard(row, name), _maybe_server(b, row, name, argv, port) as proc:
                proxy = None if proc is None else port
                for up in (True, False):
                    workload = "1 stream " + ("upload" if up else "download")
                    cpu0 = 0.0 if proc is None else proc.cpu_seconds()
                    start = time.monotonic() + 0.3
                    [(moved, t0, t1)] = run_workers(
                        socks_transfer,
                        [
                            (
                                proxy,
                                sink_port,
                                up,
                                size,
                                start,
                                b.cfg.transfer_time_limit,
                            )
                        ],
                    )
                    cpu = None
                    if proc is not None:
                        cpu = (proc.cpu_seconds() - cpu0) / (moved / 1e6)
                    note = (
                        ""
                        if moved >= size
                        else f"time limit: {moved / 1e6:.0f} MB moved"
                    )
                    b.add(row, workload, name, moved / (t1 - t0) / 1e6, "MB/s", note,
                          cpu=cpu, cpu_unit="MB")  # fmt: skip


def _udp(b: Bench) -> None:
    row = "udp associate"
    with udp_echo_thread() as echo_port:
        port = _port()
        subjects: list[tuple[str, list[str] | None]] = [("direct (no proxy)", None)]
        subjects += servers(port, [echo_port], pproxy=False)
        from run import _maybe_server

        for name, argv in b.cfg.rounds * subjects:
            with b.guard(row, name), _maybe_server(b, row, name, argv, port) as proc:
                window = b.cfg.window()
                proxy = None if proc is None else port
                join = _run_background(udp_worker, [(proxy, echo_port, window)] * 8)
                cpu = None if proc is None else b.observe(proc, row, window)
                results = join()
                rate = sum(r[0] for r in results) / window.duration
                lost = sum(r[1] for r in results)
                per = (
                    None if cpu is None or not rate else cpu / (rate * window.duration)
                )
                b.add(row, "40-byte query/answer round trips, 8 clients",
                      name, rate, "queries/s", f"{lost} lost" if lost else "",
                      cpu=per, cpu_unit="query")  # fmt: skip


def _proxy_socks(b: Bench) -> None:
    from run import _per, upstream

    row = "proxy --socks"
    echo_port = _port()
    bin_ = venv_bin()
    with ServerProc("echo-upstream", upstream("echo", echo_port), echo_port):
        port = _port()
        base = [str(bin_ / "hijack"), "--log-level", "WARNING", "proxy",
                "--listen", f"127.0.0.1:{port}", "--allow-private",
                "--allow-port", str(echo_port)]  # fmt: skip
        subjects = [("hijack", [*base, "--socks"]), ("hijack proxy", base)]
        for name, argv in b.cfg.rounds * subjects:
            with b.guard(row, name), b.server(row, name, argv, port) as proc:
                window = b.cfg.window()
                join = _run_background(
                    loadgen.setup_worker, [(port, echo_port, 8, window)] * 4
                )
                cpu = b.observe(proc, row, window)
                results = join()
                rate = sum(r[0] for r in results) / window.duration
                b.add(row, "HTTP CONNECT + 4-byte round trip + close, 32 at once",
                      name, rate, "tunnels/s",
                      cpu=_per(cpu, rate, window), cpu_unit="tunnel")  # fmt: skip


def main() -> None:
    import run

    quick = "--quick" in sys.argv
    cfg = run.Config(quick=quick, profile=False)
    if quick:
        cfg.throughput_bytes = 128_000_000
        cfg.warmup, cfg.duration = 0.3, 1.0
        cfg.rounds = cfg.throughput_rounds = 1
    for arg in sys.argv[1:]:
        if arg.startswith("--rounds="):
            cfg.rounds = cfg.throughput_rounds = int(arg.removeprefix("--rounds="))
    b = run.Bench(cfg)
    parts = [a for a in sys.argv[1:] if not a.startswith("--")]
    row_socks(b, *parts)
    print()
    print("\n".join(run.table(b)))
    print()
    print("\n".join(run.verdicts(b)))
    for note in b.notes:
        print(f"note: {note}")


if __name__ == "__main__":
    main()
