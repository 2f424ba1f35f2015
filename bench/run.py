"""hijack side by side with its peers: ``python bench/run.py``.

Every row runs hijack and its peers back to back, in this same run, with
the same load generator; each server in its own process. Prints a table and
writes ``bench/RESULTS.md``.

Options: ``--quick`` (a short smoke run), ``--rows a,b`` (pick rows:
throughput, setup, echo, ws, http, idle, scale, workers, socks, state),
``--profile``
(sample the hijack servers with py-spy during their measurement windows; collapsed
stacks and a summary land in ``bench/profiles/``), ``--no-write`` (do not
rewrite RESULTS.md).

Servers and peers run from ``bench/.venv`` (``make bench-venv``): one
interpreter and one set of library versions (trio, h11) for everybody, the
project installed there in editable mode so the working tree is measured.
The load generators
use the standard library only and run under whichever Python runs this.
"""

from __future__ import annotations

import argparse
import datetime
import platform
import re
import resource
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import h2_rows
import hub_rows
import loadgen
import socks_rows
import websocket_echo
from loadgen import TunnelHolder, Window
from procs import (
    BENCH,
    BENCH_PY,
    PROFILES,
    ServerProc,
    free_port,
)
from profile_summary import summarize
from state_rows import row_state
from workers import row_workers

VENV_BIN = BENCH / ".venv" / "bin"
HIJACK = "hijack"
MIB = 1 << 20


@dataclass
class Config:
    quick: bool
    profile: bool
    throughput_bytes: int = 500_000_000
    transfer_time_limit: float = 20.0
    warmup: float = 1.0
    duration: float = 4.0
    wrk_seconds: int = 5
    idle_tunnels: int = 9000
    scale_target: int = 9000
    #: Rounds of each rate (servers restarted each round, peers interleaved);
    #: the best round is reported, all of them in the note.
    rounds: int = 2
    throughput_rounds: int = 3

    def window(self) -> Window:
        return Window(time.monotonic() + 0.5, self.warmup, self.duration)


@dataclass
class Result:
    """One figure: the best of its rounds (highest; lowest for memory)."""

    row: str
    workload: str
    server: str
    unit: str
    samples: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    lower_is_better: bool = False
    #: Server CPU seconds per unit of work (op, tunnel, MB), per round.
    cpu: list[float | None] = field(default_factory=list)
    cpu_unit: str = ""

    @property
    def best_cpu(self) -> float | None:
        """CPU per unit in the best round."""
        return self.cpu[self.samples.index(self.value)] if self.cpu else None

    @property
    def value(self) -> float:
        return min(self.samples) if self.lower_is_better else max(self.samples)

    @property
    def note(self) -> str:
        parts = list(dict.fromkeys(n for n in self.notes if n))
        if len(self.samples) > 1:
            spread = " / ".join(f"{v:,.0f}" for v in self.samples)
            parts.insert(0, f"best of {len(self.samples)}: {spread}")
        return "; ".join(parts)


@dataclass
class Target:
    """hijack / ``peer`` >= ``ratio`` on every workload of ``row`` (or, with
    no peer, hijack's own figure against ``bound``)."""

    row: str
    peer: str | None
    ratio: float = 0.0
    bound: float = 0.0
    lower_is_better: bool = False
    workload: str | None = None
    server: str = HIJACK  # which hijack subject (the command, a variant)


