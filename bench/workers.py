"""``--workers 2``: the whole machine, against one process.

Two parts:

* ``python bench/workers.py spread``: how one inherited listening socket
  and ``SO_REUSEPORT`` spread connections over 2 worker processes, and what
  each does to a client during a rolling restart. This is the measurement
  behind the supervisor's choice (see ``hijack/_supervisor.py``).
* ``row_workers`` (``python bench/run.py --rows workers``): tunnel setup,
  hijacked echo and plain HTTP, one process against ``--workers 2``,
  interleaved rounds, same load generator as the other rows.

The worker processes for the rows are ``hijack_servers.py`` run by the
CLI's supervisor (``hijack.cli._supervisor``, a private module: the bench's
handlers are not CLI commands). The supervisor hands them the socket the
way it hands it to ``hijack`` workers (``HIJACK_WORKER_FDS``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import BENCH, BENCH_PY, LOGS

if TYPE_CHECKING:
    import trio
    from run import Bench

    import hijack

WORKERS = 2
#: The supervisor's worker protocol (hijack/_supervisor.py).
FDS_ENV = "HIJACK_WORKER_FDS"
READY_ENV = "HIJACK_WORKER_READY_FD"


# -- the rows (run.py) ---------------------------------------------------------


def workers_server(kind: str, port: int, *extra: str) -> list[str]:
    return [str(BENCH_PY), __file__, "supervise", kind, str(port), *extra]


def _wait_ready(log: Path, timeout: float = 30.0) -> None:
    """The supervisor's port opens before its workers serve: wait for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and "workers ready" in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"workers not ready after {timeout}s; see {log}")


def row_workers(b: Bench) -> None:
    import loadgen
    from procs import ServerProc, free_port
    from run import HIJACK, _background, _per, _slug, hijack_server, run_wrk, upstream

    many = f"hijack --workers {WORKERS}"
    echo_port = free_port()
    with ServerProc("echo-upstream-workers", upstream("echo", echo_port), echo_port):
        port = free_port()
        allow = ("--allow-port", str(echo_port))
        cases = [
            ("tunnel setup, whole machine", "connect", allow),
            ("hijacked echo, whole machine", "echo", ()),
            ("plain HTTP, whole machine", "hello", ()),
        ]
        for row, kind, extra in cases:
            subjects = [
                (HIJACK, hijack_server(kind, port, *extra)),
                (many, workers_server(kind, port, *extra)),
            ]
            for name, argv in b.cfg.rounds * subjects:
                with b.guard(row, name), b.server(row, name, argv, port) as proc:
                    if name == many:
                        _wait_ready(LOGS / f"{_slug(f'{row} {name}')}.log")
                    if kind == "hello":
                        run_wrk(port, 1)  # warm up
                        seconds = b.cfg.wrk_seconds
                        cpu0 = proc.cpu_seconds()
                        rate, problems = run_wrk(port, seconds)
                        cpu = (proc.cpu_seconds() - cpu0) / max(rate * seconds, 1)
                        b.add(row, "keep-alive hello world, wrk -t1 -c32", name,
                              rate, "requests/s", problems, cpu=cpu,
                              cpu_unit="request")  # fmt: skip
                        continue
                    window = b.cfg.window()
                    if kind == "connect":
                        job = _background(
                            loadgen.tunnel_setup, port, echo_port, 32, 4, window
                        )
                        workload, unit = "CONNECT + round trip + close, 32", "tunnels/s"
                    else:
                        job = _background(
                            loadgen.echo_rate, port, "raw", 32, 4, 64, window
                        )
                        workload, unit = "64-byte echo, 32 connections", "round trips/s"
                    cpu_s = b.observe(proc, row, window)
                    rate, failures = job()
                    note = f"{failures} failures" if failures else ""
                    b.add(row, workload, name, rate, unit, note,
                          cpu=_per(cpu_s, rate, window))  # fmt: skip
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    b.notes.append(
        f"whole-machine rows: the load generator (4 client processes, or wrk's "
        f"one thread) runs on the same 2 cores as the {WORKERS} workers, so "
        "the workers never get 2 cores to themselves; the machine is shared "
        f"(load average {load} at the end of the row)."
    )
    for row, _, _ in cases:
        one = [r for r in b.results if r.row == row and r.server == HIJACK]
        two = [r for r in b.results if r.row == row and r.server == many]
        if one and two and one[0].value:
            gain = two[0].value / one[0].value
            verdict = "MET" if gain >= 1.2 else "MISSED"
            b.notes.append(
                f"{verdict}: {row}: --workers {WORKERS} = {gain:.2f}x one "
                "process (target >= 1.2x on 2 shared cores)"
            )


