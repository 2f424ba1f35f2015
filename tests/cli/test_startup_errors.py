"""Every start-up problem is one line on stderr naming the flag, the file or
the key, exit status 2, nothing bound, no file left behind, no traceback;
and a failed reload is one log line while the old configuration serves.

Two tables. ``REAL``: the cases the command was seen to get wrong (and a
few like them), each run as the real ``hijack`` command in a subprocess,
all at once. Every server case listens on a port this test holds: had the
command bound before finding the problem, it would report "Address already
in use" instead of the problem (and ``held-port`` proves the hold works).
``OPTIONS``: each option's bad values, through ``main()`` in this process
(the same parser and the same one-line report), both on the command line
and as a key of a ``--config`` file.
"""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from hijack.cli import main
from hijack.tunnel.users import hash_password

from ..hijack_process import http_get, run_hijack

#: Real time: one command start on a loaded machine, bounded.
TIMEOUT = 60
#: Commands started at once (2 cores, shared).
PARALLEL = 4

BROKEN_TOML = "[users.alice\n"


@dataclass(frozen=True)
class Case:
    """``hijack ARGS``; files written first (``{dir}`` is the case's own
    directory, ``{port}`` the held port); stderr must hold every word."""

    id: str
    args: tuple[str, ...]
    words: tuple[str, ...]
    files: dict[str, bytes] = field(default_factory=dict)
    shadow_prometheus: bool = False  # as if the metrics extra were missing


def case(
    id: str,
    args: str,
    *words: str,
    files: dict[str, bytes] | None = None,
    shadow_prometheus: bool = False,
) -> Case:
    return Case(id, tuple(args.split()), words, files or {}, shadow_prometheus)


LISTEN = "--listen 127.0.0.1:{port}"