TARGETS = [
    Target("tunnel throughput", "pproxy", 3.0),
    Target("tunnel throughput", "direct (no proxy)", 0.5),
    Target("tunnel setup", "pproxy", 1.3),
    # The headline: the command as the docs start it.
    Target("tunnel setup", "pproxy", 1.3, server=f"{HIJACK} proxy (command)"),
    Target("hijacked echo", "tornado detach()", 1.5),
    *(
        Target(r, peer, ratio, workload=w)
        for r, peer, ratio, w in websocket_echo.TARGETS
    ),
    Target("plain HTTP", "hypercorn -k trio", 3.0),
    Target("plain HTTP", "uvicorn --http h11", 1.0),
    Target(h2_rows.ROW, h2_rows.PEER, 1.2),
    Target(h2_rows.TUNNEL_ROW, h2_rows.TUNNEL_PEER, 0.5),
    Target(h2_rows.WS_ROW, h2_rows.WS_PEER, 1.2),
    Target("idle tunnels", None, bound=4.0, lower_is_better=True),
    Target("scale", None, bound=9000),
    Target("interactive tunnel", "pproxy", 1.3),
    # Issue 18 (bench/socks_rows.py); danted is stated, not a target there.
    Target("socks setup", "pproxy", 1.3),
    Target("socks throughput", "pproxy", 3.0),
    Target("socks throughput", "danted", 1.0),
    Target("udp associate", "danted", 0.5),
    Target("proxy --socks", "hijack proxy", 0.95),
]


@dataclass
class Bench:
    cfg: Config
    results: list[Result] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    load_at_start: str = field(
        default_factory=lambda: " ".join(Path("/proc/loadavg").read_text().split()[:3])
    )

    def add(self, row: str, workload: str, server: str, value: float, unit: str,
            note: str = "", lower_is_better: bool = False,
            cpu: float | None = None, cpu_unit: str = "op") -> None:  # fmt: skip
        """Record one round's figure (rounds of the same figure pile up)."""
        for r in self.results:
            if (r.row, r.workload, r.server) == (row, workload, server):
                break
        else:
            r = Result(row, workload, server, unit, lower_is_better=lower_is_better)
            self.results.append(r)
        r.samples.append(value)
        r.notes.append(note)
        r.cpu.append(cpu)
        r.cpu_unit = cpu_unit
        if cpu is not None:
            note = f"{note}; " if note else ""
            note += f"server CPU {_cpu_text(cpu, cpu_unit)}"
        extra = f"  ({note})" if note else ""
        print(
            f"  {row} | {workload} | {server}: {value:,.1f} {unit}{extra}", flush=True
        )

    @contextmanager
    def server(
        self, row: str, name: str, argv: list[str], port: int
    ) -> Iterator[ServerProc]:
        """Run one server for one round (log: bench/logs/<row>-<name>.log)."""
        profile = self.cfg.profile and name.startswith(HIJACK)
        with ServerProc(_slug(f"{row} {name}"), argv, port, profile=profile) as p:
            yield p

    @contextmanager
    def guard(self, row: str, name: str) -> Iterator[None]:
        """A failure (a server that does not start, a client that times out)
        is noted and costs only this round: other servers and rounds run."""
        try:
            yield
        except (OSError, ConnectionError, RuntimeError) as exc:
            note = f"{row}, {name}: a round failed: {type(exc).__name__}: {exc}"
            self.notes.append(note.splitlines()[0])
            print(f"  FAILED {note}", flush=True)

    def observe(self, proc: ServerProc, label: str, window: Window) -> float:
        """Watch ``proc`` during the counted part of ``window`` (py-spy if
        profiling); returns the CPU seconds it used meanwhile."""
        loadgen._sleep_until(window.begin)
        cpu = proc.cpu_seconds()
        proc.start_profile(_slug(label), window.duration)
        loadgen._sleep_until(window.end)
        return proc.cpu_seconds() - cpu


def _per(cpu: float, rate: float, window: Window) -> float | None:
    """CPU seconds per operation over a window."""
    ops = rate * window.duration
    return cpu / ops if ops else None


def _cpu_text(seconds: float, unit: str) -> str:
    if unit == "MB":
        return f"{seconds * 1e3:.2f} ms/MB"
    return f"{seconds * 1e6:,.0f} us/{unit}"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


# -- server command lines ----------------------------------------------------


def hijack_server(kind: str, port: int, *extra: str) -> list[str]:
    return [str(BENCH_PY), str(BENCH / "hijack_servers.py"), kind, str(port), *extra]


