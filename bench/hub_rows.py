"""What a tunnel costs to hold and to open (issue 11, the relay hub).

* ``idle_tunnels``: N idle CONNECT tunnels (9,000 by default) held through
  hijack with the relay hub (the default), hijack with a ``relay()`` task
  per tunnel (``--task-relay``), and pproxy: server RSS per tunnel, and for
  hijack the gc-tracked Python objects each tunnel leaves (``GET /objects``
  on the bench server, diffed before and after, per type).
* ``interactive``: redis GETs from ``redis-benchmark`` (20 clients)
  through ``hijack forward`` + ``hijack proxy`` against the same chain built
  with pproxy (a local tunnel through its HTTP proxy).
* ``cpu_verdicts``: the set-up row's server CPU per tunnel against pproxy's
  (target <= 0.75x), next to the rate target ``run.py`` already states.
"""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
import time
from collections.abc import Callable
from typing import Any

from loadgen import TunnelHolder
from procs import BENCH, ServerProc

Subjects = Callable[[int, int], list[tuple[str, list[str]]]]

#: Server CPU per tunnel set up, hijack / pproxy (lower is better).
SETUP_CPU_RATIO = 0.75
#: Go net/http's CONNECT proxy with Hijacker (bench/goproxy, `make bench`
#: builds it with Debian's golang-go).
GO_PROXY = BENCH / "goproxy" / "goproxy"


def go_peer(port: int) -> list[tuple[str, list[str]]]:
    """The Go peer if it was built (rows just skip it otherwise)."""
    return [("go net/http", [str(GO_PROXY), str(port)])] if GO_PROXY.exists() else []


def live_objects(port: int) -> dict[str, int] | None:
    """The server's live objects by type, or None if it cannot say (a peer)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/objects")
        response = conn.getresponse()
        if response.status != 200:
            return None
        types: dict[str, int] = json.loads(response.read())["types"]
        return types
    except (OSError, ValueError, KeyError):
        return None
    finally:
        conn.close()


def objects_note(before: dict[str, int], after: dict[str, int], n: int) -> str:
    """'objects/tunnel 9.0 (SocketStream 2.0, ...)': the top types."""
    diff = {t: after.get(t, 0) - before.get(t, 0) for t in after.keys() | before}
    total = sum(diff.values()) / n
    top = sorted(diff.items(), key=lambda kv: -kv[1])[:8]
    parts = ", ".join(f"{t} {c / n:.1f}" for t, c in top if c / n >= 0.05)
    return f"gc-tracked objects per tunnel {total:.1f} ({parts})"


def idle_tunnels(
    b: Any, echo_argv: Callable[[int], list[str]], subjects: Subjects, free_port: Any
) -> None:
    """The idle row: ``b`` is run.py's Bench."""
    row = "idle tunnels"
    count = b.cfg.idle_tunnels
    echo_port = free_port()
    with ServerProc("echo-upstream", echo_argv(echo_port), echo_port):
        port = free_port()
        for name, argv in subjects(port, echo_port):
            with b.guard(row, name), b.server(row, name, argv, port) as proc:
                warm = TunnelHolder(port, echo_port)
                warm.open(100, time.monotonic() + 30)
                warm.close()
                time.sleep(0.5)
                objects_before = live_objects(port)
                before = proc.rss_kib()
                holder = TunnelHolder(port, echo_port)
                try:
                    opened = holder.open(count, time.monotonic() + 120)
                    time.sleep(1.0)
                    after = proc.rss_kib()
                    objects_after = live_objects(port)
                finally:
                    holder.close()
                note = f"RSS {before:,} -> {after:,} KiB"
                if opened < count:
                    note += f"; only {opened} opened ({holder.error})"
                if objects_before is not None and objects_after is not None:
                    note += "; " + objects_note(
                        objects_before, objects_after, max(opened, 1)
                    )
                per = (after - before) / max(opened, 1)
                b.add(row, f"{count:,} idle tunnels: server RSS per tunnel", name,
                      per, "KiB/tunnel", note, lower_is_better=True)  # fmt: skip