REAL = [
    # -- the cases of the report ------------------------------------------------
    case(
        "users-file-not-toml",
        f"proxy {LISTEN} --users {{dir}}/u.toml",
        "--users {dir}/u.toml",
        "Expected ']'",
        files={"u.toml": BROKEN_TOML.encode()},
    ),
    case(
        "users-file-missing",
        f"proxy {LISTEN} --users {{dir}}/none.toml",
        "--users {dir}/none.toml: No such file or directory\n",
    ),
    case(
        "targets-file-missing",
        f"wsbridge {LISTEN} --targets {{dir}}/none",
        "--targets {dir}/none: No such file or directory",
    ),
    case(
        "max-tunnels-per-client-0",
        f"proxy {LISTEN} --max-tunnels-per-client 0",
        "--max-tunnels-per-client",
        "at least 1",
    ),
    case("allow-port-99999", f"proxy {LISTEN} --allow-port 99999", "--allow-port"),
    case(
        "allow-port-99999-in-config",
        f"proxy {LISTEN} --config {{dir}}/c.toml",
        "--config {dir}/c.toml: allow-port: a port is 1 to 65535",
        files={"c.toml": b"allow-port = [99999]\n"},
    ),
    case(
        "direct-bad-network",
        f"proxy {LISTEN} --upstream-proxy socks5://127.0.0.1:1 --direct 10.0.0.0/33",
        "--direct",
        "10.0.0.0/33",
    ),
    case(
        "config-not-utf8",
        "proxy --config {dir}/c.toml",
        "--config {dir}/c.toml",
        "decode byte 0xff",
        files={"c.toml": b'listen = "127.0.0.1:{port}"\n\xff\n'},
    ),
    case(
        "config-workers-float",
        f"proxy {LISTEN} --config {{dir}}/c.toml",
        "--config {dir}/c.toml: workers:",
        "2.5",
        files={"c.toml": b"workers = 2.5\n"},
    ),
    case("demo-unix", "demo --unix {dir}/d.sock", "--unix", "use --listen"),
    case(
        "metrics-extra-missing",
        f"demo {LISTEN} --metrics 127.0.0.1:0",
        "--metrics needs prometheus-client",
        shadow_prometheus=True,
    ),
    case(
        "metrics-extra-missing-workers",
        f"demo {LISTEN} --metrics 127.0.0.1:0 --workers 2",
        "--metrics needs prometheus-client",
        shadow_prometheus=True,
    ),
    case("workers-0", f"proxy {LISTEN} --workers 0", "--workers", "at least 1"),
    case("workers-minus-3", f"proxy {LISTEN} --workers -3", "--workers"),
    case(
        "direct-without-parent",
        f"proxy {LISTEN} --direct example.com",
        "--direct",
        "give --upstream-proxy",
    ),
    # -- files, TLS, addresses, combinations --------------------------------------
    case(
        "users-file-broken-with-workers",
        f"proxy {LISTEN} --workers 2 --users {{dir}}/u.toml",
        "--users {dir}/u.toml",
        files={"u.toml": BROKEN_TOML.encode()},
    ),
    case(
        "users-file-bad-hash",
        f"tcp {LISTEN} --upstream 127.0.0.1:9 --users {{dir}}/u.toml",
        "--users {dir}/u.toml",
        "mallory",
        files={"u.toml": b"[users.mallory]\npassword = 'plain text'\n"},
    ),
    case(
        "users-file-not-utf8",
        f"proxy {LISTEN} --users {{dir}}/u.toml",
        "--users {dir}/u.toml",
        files={"u.toml": b"[users.\xff]\n"},
    ),
    case(
        "targets-file-bad-line",
        f"wsbridge {LISTEN} --targets {{dir}}/t",
        "--targets {dir}/t",
        files={"t": b"vnc 127.0.0.1\n"},
    ),
    case(
        "targets-file-not-utf8",
        f"wsbridge {LISTEN} --targets {{dir}}/t",
        "--targets {dir}/t",
        files={"t": b"\xff: 127.0.0.1:1\n"},
    ),
    case(
        "tls-cert-without-key",
        f"echo {LISTEN} --tls-cert {{dir}}/c.pem",
        "--tls-cert and --tls-key go together",
    ),
    case(
        "tls-files-missing",
        f"echo {LISTEN} --tls-cert {{dir}}/c.pem --tls-key {{dir}}/k.pem",
        "--tls-cert {dir}/c.pem --tls-key {dir}/k.pem: No such file",
    ),
    case(
        "tls-files-not-pem",
        f"echo {LISTEN} --tls-cert {{dir}}/c.pem --tls-key {{dir}}/c.pem",
        "--tls-cert {dir}/c.pem",
        files={"c.pem": b"not a certificate\n"},
    ),
    case(
        "tls-files-missing-with-workers",
        f"echo {LISTEN} --workers 2 --tls-cert {{dir}}/c.pem --tls-key {{dir}}/k.pem",
        "--tls-cert {dir}/c.pem",
    ),
    case("held-port", f"echo {LISTEN}", "--listen 127.0.0.1:{port}", "in use"),
    case(
        "address-not-here",
        "echo --listen 192.0.2.1:8080",
        "--listen 192.0.2.1:8080",
        "assign requested address",
    ),
    case("port-out-of-range", "echo --listen 127.0.0.1:70000", "--listen", "70000"),
    case(
        "unix-in-missing-dir",
        "echo --unix {dir}/none/s.sock",
        "--unix {dir}/none/s.sock",
    ),
    case(
        "metrics-port-held",
        "echo --unix {dir}/s.sock --metrics 127.0.0.1:{port}",
        "--metrics 127.0.0.1:{port}",
        "in use",
    ),
    case(
        "wsbridge-policy-without-targets",
        f"wsbridge {LISTEN} --upstream 127.0.0.1:9 --allow-port 22",
        "--allow-port",
        "check --targets",
    ),
    case(
        "config-file-missing",
        "echo --config {dir}/none.toml",
        "--config {dir}/none.toml: No such file",
    ),
    case(
        "config-unknown-key",
        "echo --config {dir}/c.toml",
        "--config {dir}/c.toml: unknown option 'nonsense'",
        files={"c.toml": b"nonsense = 1\n"},
    ),
    case(
        "config-bad-choice",
        f"echo {LISTEN} --config {{dir}}/c.toml",
        "--config {dir}/c.toml: access-log-format:",
        files={"c.toml": b'access-log-format = "xml"\n'},
    ),
    case(
        "forward-connect-without-target",
        "forward --listen 127.0.0.1:{port} --via 127.0.0.1:9",
        "--mode connect needs --target",
    ),
    case(
        "forward-port-held",
        "forward --listen 127.0.0.1:{port} --via 127.0.0.1:9 --target h:1",
        "--listen 127.0.0.1:{port}: Address already in use",
    ),
    case("unknown-command", "nonsense", "invalid choice: 'nonsense'"),
]