def peer_server(kind: str, port: int) -> list[str]:
    return [str(BENCH_PY), str(BENCH / "peer_servers.py"), kind, str(port)]


def upstream(kind: str, port: int) -> list[str]:
    return [sys.executable, str(BENCH / "upstreams.py"), kind, str(port)]


def proxies(port: int, allowed: list[int]) -> list[tuple[str, list[str]]]:
    allow = [a for p in allowed for a in ("--allow-port", str(p))]
    return [
        (HIJACK, hijack_server("connect", port, *allow)),
        ("pproxy", [str(VENV_BIN / "pproxy"), "-l", f"http://127.0.0.1:{port}"]),
        # One acceptor and one worker: one process serving, like the others.
        ("proxy.py", [
            str(VENV_BIN / "proxy"), "--hostname", "127.0.0.1", "--port", str(port),
            "--num-acceptors", "1", "--num-workers", "1", "--backlog", "4096",
            "--log-level", "WARNING",
        ]),
        *hub_rows.go_peer(port),
    ]  # fmt: skip


# -- rows --------------------------------------------------------------------


def row_throughput(b: Bench) -> None:
    row = "tunnel throughput"
    size = b.cfg.throughput_bytes
    sink_port = free_port()
    with ServerProc("sink", upstream("sink", sink_port), sink_port):
        port = free_port()
        subjects: list[tuple[str, list[str] | None]] = [("direct (no proxy)", None)]
        subjects += proxies(port, [sink_port])
        subjects.insert(2, task_relay_proxy(port, sink_port))
        # The command as users start it (default logging), beside the
        # purpose-built server.
        subjects.insert(3, command_proxies(port, sink_port)[0])
        for name, argv in b.cfg.throughput_rounds * subjects:
            with b.guard(row, name), _maybe_server(b, row, name, argv, port) as proc:
                proxy_port = None if proc is None else port
                # Warm up: code paths, pipe pool, TCP autotuning.
                loadgen.throughput(proxy_port, sink_port, 1, True, 32 * MIB, 10)
                for streams in (1, 4):
                    for up in (True, False):
                        workload = f"{streams} stream{'s' * (streams > 1)}"
                        workload += " upload" if up else " download"
                        cpu0 = 0.0
                        if proc is not None:
                            proc.start_profile(_slug(f"{row} {workload}"), 2)
                            cpu0 = proc.cpu_seconds()
                        mbps, moved = loadgen.throughput(
                            proxy_port, sink_port, streams, up, size,
                            b.cfg.transfer_time_limit,
                        )  # fmt: skip
                        cpu = None
                        if proc is not None:
                            cpu = (proc.cpu_seconds() - cpu0) / (moved / 1e6)
                            proc.wait_profile()
                        note = "" if moved >= size - streams else (
                            f"time limit: {moved / 1e6:.0f} MB moved"
                        )  # fmt: skip
                        b.add(row, workload, name, mbps, "MB/s", note, cpu=cpu,
                              cpu_unit="MB")  # fmt: skip


@contextmanager
def _maybe_server(
    b: Bench, row: str, name: str, argv: list[str] | None, port: int
) -> Iterator[ServerProc | None]:
    if argv is None:
        yield None
        return
    with b.server(row, name, argv, port) as proc:
        yield proc


def row_setup(b: Bench) -> None:
    row = "tunnel setup"
    echo_port = free_port()
    with ServerProc("echo-upstream", upstream("echo", echo_port), echo_port):
        port = free_port()
        subjects = proxies(port, [echo_port])
        subjects[1:1] = [
            task_relay_proxy(port, echo_port),
            *command_proxies(port, echo_port),
        ]
        for name, argv in b.cfg.rounds * subjects:
            with b.guard(row, name), b.server(row, name, argv, port) as proc:
                window = b.cfg.window()
                job = _background(loadgen.tunnel_setup, port, echo_port, 32, 4, window)
                cpu = b.observe(proc, row, window)
                rate, failures = job()
                note = f"{failures} failed batches" if failures else ""
                b.add(row, "CONNECT + 4-byte round trip + close, 32 at once",
                      name, rate, "tunnels/s", note,
                      cpu=_per(cpu, rate, window), cpu_unit="tunnel")  # fmt: skip