def cpu_verdicts(b: Any, hijack: str = "hijack", peer: str = "pproxy") -> list[str]:
    """MET/MISSED for server CPU per tunnel set up, hijack / pproxy."""
    lines = []
    mine = theirs = None
    for r in b.results:
        # The lowest of each one's rounds (the least disturbed by neighbours).
        if r.row == "tunnel setup" and r.server == hijack:
            mine = min((c for c in r.cpu if c is not None), default=None)
        if r.row == "tunnel setup" and r.server == peer:
            theirs = min((c for c in r.cpu if c is not None), default=None)
    if mine and theirs:
        ratio = mine / theirs
        ok = ratio <= SETUP_CPU_RATIO
        lines.append(
            f"- {'MET' if ok else 'MISSED'}: tunnel setup"
            f"{'' if hijack == 'hijack' else f' ({hijack})'}, server CPU per tunnel: "
            f"{ratio:.2f}x {peer} ({mine * 1e6:,.0f} vs {theirs * 1e6:,.0f} us; "
            f"target <= {SETUP_CPU_RATIO}x)"
        )
    return lines


def redis_rate(port: int, requests: int) -> float:
    """redis-benchmark's GET rate through ``port``: 20 clients, no pipelining
    (every request a small message each way through both hops)."""
    out = subprocess.run(
        ["redis-benchmark", "-p", str(port), "-c", "20", "-n", str(requests),
         "-t", "get", "--csv"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    for line in out.splitlines():
        fields = [f.strip('"') for f in line.split(",")]
        if fields and fields[0] == "GET":
            return float(fields[1])
    raise RuntimeError(f"cannot read redis-benchmark's output:\n{out}")


def interactive(
    b: Any, hijack_cli: list[str], pproxy: str, free_port: Callable[[], int]
) -> None:
    """Small requests and answers through a forwarder and a CONNECT proxy to
    redis: ``hijack forward`` + ``hijack proxy`` against a pproxy local
    tunnel + a pproxy HTTP proxy. Server CPU: both hops, per request."""
    row = "interactive tunnel"
    if shutil.which("redis-server") is None or shutil.which("redis-benchmark") is None:
        b.notes.append("interactive tunnel skipped: redis-server is not installed")
        return
    redis_port, proxy_port, local_port = free_port(), free_port(), free_port()
    requests = 10_000 if b.cfg.quick else 40_000
    target = f"127.0.0.1:{redis_port}"
    chains = {
        "hijack": (
            [*hijack_cli, "proxy", "--listen", f"127.0.0.1:{proxy_port}",
             "--allow-port", str(redis_port), "--allow-private"],
            [*hijack_cli, "forward", "--listen", f"127.0.0.1:{local_port}",
             "--via", f"127.0.0.1:{proxy_port}", "--target", target,
             "--mode", "connect"],
        ),
        "pproxy": (
            [pproxy, "-l", f"http://127.0.0.1:{proxy_port}"],
            [pproxy, "-l", f"tunnel{{{target}}}://127.0.0.1:{local_port}",
             "-r", f"http://127.0.0.1:{proxy_port}"],
        ),
    }  # fmt: skip
    redis = ["redis-server", "--port", str(redis_port), "--save", "", "--appendonly",
             "no"]  # fmt: skip
    with ServerProc("redis", redis, redis_port):
        for name in b.cfg.rounds * list(chains):
            proxy_argv, forward_argv = chains[name]
            proxy = ServerProc(f"interactive-{name}-proxy", proxy_argv, proxy_port)
            forward = ServerProc(f"interactive-{name}-fwd", forward_argv, local_port)
            with b.guard(row, name), proxy as p, forward as f:
                redis_rate(local_port, 2_000)  # warm up
                cpu0 = p.cpu_seconds() + f.cpu_seconds()
                rate = redis_rate(local_port, requests)
                cpu = (p.cpu_seconds() + f.cpu_seconds() - cpu0) / requests
                b.add(row, "redis GET, 20 clients, through forwarder + proxy",
                      name, rate, "requests/s", cpu=cpu,
                      cpu_unit="request")  # fmt: skip
