"""What users, routes and limits cost a tunnel that uses none of them.

Runs the CONNECT proxy of two source trees side by side (``--base``: e.g. a
``git archive`` of main; and this working tree), plus this tree with a
bandwidth limit too high to bite (the throttle's own cost on the splice
path), in interleaved rounds:

* one stream up and down through the tunnel: MB/s and server CPU per GB;
* idle tunnels: server RSS per tunnel.

    git archive main hijack | tar -x -C /tmp/hijack-main
    .venv/bin/python bench/team_overhead.py --base /tmp/hijack-main

Prints a table with the best and every round. Not part of ``make bench``
(it compares a tree against another, not hijack against peers).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

from loadgen import TunnelHolder, throughput  # noqa: E402
from procs import ServerProc, free_port  # noqa: E402

SERVER = """
import sys, trio, hijack
from hijack.upgrades.connect import ConnectPolicy, ConnectProxy
port, limit = int(sys.argv[1]), sys.argv[2]
options = {}
if limit != "none":
    from hijack.tunnel.limits import TunnelLimits
    options["limits"] = TunnelLimits(tunnel_bandwidth=int(limit))
policy = ConnectPolicy(allowed_ports=None, allow_private=True)
proxy = ConnectProxy(policy, max_tunnels=50_000, **options)
server = hijack.Server(proxy, limits=hijack.Limits(max_connections=50_000))
trio.run(server.serve_tcp, port)
"""


def measure(src: Path, limit: str, sink_port: int, echo_port: int) -> dict[str, float]:
    port = free_port()
    env_path = str(src)
    argv = [sys.executable, "-c", SERVER, str(port), limit]
    os.environ["PYTHONPATH"] = env_path
    try:
        with ServerProc(f"team-{src.name}-{limit}", argv, port) as server:
            row: dict[str, float] = {}
            for upload in (True, False):
                cpu0 = server.cpu_seconds()
                rate, moved = throughput(port, sink_port, 1, upload, 2 << 30, 20)
                cpu = server.cpu_seconds() - cpu0
                key = "up" if upload else "down"
                row[f"{key} MB/s"] = rate
                row[f"{key} CPU s/GB"] = cpu / (moved / 1e9)
            holder = TunnelHolder(port, echo_port)
            rss0 = server.rss_kib()
            opened = holder.open(2000, time.monotonic() + 60)
            time.sleep(1)
            row["idle KiB/tunnel"] = (server.rss_kib() - rss0) / max(opened, 1)
            holder.close()
            return row
    finally:
        del os.environ["PYTHONPATH"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    here = BENCH.parent
    variants = [
        ("base (main)", args.base, "none"),
        ("this tree, no limits", here, "none"),
        ("this tree, limit 10^12 B/s", here, str(10**12)),
    ]
    sink_port, echo_port = free_port(), free_port()
    upstream = [sys.executable, str(BENCH / "upstreams.py")]
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in variants}
    with (
        ServerProc("team-sink", [*upstream, "sink", str(sink_port)], sink_port),
        ServerProc("team-echo", [*upstream, "echo", str(echo_port)], echo_port),
    ):
        for round_number in range(args.rounds):
            for name, src, limit in variants:
                row = measure(src, limit, sink_port, echo_port)
                results[name].append(row)
                print(round_number, name, {k: round(v, 2) for k, v in row.items()})
    columns = list(next(iter(results.values()))[0])
    print("\n| variant | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for name, rows in results.items():
        cells = []
        for column in columns:
            values = [r[column] for r in rows]
            best = max(values) if "MB/s" in column else min(values)
            every = ", ".join(f"{v:.1f}" if v >= 10 else f"{v:.2f}" for v in values)
            cells.append(f"**{best:.2f}** ({every})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
