"""The shared-state rows (``python bench/run.py --rows state``): what
counting the limits elsewhere costs a tunnel set-up.

* ``tunnel setup, limits in Redis``: ``hijack proxy`` with a per-client
  limit counted in the process, against the same with ``--state redis://``
  (a local redis-server): two Redis round trips per tunnel (take the
  lease, give it back in the background). Target >= 0.8x the rate.
* ``tunnel setup, --workers 2, per-client limit``: ``--workers 2`` without
  a limit against ``--workers 2 --max-tunnels-per-client`` (the
  supervisor's shared-memory table). Target >= 0.9x.

The servers are the real command (``python -m hijack proxy``), in the bench
virtualenv; the limit is high enough never to refuse (the load generator
runs 32 tunnels at once from one address), so every tunnel takes and gives
back one lease. The note gives the server CPU per tunnel and, for Redis,
redis-server's own CPU per tunnel.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen
from procs import BENCH_PY, ServerProc, free_port

if TYPE_CHECKING:
    from run import Bench

LIMIT = ["--max-tunnels-per-client", "100000"]
REDIS = "/usr/bin/redis-server"


def _proxy(port: int, echo_port: int, *extra: str) -> list[str]:
    return [
        str(BENCH_PY), "-m", "hijack", "--log-level", "WARNING", "proxy",
        "--listen", f"127.0.0.1:{port}", "--allow-private",
        "--allow-port", str(echo_port), "--access-log-format", "off", *extra,
    ]  # fmt: skip


def row_state(b: Bench) -> None:
    from run import _background, _per, upstream

    echo_port = free_port()
    redis_port = free_port()
    redis_argv = [REDIS, "--port", str(redis_port), "--bind", "127.0.0.1",
                  "--save", "", "--appendonly", "no"]  # fmt: skip
    with (
        ServerProc("echo-upstream-state", upstream("echo", echo_port), echo_port),
        ServerProc("redis-state", redis_argv, redis_port) as redis,
    ):
        port = free_port()
        redis_url = f"redis://127.0.0.1:{redis_port}/0"
        workload = "CONNECT + 4-byte round trip + close, 32 at once"
        cases = [
            ("tunnel setup, limits in Redis", [
                ("in-process limit", _proxy(port, echo_port, *LIMIT)),
                ("--state redis://", _proxy(port, echo_port, *LIMIT,
                                            "--state", redis_url)),
            ], 0.8),
            ("tunnel setup, --workers 2, per-client limit", [
                ("--workers 2, no limit", _proxy(port, echo_port, "--workers", "2")),
                ("--workers 2, limit", _proxy(port, echo_port, "--workers", "2",
                                              *LIMIT)),
            ], 0.9),
        ]  # fmt: skip
        for row, subjects, target in cases:
            for name, argv in b.cfg.rounds * subjects:
                with b.guard(row, name), b.server(row, name, argv, port) as proc:
                    if "--workers" in argv:
                        _wait_listening_line(proc.log)
                    window = b.cfg.window()
                    job = _background(
                        loadgen.tunnel_setup, port, echo_port, 32, 4, window
                    )
                    redis_cpu = redis.cpu_seconds()
                    workers_cpu = _children_cpu(proc.pid)
                    cpu = b.observe(proc, row, window)
                    redis_cpu = redis.cpu_seconds() - redis_cpu
                    # The workers run in sessions of their own: counted apart.
                    cpu += _children_cpu(proc.pid) - workers_cpu
                    rate, failures = job()
                    note = f"{failures} failed batches" if failures else ""
                    if "--state" in argv and rate:
                        per = redis_cpu / (rate * window.duration) * 1e6
                        note = f"{note}; " if note else ""
                        note += f"redis-server CPU {per:.0f} us/tunnel"
                    b.add(row, workload, name, rate, "tunnels/s", note,
                          cpu=_per(cpu, rate, window), cpu_unit="tunnel")  # fmt: skip
            _verdict(b, row, [name for name, _ in subjects], target)
    b.notes.append(lease_cost())


def _children_cpu(pid: int) -> float:
    """CPU seconds (user + system) of the live children of ``pid``."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    children: list[str] = []
    # Per thread: trio starts processes from a worker thread.
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children += (task / "children").read_text().split()
        except OSError:
            continue
    for child in children:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def lease_cost(rounds: int = 20_000) -> str:
    """What a lease costs a worker under ``--workers``: take and give back
    one per-client lease in the shared table, CPU time per tunnel, against
    TunnelLimits counting in the process (the one-process default)."""
    import time

    from hijack.state._shared_memory import SharedState, Table
    from hijack.tunnel.limits import TunnelLimits

    table = Table.create(columns=4)
    try:
        costs = {}
        for name, limits in [
            ("in-process", TunnelLimits(per_client=100_000)),
            ("shared", TunnelLimits(per_client=100_000, state=SharedState(table))),
        ]:
            best = float("inf")
            for _ in range(3):
                start = time.process_time()
                for n in range(rounds):
                    limits.acquire(f"10.0.{n % 250}.1", None).release()
                best = min(best, (time.process_time() - start) / rounds)
            costs[name] = best * 1e6
    finally:
        table.close()
    extra = costs["shared"] - costs["in-process"]
    verdict = "MET" if extra <= 20 else "MISSED"
    return (
        f"{verdict}: a per-client lease in the workers' shared table costs "
        f"{costs['shared']:.1f} us CPU to take and give back, "
        f"{extra:+.1f} us against counting in the process "
        f"({costs['in-process']:.1f} us; target <= 20 us extra)"
    )


def _wait_listening_line(log: Path) -> None:
    """The supervisor prints its line once every worker serves."""
    import time

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if log.exists() and "listening on" in log.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"workers not ready after 30s; see {log}")


def _verdict(b: Bench, row: str, names: list[str], target: float) -> None:
    base, other = (
        next((r for r in b.results if r.row == row and r.server == n), None)
        for n in names
    )
    if base is None or other is None or not base.value:
        return
    ratio = other.value / base.value
    extra = ""
    if base.best_cpu is not None and other.best_cpu is not None:
        extra = (
            f"; server CPU {(other.best_cpu - base.best_cpu) * 1e6:+.0f} us per tunnel"
        )
    verdict = "MET" if ratio >= target else "MISSED"
    b.notes.append(
        f"{verdict}: {row}: {names[1]} = {ratio:.2f}x {names[0]} "
        f"(target >= {target}x){extra}"
    )