@dataclass
class Outcome:
    returncode: int
    stdout: str
    stderr: str
    leftovers: list[str]  # files in the case's directory the case did not write


@dataclass
class Outcomes:
    port: int  # the port held while they ran
    root: Path  # the cases' directories are here, by id
    by_case: dict[str, Outcome]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outcomes]:
    """Every REAL case, run in parallel while this module holds a port."""
    root = tmp_path_factory.mktemp("startup")
    shadow = root / "no-prometheus"  # an import of it fails, as if not installed
    (shadow / "prometheus_client").mkdir(parents=True)
    (shadow / "prometheus_client" / "__init__.py").write_text("raise ImportError\n")
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]

        def run(case: Case) -> Outcome:
            directory = root / case.id
            (directory / "tmp").mkdir(parents=True)
            for name, content in case.files.items():
                text = content.replace(b"{port}", str(port).encode())
                (directory / name).write_bytes(text)
            env = dict(os.environ, TMPDIR=str(directory / "tmp"))
            if case.shadow_prometheus:
                env["PYTHONPATH"] = str(shadow)
            args = [a.format(dir=directory, port=port) for a in case.args]
            done = subprocess.run(
                [sys.executable, "-m", "hijack", *args],
                capture_output=True,
                text=True,
                timeout=TIMEOUT,
                env=env,
                cwd=directory,
            )
            left = sorted(
                str(p.relative_to(directory))
                for p in directory.rglob("*")
                if p.name not in case.files and p.name != "tmp"
            )
            return Outcome(done.returncode, done.stdout, done.stderr, left)

        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            results = dict(zip([c.id for c in REAL], pool.map(run, REAL), strict=True))
    yield Outcomes(port, root, results)


@pytest.mark.parametrize("case", REAL, ids=[c.id for c in REAL])
def test_real_command_says_one_line_and_exits_2(case: Case, outcomes: Outcomes) -> None:
    outcome = outcomes.by_case[case.id]
    port, root = outcomes.port, outcomes.root
    detail = f"exit {outcome.returncode}\nstdout: {outcome.stdout}\n{outcome.stderr}"
    assert outcome.returncode == 2, detail
    assert outcome.stderr.count("\n") == 1 and outcome.stderr.endswith("\n"), detail
    assert outcome.stderr.startswith("hijack"), detail
    assert "Traceback" not in outcome.stderr
    for word in case.words:
        assert word.format(dir=root / case.id, port=port) in outcome.stderr, detail
    assert "listening on" not in outcome.stdout, detail
    # No socket file, no metrics directory, nothing else left behind.
    assert outcome.leftovers == [], outcome.leftovers


# -- each option's bad values, in this process ------------------------------------