def _background(
    fn: Callable[..., tuple[float, int]], *args: object
) -> Callable[[], tuple[float, int]]:
    """Run ``fn(*args)`` in a thread (its workers are processes); the
    returned callable joins it and gives the result. Lets the main thread
    start the profiler at the right moment."""
    import threading

    out: list[tuple[float, int]] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            out.append(fn(*args))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()

    def join() -> tuple[float, int]:
        thread.join()
        if errors:
            raise errors[0]
        return out[0]

    return join


def row_echo(b: Bench) -> None:
    row = "hijacked echo"
    port = free_port()
    subjects = [
        (HIJACK, hijack_server("echo", port)),
        ("tornado detach()", peer_server("tornado-echo", port)),
        ("ceiling: bare selectors echo", upstream("echo-upgrade", port)),
        *hub_rows.go_peer(port),
    ]
    for name, argv in b.cfg.rounds * subjects:
        with b.guard(row, name), b.server(row, name, argv, port) as proc:
            window = b.cfg.window()
            job = _background(loadgen.echo_rate, port, "raw", 32, 4, 64, window)
            cpu = b.observe(proc, row, window)
            rate, failures = job()
            note = f"{failures} failed workers" if failures else ""
            b.add(row, "Upgrade + 64-byte echo, 32 connections", name, rate,
                  "round trips/s", note, cpu=_per(cpu, rate, window))  # fmt: skip