def supervise(argv: list[str]) -> None:
    """``workers.py supervise KIND PORT [...]``: bind, run WORKERS copies of
    ``hijack_servers.py KIND PORT [...]`` under the CLI's supervisor."""
    import trio

    from hijack.cli._supervisor import Supervisor

    port = int(argv[1])

    async def main() -> None:
        listeners = await trio.open_tcp_listeners(port, host="127.0.0.1")
        fds = [listener.socket.fileno() for listener in listeners]
        command = [sys.executable, str(BENCH / "hijack_servers.py"), *argv]
        supervisor = Supervisor(command, fds, WORKERS, grace=1.0, new_session=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            print("workers ready", flush=True)

    trio.run(main)


# -- spread: one inherited socket or SO_REUSEPORT ----------------------------


def pid_worker(mode: str, where: str) -> None:
    """A worker answering its pid; drains on SIGTERM."""
    import trio

    import hijack

    async def handler(request: hijack.Request) -> hijack.Response:
        return hijack.Response(200, body=str(os.getpid()).encode())

    async def main() -> None:
        server = hijack.Server(handler)
        async with trio.open_nursery() as nursery:
            if mode == "shared":
                listeners = hijack.listeners_from_fds([int(where)])
                await nursery.start(server.serve_listeners, listeners)
            else:
                await nursery.start(_serve_reuse_port, server, int(where))
            print("ready", flush=True)
            with trio.open_signal_receiver(signal.SIGTERM) as signals:
                async for _ in signals:
                    break
            await server.shutdown(grace=5)

    trio.run(main)


async def _serve_reuse_port(
    server: hijack.Server, port: int, task_status: trio.TaskStatus[Any]
) -> None:
    await server.serve_tcp(port, reuse_port=True, task_status=task_status)


def _start_pid_worker(mode: str, where: str, fd: int | None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "pid-worker", mode, where],
        stdout=subprocess.PIPE,
        pass_fds=(fd,) if fd is not None else (),
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != b"ready":
        raise RuntimeError("pid worker did not start")
    return proc


def _get_pid(port: int) -> int | None:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
    except OSError:
        return None
    head, _, body = data.partition(b"\r\n\r\n")
    return int(body) if head.startswith(b"HTTP/1.1 200") and body else None


def _fresh_connections(port: int, total: int, threads: int) -> Counter[int | None]:
    counts: Counter[int | None] = Counter()
    lock = threading.Lock()

    def client() -> None:
        for _ in range(total // threads):
            pid = _get_pid(port)
            with lock:
                counts[pid] += 1

    pool = [threading.Thread(target=client) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return counts


def _held_connections(port: int, count: int) -> Counter[int | None]:
    """``count`` keep-alive connections opened at once: who got each."""
    socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
    counts: Counter[int | None] = Counter()
    for s in socks:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    for s in socks:
        data = s.recv(4096)
        counts[int(data.partition(b"\r\n\r\n")[2] or 0) or None] += 1
        s.close()
    return counts


def _during_restart(
    mode: str, port: int, workers: list[subprocess.Popen[bytes]], fd: int | None
) -> tuple[int, int]:
    """Clients hammer while worker 0 is replaced (new one first, then the
    old one gets SIGTERM and drains). Returns (failed, total)."""
    stop = threading.Event()
    results: list[bool] = []
    lock = threading.Lock()

    def client() -> None:
        for _ in range(100_000):  # bounded; stopped by the event long before
            if stop.is_set():
                return
            ok = _get_pid(port) is not None
            with lock:
                results.append(ok)

    pool = [threading.Thread(target=client) for _ in range(32)]
    for t in pool:
        t.start()
    time.sleep(0.5)
    where = str(fd) if fd is not None else str(port)
    workers.append(_start_pid_worker(mode, where, fd))
    workers[0].send_signal(signal.SIGTERM)
    workers[0].wait(timeout=30)
    time.sleep(0.5)
    stop.set()
    for t in pool:
        t.join()
    return results.count(False), len(results)


def spread() -> None:
    for mode in ("shared", "reuseport"):
        fd = None
        sock = None
        if mode == "shared":
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(4096)
            port = sock.getsockname()[1]
            fd = sock.fileno()
            where = str(fd)
        else:
            with socket.socket() as probe:
                probe.bind(("127.0.0.1", 0))
                port = probe.getsockname()[1]
            where = str(port)
        workers = [_start_pid_worker(mode, where, fd) for _ in range(WORKERS)]
        try:
            fresh = _fresh_connections(port, 2000, 16)
            held = _held_connections(port, 32)
            failed, total = _during_restart(mode, port, workers, fd)
        finally:
            for w in workers:
                if w.poll() is None:
                    w.send_signal(signal.SIGTERM)
                    w.wait(timeout=30)
            if sock is not None:
                sock.close()
        print(
            f"{mode:9}  2000 fresh connections: "
            f"{sorted(n for p, n in fresh.items() if p)} (failed {fresh[None]}); "
            f"32 held at once: {sorted(held.values())}; "
            f"rolling restart: {failed} of {total} requests failed",
            flush=True,
        )


if __name__ == "__main__":
    command = sys.argv[1] if len(sys.argv) > 1 else "spread"
    if command == "supervise":
        supervise(sys.argv[2:])
    elif command == "pid-worker":
        pid_worker(sys.argv[2], sys.argv[3])
    else:
        spread()