#: (command and what it needs, option, bad value, words of the error).
OPTIONS: list[tuple[str, str, str, str]] = [
    ("echo", "--listen", "8080", "expected HOST:PORT"),
    ("echo", "--listen", "[::1:80", "expected HOST:PORT"),
    ("echo", "--listen", "127.0.0.1:65536", "out of range"),
    ("echo", "--proxy-protocol", "not-a-net", "expected a network"),
    ("echo", "--workers", "0", "at least 1"),
    ("echo", "--workers", "-3", "at least 1"),
    ("echo", "--workers", "2.5", "expected a whole number"),
    ("echo", "--metrics", "localhost", "expected HOST:PORT"),
    ("echo", "--access-log-format", "xml", "invalid choice"),
    ("echo", "--shutdown-grace", "-1", "0 or more"),
    ("echo", "--shutdown-grace", "nan", "finite"),
    ("echo", "--max-message-size", "0", "at least 1"),
    ("echo", "--ping-interval", "-1", "0 or more"),
    ("echo", "--ping-timeout", "0", "above 0"),
    ("proxy", "--idle-timeout", "0", "above 0"),
    ("proxy", "--idle-timeout", "inf", "finite"),
    ("proxy", "--idle-timeout", "soon", "expected seconds"),
    ("proxy", "--send-proxy-protocol", "3", "invalid choice"),
    ("proxy", "--upstream-proxy", "ftp://h:1", "scheme must be"),
    ("proxy", "--upstream-proxy", "http://h", "needs host:port"),
    ("proxy", "--direct", "10.0.0.0/33", "not a host name or network"),
    ("proxy", "--max-tunnels-per-client", "0", "at least 1"),
    ("proxy", "--max-tunnels-per-user", "many", "expected a whole number"),
    ("proxy", "--tunnel-bandwidth", "0", "at least 1 byte/s"),
    ("proxy", "--user-bandwidth", "fast", "expected bytes/s"),
    ("proxy", "--allow-port", "0", "1 to 65535"),
    ("proxy", "--allow-port", "https", "expected a port"),
    ("proxy", "--allow", "300.1.1.1", "not a valid address or network"),
    ("proxy", "--deny", "bad name!", "not a host name or network"),
    ("proxy", "--auth", "alice", "expected USER:PASS"),
    ("proxy", "--connect-timeout", "0", "above 0"),
    ("proxy", "--max-tunnels", "0", "at least 1"),
    ("tcp --upstream 127.0.0.1:9", "--upstream", "127.0.0.1", "expected HOST:PORT"),
    ("forward --via 127.0.0.1:9", "--target", "nowhere", "expected HOST:PORT"),
    ("forward --target h:1", "--via", "127.0.0.1", "expected HOST:PORT"),
    ("forward --target h:1 --via 127.0.0.1:9", "--mode", "udp", "invalid choice"),
]


def _check_one_line(
    capsys: pytest.CaptureFixture[str], argv: list[str], *words: str
) -> None:
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("hijack"), err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(
    ("command", "option", "value", "error"),
    OPTIONS,
    ids=[f"{o}={v}" for _, o, v, _ in OPTIONS],
)
def test_each_bad_option_value(
    capsys: pytest.CaptureFixture[str],
    command: str,
    option: str,
    value: str,
    error: str,
) -> None:
    _check_one_line(capsys, [*command.split(), f"{option}={value}"], option, error)


@pytest.mark.parametrize(
    ("command", "option", "value", "error"),
    [row for row in OPTIONS if row[0] in ("echo", "proxy")],
    ids=[f"{o}={v}" for c, o, v, _ in OPTIONS if c in ("echo", "proxy")],
)
def test_each_bad_option_value_in_the_config_file(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    command: str,
    option: str,
    value: str,
    error: str,
) -> None:
    config = tmp_path / "c.toml"
    key = option.removeprefix("--")
    config.write_text(f"{key} = {value!r}\n".replace("'", '"'))
    _check_one_line(
        capsys, [command, "--config", str(config)], f"--config {config}: {key}:", error
    )


