"""The HTTP/2 row: hello world under h2load, hijack against hypercorn -k
trio (HTTP/2 on the same ASGI hello world, bench/asgi_hello.py), on h2c
with prior knowledge and on TLS with ALPN h2, interleaved rounds.

hypercorn closes an HTTP/2 connection after 1000 requests by default
(``keep_alive_max_requests``): ``hypercorn_h2.toml`` lifts that so both
serve the same load. h2load runs for a fixed time (``-D``), 4 connections
of 10 concurrent streams each, after a one-second warm-up on the same
connections: hypercorn (0.17, h2c) stalls for a while after a client leaves
with streams in flight, so a separate warm-up run would cost it the
measured one."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from procs import BENCH, BENCH_PY, free_port

ROW = "HTTP/2 hello"
PEER = "hypercorn -k trio (h2)"
TUNNEL_ROW = "CONNECT over HTTP/2"
TUNNEL_PEER = "hijack over HTTP/1.1"
HELD = 100
WS_ROW = "WebSocket over HTTP/2"
WS_PEER = "hypercorn -k trio (RFC 8441)"


def _certificate(where: Path) -> tuple[str, str]:
    where.mkdir(exist_ok=True)
    cert, key = where / "h2-cert.pem", where / "h2-key.pem"
    if not cert.exists():
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "2",
             "-subj", "/CN=127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip
    return str(cert), str(key)


def run_h2load(url: str, seconds: int) -> tuple[float, str]:
    out = subprocess.run(
        ["h2load", "--warm-up-time=1", "-D", str(seconds), "-c", "4", "-m", "10",
         url],
        capture_output=True, text=True, timeout=seconds + 30, check=True,
    ).stdout  # fmt: skip
    match = re.search(r"finished in [\d.]+m?s, ([\d.]+) req/s", out)
    if not match:
        raise RuntimeError(f"cannot read h2load's output:\n{out}")
    failed = re.search(r"(\d+) failed, (\d+) errored", out)
    problems = ""
    if failed and (failed.group(1) != "0" or failed.group(2) != "0"):
        problems = f"{failed.group(1)} failed, {failed.group(2)} errored"
    return float(match.group(1)), problems


def row_http2(
    b: Any, venv_bin: Path, hijack_name: str, slug: Callable[[str], str]
) -> None:
    if shutil.which("h2load") is None:
        b.notes.append(f"{ROW} skipped: h2load is not installed (nghttp2-client)")
        return
    cert, key = _certificate(BENCH / "logs")
    seconds = b.cfg.wrk_seconds
    for tls in (False, True):
        port = free_port()
        scheme = "https" if tls else "http"
        workload = (
            "TLS (ALPN h2), h2load -c4 -m10"
            if tls
            else "h2c prior knowledge, h2load -c4 -m10"
        )
        tls_hijack = ["--tls-cert", cert, "--tls-key", key] if tls else []
        tls_peer = ["--certfile", cert, "--keyfile", key] if tls else []
        subjects = [
            (hijack_name, [str(BENCH_PY), str(BENCH / "hijack_servers.py"), "hello",
                           str(port), "--http2", *tls_hijack]),
            (PEER, [str(venv_bin / "hypercorn"), "-k", "trio",
                    "-b", f"127.0.0.1:{port}", "--backlog", "4096",
                    "--config", str(BENCH / "hypercorn_h2.toml"), *tls_peer,
                    "asgi_hello:app"]),
        ]  # fmt: skip
        url = f"{scheme}://127.0.0.1:{port}/"
        for name, argv in b.cfg.rounds * subjects:
            with b.guard(ROW, name), b.server(ROW, name, argv, port) as proc:
                proc.start_profile(slug(f"{ROW} {name}"), seconds - 1)
                cpu0 = proc.cpu_seconds()
                rate, problems = run_h2load(url, seconds)
                cpu = (proc.cpu_seconds() - cpu0) / max(rate * seconds, 1)
                b.add(ROW, workload, name, rate, "requests/s", problems,
                      cpu=cpu, cpu_unit="request")  # fmt: skip


def _tunnel(
    proxy: int, sink: int, size: int, framing: str, up: bool
) -> tuple[int, float]:
    out = subprocess.run(
        [str(BENCH_PY), str(BENCH / "h2_tunnel.py"), str(proxy), str(sink),
         str(size), framing, "up" if up else "down", "20"],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.split()  # fmt: skip
    return int(out[0]), float(out[1])


def row_tunnel(
    b: Any, upstream: Callable[[str, int], list[str]], hijack_name: str,
    server_proc: Any,
) -> None:  # fmt: skip
    """One CONNECT tunnel, the same hijack process and the same trio client:
    on an HTTP/2 stream (hijack's figure) against HTTP/1.1 (the peer), where
    the tunnel goes to the relay hub."""
    size = 200 * 1000 * 1000
    sink = free_port()
    with server_proc("sink", upstream("sink", sink), sink):
        port = free_port()
        argv = [str(BENCH_PY), str(BENCH / "hijack_servers.py"), "connect",
                str(port), "--allow-port", str(sink), "--http2"]  # fmt: skip
        for _ in range(b.cfg.rounds):
            for name, framing in ((hijack_name, "h2"), (TUNNEL_PEER, "h1")):
                with b.guard(TUNNEL_ROW, name), b.server(TUNNEL_ROW, name, argv, port):
                    _tunnel(port, sink, 20 * 1000 * 1000, framing, True)  # warm up
                    for up in (True, False):
                        moved, elapsed = _tunnel(port, sink, size, framing, up)
                        workload = "1 stream " + ("upload" if up else "download")
                        note = "" if moved >= size else f"{moved / 1e6:.0f} MB in 20 s"
                        b.add(TUNNEL_ROW, workload, name, moved / elapsed / 1e6,
                              "MB/s", note)  # fmt: skip


def _held_rss(b: Any, proc: Any, proxy: int, echo: int, framing: str) -> float:
    """Server RSS growth per tunnel while ``HELD`` tunnels are open."""
    argv = [str(BENCH_PY), str(BENCH / "h2_tunnel.py"), "hold", str(proxy),
            str(echo)]  # fmt: skip
    warm = subprocess.run([*argv, "10", framing], input="", capture_output=True,
                          text=True, timeout=60, check=True)  # fmt: skip
    if not warm.stdout.startswith("ready"):
        raise RuntimeError(f"warm-up: {warm.stdout} {warm.stderr}")
    time.sleep(0.5)
    before = proc.rss_kib()
    holder = subprocess.Popen([*argv, str(HELD), framing], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        if not line.startswith("ready"):
            raise RuntimeError(f"holder said {line!r}")
        time.sleep(1.0)
        after = proc.rss_kib()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    return float(after - before) / HELD


def row_held(
    b: Any, upstream: Callable[[str, int], list[str]], hijack_name: str,
    server_proc: Any,
) -> None:  # fmt: skip
    """100 tunnels on one HTTP/2 connection against 100 HTTP/1.1 tunnels
    (one connection each; handed to the relay hub): server memory per
    tunnel. No target: the figure is stated."""
    row = "tunnels held"
    echo = free_port()
    with server_proc("echo-upstream", upstream("echo", echo), echo):
        port = free_port()
        argv = [str(BENCH_PY), str(BENCH / "hijack_servers.py"), "connect",
                str(port), "--allow-port", str(echo), "--http2"]  # fmt: skip
        for _ in range(b.cfg.rounds):
            for name, framing, workload in (
                (hijack_name, "h2", f"{HELD} tunnels on one HTTP/2 connection"),
                (hijack_name, "h1", f"{HELD} HTTP/1.1 tunnels"),
            ):
                with b.guard(row, name), b.server(row, name, argv, port) as proc:
                    per = _held_rss(b, proc, port, echo, framing)
                    b.add(row, workload, name, per, "KiB/tunnel",
                          lower_is_better=True)  # fmt: skip


def row_ws(
    b: Any, venv_bin: Path, hijack_name: str, slug: Callable[[str], str]
) -> None:
    """64-byte WebSocket echo over RFC 8441, 8 HTTP/2 connections, the same
    client (bench/h2_ws.py) against hijack's echo and hypercorn's."""
    port = free_port()
    subjects = [
        (hijack_name, [str(BENCH_PY), str(BENCH / "hijack_servers.py"), "ws",
                       str(port), "--http2"]),
        (WS_PEER, [str(venv_bin / "hypercorn"), "-k", "trio",
                   "-b", f"127.0.0.1:{port}", "--config",
                   str(BENCH / "hypercorn_h2.toml"), "asgi_ws:app"]),
    ]  # fmt: skip
    seconds = b.cfg.wrk_seconds
    client = [str(BENCH_PY), str(BENCH / "h2_ws.py"), str(port), "8"]
    for name, argv in b.cfg.rounds * subjects:
        with b.guard(WS_ROW, name), b.server(WS_ROW, name, argv, port) as proc:
            subprocess.run([*client, "1"], check=True, capture_output=True,
                           timeout=60)  # warm up  # fmt: skip
            proc.start_profile(slug(f"{WS_ROW} {name}"), seconds - 1)
            cpu0 = proc.cpu_seconds()
            out = subprocess.run([*client, str(seconds)], check=True, text=True,
                                 capture_output=True, timeout=seconds + 60)  # fmt: skip
            messages, elapsed = out.stdout.split()
            rate = int(messages) / float(elapsed)
            cpu = (proc.cpu_seconds() - cpu0) / max(int(messages), 1)
            b.add(WS_ROW, "64 B echo, 8 connections", name, rate, "messages/s",
                  cpu=cpu, cpu_unit="message")  # fmt: skip