def run_wrk(port: int, seconds: int) -> tuple[float, str]:
    out = subprocess.run(
        ["wrk", "-t1", "-c32", f"-d{seconds}s", f"http://127.0.0.1:{port}/"],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not match:
        raise RuntimeError(f"cannot read wrk's output:\n{out}")
    problems = [
        line.strip()
        for line in out.splitlines()
        if "Non-2xx" in line or "Socket errors" in line
    ]
    return float(match.group(1)), "; ".join(problems)


def row_http(b: Bench) -> None:
    row = "plain HTTP"
    if shutil.which("wrk") is None:
        b.notes.append(
            "plain HTTP skipped: `wrk` is not installed (apt-get install wrk)"
        )
        return
    port = free_port()
    app = "asgi_hello:app"
    subjects = [
        (HIJACK, hijack_server("hello", port)),
        ("hypercorn -k trio", [
            str(VENV_BIN / "hypercorn"), "-k", "trio", "-b", f"127.0.0.1:{port}",
            "--backlog", "4096", app,
        ]),
        ("uvicorn --http h11", [
            str(VENV_BIN / "uvicorn"), "--http", "h11", "--loop", "asyncio",
            "--no-access-log", "--log-level", "warning", "--lifespan", "off",
            "--host", "127.0.0.1", "--port", str(port), "--backlog", "4096", app,
        ]),
    ]  # fmt: skip
    seconds = b.cfg.wrk_seconds
    for name, argv in b.cfg.rounds * subjects:
        with b.guard(row, name), b.server(row, name, argv, port) as proc:
            run_wrk(port, 1)  # warm up
            proc.start_profile(_slug(f"{row} {name}"), seconds - 1)
            cpu0 = proc.cpu_seconds()
            rate, problems = run_wrk(port, seconds)
            cpu = (proc.cpu_seconds() - cpu0) / max(rate * seconds, 1)
            b.add(row, "keep-alive hello world, wrk -t1 -c32", name, rate,
                  "requests/s", problems, cpu=cpu, cpu_unit="request")  # fmt: skip


def task_relay_proxy(port: int, echo_port: int) -> tuple[str, list[str]]:
    """hijack without the hub: each tunnel awaits relay() in its handler."""
    allow = ["--allow-port", str(echo_port), "--task-relay"]
    return f"{HIJACK} (task relay)", hijack_server("connect", port, *allow)


def command_proxies(port: int, echo_port: int) -> list[tuple[str, list[str]]]:
    """``hijack proxy`` as the docs start it (INFO: a line per tunnel and an
    access line, into the log file), and with its tunnel lines off."""
    command = [str(VENV_BIN / "hijack")]
    proxy = [
        "proxy", "--listen", f"127.0.0.1:{port}",
        "--allow-port", str(echo_port), "--allow-private",
    ]  # fmt: skip
    return [
        (f"{HIJACK} proxy (command)", [*command, *proxy]),
        (
            f"{HIJACK} proxy (command, WARNING)",
            [*command, "--log-level", "WARNING", *proxy],
        ),
    ]


def row_idle(b: Bench) -> None:
    def subjects(port: int, echo_port: int) -> list[tuple[str, list[str]]]:
        hub, pproxy = proxies(port, [echo_port])[:2]
        return [hub, task_relay_proxy(port, echo_port), pproxy,
                *hub_rows.go_peer(port)]  # fmt: skip

    hub_rows.idle_tunnels(b, partial(upstream, "echo"), subjects, free_port)


def row_scale(b: Bench) -> None:
    row = "scale"
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # The proxy holds two fds per tunnel (client side, upstream side).
    # Headroom: listeners, the relay's pooled splice pipes (2 fds each), logs.
    cap = (hard - 400) // 2
    echo_port = free_port()
    with ServerProc("echo-upstream", upstream("echo", echo_port), echo_port):
        port = free_port()
        name, argv = proxies(port, [echo_port])[0]
        with b.guard(row, name), b.server(row, name, argv, port) as proc:
            holder = TunnelHolder(port, echo_port, batch=500)
            try:
                opened = holder.open(cap, time.monotonic() + 120)
                alive = holder.check_all()
                rss = proc.rss_kib()
            finally:
                holder.close()
            note = f"fd hard limit {hard:,}: at most {cap:,} tunnels; RSS {rss:,} KiB"
            if opened < cap:
                note += f"; stopped at {opened:,}: {holder.error}"
            if alive < opened:
                note += f"; {opened - alive} tunnels dead at the final check"
            b.add(row, "concurrent tunnels, one process, none refused", name,
                  alive, "tunnels", note)  # fmt: skip


def row_interactive(b: Bench) -> None:
    cli = [str(BENCH_PY), "-m", "hijack"]
    hub_rows.interactive(b, cli, str(VENV_BIN / "pproxy"), free_port)


ROWS: dict[str, Callable[[Bench], None]] = {
    "throughput": row_throughput,
    "setup": row_setup,
    "echo": row_echo,
    "ws": lambda b: websocket_echo.row_ws(b, _background),  # bench/websocket_echo.py
    "http": row_http,
    "http2": lambda b: h2_rows.row_http2(b, VENV_BIN, HIJACK, _slug),
    "h2tunnel": lambda b: h2_rows.row_tunnel(b, upstream, HIJACK, ServerProc),
    "h2held": lambda b: h2_rows.row_held(b, upstream, HIJACK, ServerProc),
    "h2ws": lambda b: h2_rows.row_ws(b, VENV_BIN, HIJACK, _slug),
    "idle": row_idle,
    "scale": row_scale,
    "interactive": row_interactive,
    "workers": row_workers,
    "socks": socks_rows.row_socks,  # bench/socks_rows.py
    "state": row_state,  # bench/state_rows.py
}


# -- report ------------------------------------------------------------------


def hijack_figure(
    b: Bench, row: str, workload: str, server: str = HIJACK
) -> float | None:
    for r in b.results:
        if r.row == row and r.workload == workload and r.server == server:
            return r.value
    return None


def verdicts(b: Bench) -> list[str]:
    lines = hub_rows.cpu_verdicts(b)
    lines += hub_rows.cpu_verdicts(b, hijack=f"{HIJACK} proxy (command)")
    for t in TARGETS:
        for workload in dict.fromkeys(r.workload for r in b.results if r.row == t.row):
            if t.workload is not None and workload != t.workload:
                continue
            mine = hijack_figure(b, t.row, workload, t.server)
            if mine is None:
                continue
            if t.peer is None:
                ok = mine <= t.bound if t.lower_is_better else mine >= t.bound
                sign = "<=" if t.lower_is_better else ">="
                lines.append(
                    f"- {'MET' if ok else 'MISSED'}: {t.row}, {workload}: "
                    f"{mine:,.1f} (target {sign} {t.bound:,.0f}; "
                    f"{100 * mine / t.bound:.0f}% of it)"
                )
                continue
            peer = [
                r.value
                for r in b.results
                if r.row == t.row and r.workload == workload and r.server == t.peer
            ]
            if not peer or not peer[0]:
                continue
            ratio = mine / peer[0]
            ok = ratio >= t.ratio
            lines.append(
                f"- {'MET' if ok else 'MISSED'}: {t.row}, {workload}"
                f"{'' if t.server == HIJACK else f' ({t.server})'}: "
                f"{ratio:.2f}x {t.peer} (target >= {t.ratio}x; "
                f"{100 * ratio / t.ratio:.0f}% of it)"
            )
    return lines


def table(b: Bench) -> list[str]:
    lines = [
        "| row | workload | server | figure | hijack / server | server CPU"
        " (best round) | notes |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in b.results:
        mine = hijack_figure(b, r.row, r.workload)
        ratio = "" if mine is None or r.server == HIJACK or not r.value else (
            f"{mine / r.value:.2f}x"
        )  # fmt: skip
        cpu = r.best_cpu
        cpu_text = "" if cpu is None else _cpu_text(cpu, r.cpu_unit)
        lines.append(
            f"| {r.row} | {r.workload} | {r.server} | {r.value:,.1f} {r.unit} | "
            f"{ratio} | {cpu_text} | {r.note} |"
        )
    return lines


def machine_note() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    import os

    mem = (os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")) >> 30
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    py = subprocess.run(
        [str(BENCH_PY), "-c", "import sys, trio, h11; "
         "print(sys.version.split()[0], trio.__version__, h11.__version__)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return (
        f"{os.cpu_count()} cores ({cpu}), {mem} GiB, Linux {platform.release()}, "
        f"fd hard limit {hard:,}; servers on Python {py[0]}, trio {py[1]}, "
        f"h11 {py[2]}"
    )


def write_results(b: Bench, started: float, path: Path) -> None:
    cfg = b.cfg
    elapsed = time.monotonic() - started
    text = [
        "# Benchmarks: hijack side by side with its peers",
        "",
        f"Run {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')} by "
        f"`bench/run.py{' --quick' if cfg.quick else ''}` in {elapsed:.0f} s.",
        "",
        f"Machine: {machine_note()}.",
        "",
        "How: every server (hijack and peers) runs in its own process, from "
        "`bench/.venv`; hijack and its peers run back to back in this run with "
        "the same load generator: blocking sockets in separate processes "
        "(4 worker processes x 8 connections, driven in lockstep), `wrk -t1 "
        "-c32` for plain HTTP. Traffic stays on 127.0.0.1. Rates are counted "
        f"over {cfg.duration:g} s after {cfg.warmup:g} s of warm-up. Each "
        f"rate is the best of {cfg.rounds} rounds ({cfg.throughput_rounds} for "
        "throughput), every round with freshly started servers, hijack and "
        "peers interleaved; the note lists every round. All "
        "servers share the machine's 2 cores with the load generator, so "
        "absolute figures are lower than on a dedicated box; the ratios are "
        "what the targets are about.",
        "",
        f"Scaled down: tunnel throughput moves {cfg.throughput_bytes / 1e6:,.0f} MB "
        "per measurement (issue: 1 GB) split over the streams, each transfer "
        f"bounded to {cfg.transfer_time_limit:g} s.",
        "",
        "Peers: direct loopback (no proxy: the ceiling), pproxy, proxy.py "
        "(`--num-acceptors 1 --num-workers 1`), Tornado `detach()` (bench/"
        "peer_servers.py), the WebSocket servers of bench/websocket_echo.py "
        "(`websockets` asyncio and Trio, trio-websocket; its docstring says "
        "how each is set up), hypercorn `-k trio` and "
        "uvicorn `--http h11 --loop asyncio` on the same ASGI hello world "
        "(bench/asgi_hello.py). hijack runs on plain h11 (the default "
        "dependency, like uvicorn --http h11; no compiled h11: see the README). "
        "'ceiling' rows are a bare selectors server "
        "that shows the load generator can go faster than the servers measured.",
        "",
        "Server CPU: user + system CPU time of the server's processes during "
        "the counted window, divided by the work done (per round trip, tunnel, "
        "request, or MB relayed). On 2 cores the load generator and the kernel's "
        "loopback work share the CPU with the server, so a cheap server does "
        "not always show a proportionally higher rate (ratios are squeezed "
        "toward 1); CPU per operation does not depend on that and says how "
        "much work each server really spends.",
        "",
        f"Load average when the run started: {b.load_at_start}; other "
        "processes on this machine (it is shared) can take CPU during a round, "
        "which is why each figure is the best of several interleaved rounds.",
        "",
        *table(b),
        "",
        "## Targets",
        "",
        *verdicts(b),
        "",
    ]
    if b.notes:
        text += ["## Notes", "", *[f"- {n}" for n in b.notes], ""]
    analysis = BENCH / "ANALYSIS.md"  # hand-kept: what the profiles show
    if analysis.exists():
        text += [analysis.read_text().rstrip(), ""]
    path.write_text("\n".join(text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short smoke run")
    parser.add_argument("--rows", default=",".join(ROWS), help="comma-separated")
    parser.add_argument("--profile", action="store_true", help="py-spy hijack")
    parser.add_argument("--no-write", action="store_true", help="keep RESULTS.md")
    parser.add_argument("--rounds", type=int, help="rounds of each rate")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; pick from {', '.join(ROWS)}")
    if not BENCH_PY.exists():
        raise SystemExit(
            f"{BENCH_PY} is missing: run `make bench` (it creates bench/.venv)"
        )
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cfg = Config(quick=args.quick, profile=args.profile)
    if args.quick:
        cfg.throughput_bytes = 128_000_000
        cfg.warmup, cfg.duration, cfg.wrk_seconds = 0.3, 1.0, 2
        cfg.idle_tunnels = 1000
        cfg.rounds = cfg.throughput_rounds = 1
    if args.rounds:
        cfg.rounds = cfg.throughput_rounds = max(1, args.rounds)
    b = Bench(cfg)
    started = time.monotonic()
    for name in rows:
        print(f"== {name}", flush=True)
        try:
            ROWS[name](b)
        except Exception as exc:  # one broken peer must not lose the rest
            b.notes.append(f"row {name} failed: {type(exc).__name__}: {exc}")
            print(f"  row {name} FAILED: {exc}", flush=True)
    print()
    print("\n".join(table(b)))
    print()
    print("\n".join(verdicts(b)))
    for note in b.notes:
        print(f"note: {note}")
    print(f"\ntotal {time.monotonic() - started:.0f} s")
    if not args.no_write:
        write_results(b, started, BENCH / "RESULTS.md")
        print(f"wrote {BENCH / 'RESULTS.md'}")
    if args.profile and PROFILES.exists():
        summary = [summarize(p) for p in sorted(PROFILES.glob("*.txt"))]
        (PROFILES / "SUMMARY.md").write_text("\n".join(summary))
        print("\n".join(summary))


if __name__ == "__main__":
    main()