@pytest.mark.parametrize(
    "argv",
    [["proxy", "--unknown"], ["tcp"], ["wsbridge"], ["forward"], []],
    ids=["unknown-flag", "tcp-needs-upstream", "wsbridge-needs-one", "forward", "none"],
)
def test_usage_errors_are_one_line_too(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    _check_one_line(capsys, argv)


# -- reloads --------------------------------------------------------------------


@pytest.mark.parametrize("workers", ["1", "2"])
async def test_a_failed_reload_is_one_line_and_the_old_configuration_serves(
    tmp_path: Path, workers: str
) -> None:
    """A SIGHUP with a broken users file, then with a bad value in the
    config file: one ERROR line each, naming the file (and the key); no
    usage text, no traceback; the server keeps answering."""
    users = tmp_path / "users.toml"
    users.write_text(
        f'[users.alice]\npassword = "{hash_password("x", n=16, r=1, p=1)}"\n'
    )
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'listen = "127.0.0.1:0"\nworkers = {workers}\nusers = "{users}"\n'
    )
    async with run_hijack(
        ["proxy", "--config", str(config)], stop_signal=signal.SIGTERM
    ) as proxy:
        port = await proxy.port()
        users.write_text(BROKEN_TOML)
        proxy.signal(signal.SIGHUP)
        first = await proxy.wait_for(r"ERROR (reload failed.*)\n", stream="stderr")
        assert f"--users {users}: " in first[1]
        users.write_text(f'[users.alice]\npassword = "{hash_password("x")}"\n')
        config.write_text(config.read_text() + "max-tunnels = 0\n")
        proxy.signal(signal.SIGHUP)
        second = await proxy.wait_for(
            r"ERROR (reload failed.*max-tunnels.*)\n", stream="stderr"
        )
        assert f"--config {config}: max-tunnels: must be at least 1" in second[1]
        assert (await http_get(port))[0] == 405  # a GET to a CONNECT proxy
        assert proxy.stderr.count("ERROR") == 2, proxy.stderr
        assert "usage:" not in proxy.stderr and "Traceback" not in proxy.stderr
        assert "reload done" not in proxy.stderr and "INFO reloaded" not in proxy.stderr


async def test_a_reload_says_what_only_a_restart_applies(tmp_path: Path) -> None:
    """A new --listen (or --workers...) in the config file cannot move a
    running process: the reload applies the rest, and says so in one line."""
    config = tmp_path / "echo.toml"
    config.write_text('listen = "127.0.0.1:0"\n')
    async with run_hijack(
        ["echo", "--config", str(config)], stop_signal=signal.SIGTERM
    ) as echo:
        port = await echo.port()
        config.write_text('listen = "127.0.0.1:1"\nping-interval = 5\n')
        echo.signal(signal.SIGHUP)
        await echo.wait_for(r"INFO reloaded", stream="stderr")
        warning = await echo.wait_for(r"WARNING (reload: .*)\n", stream="stderr")
        assert warning[1] == "reload: --listen changed; it applies after a restart"
        assert (await http_get(port))[0] == 200


async def test_a_reload_names_the_shared_state_and_http2_options(
    tmp_path: Path,
) -> None:
    """The shared state, the admin API and HTTP/2 are set up once, with the
    server: a reload that changes them says they wait for a restart."""
    config = tmp_path / "proxy.toml"
    config.write_text('listen = "127.0.0.1:0"\n')
    token = tmp_path / "token"
    token.write_text("a-token-of-twenty-chars\n")
    async with run_hijack(
        ["proxy", "--config", str(config)], stop_signal=signal.SIGTERM
    ) as proxy:
        await proxy.port()
        config.write_text(
            'listen = "127.0.0.1:0"\nhttp2 = true\nstate-timeout = 2.5\n'
            f'admin = "127.0.0.1:0"\nadmin-token-file = "{token}"\n'
        )
        proxy.signal(signal.SIGHUP)
        await proxy.wait_for(r"INFO reloaded", stream="stderr")
        await proxy.wait_for(r"reload: --admin changed", stream="stderr")
        for flag in ("--http2", "--state-timeout", "--admin"):
            line = f"reload: {flag} changed; it applies after a restart"
            assert line in proxy.stderr, proxy.stderr
