"""The documentation's code runs as written (the convention is in
docs/contributing.md):

* every ```python block of README.md and docs/**/*.md is executed, as a
  fresh ``__main__`` module in a temporary directory, unless the line before
  it says why not: ``% not run: REASON`` (MyST comment) or
  ``<!-- not run: REASON -->`` (README), or names the test that runs it:
  ``% run by tests/FILE.py::TEST`` (that test must exist);
* every ```toml block parses;
* every relative link of README.md names a file that exists;
* every public name of ``hijack`` is in the API reference.

The site itself (internal links, cross references) is checked by
``make docs`` (Sphinx with warnings as errors).
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

import hijack

from ..conftest import StartServer
from ..helpers import read_until, read_until_closed

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("**/*.md")])
PAGES = [p for p in PAGES if "_build" not in p.parts and "_generated" not in p.parts]

FENCE = re.compile(
    r"^(?P<indent>[ ]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<code>.*?)^(?P=indent)```[ ]*$",
    re.M | re.S,
)
MARKER = re.compile(
    r"^\s*(?:%|<!--)\s*(?P<kind>not run:|run by)\s*(?P<what>.*?)\s*(?:-->)?\s*$"
)


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    lang: str
    code: str
    marker: re.Match[str] | None

    @property
    def name(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        indent = match["indent"]
        code = "\n".join(
            line.removeprefix(indent) for line in match["code"].splitlines()
        )
        line = text.count("\n", 0, match.start()) + 1
        found.append(Block(page, line, match["lang"], code, MARKER.match(before)))
    return found


ALL = [block for page in PAGES for block in blocks(page)]
PYTHON = [b for b in ALL if b.lang == "python"]


def test_the_docs_have_code_to_run() -> None:
    assert len([b for b in PYTHON if b.marker is None]) >= 10
    assert len(ECHO_SERVERS) >= 2  # the README's quick start and the tutorial's


REAL_RUN = trio.run
#: Real seconds a block's ``trio.run(main)`` may take: a snippet that serves
#: forever fails instead of hanging the suite.
BLOCK_TIME_LIMIT = 20


def bounded_run(main: Callable[..., Awaitable[Any]], *args: Any, **kwargs: Any) -> Any:
    async def limited() -> Any:
        with trio.fail_after(BLOCK_TIME_LIMIT):
            return await main(*args)

    return REAL_RUN(limited, **kwargs)


@pytest.mark.parametrize("block", PYTHON, ids=lambda b: b.name)
def test_python_block_runs_as_written(
    block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if block.marker is not None:
        if block.marker["kind"] == "not run:":
            assert block.marker["what"], f"{block.name}: say why it is not run"
            pytest.skip(f"not run: {block.marker['what']}")
        path, _, test = block.marker["what"].partition("::")
        source = (ROOT / path).read_text()
        assert re.search(rf"^(async )?def {test}\(", source, re.M), block.marker[0]
        return
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(trio, "run", bounded_run)
    code = compile(block.code, block.name, "exec")
    exec(code, {"__name__": "__main__"})


@pytest.mark.parametrize(
    "block", [b for b in ALL if b.lang == "toml"], ids=lambda b: b.name
)
def test_toml_block_parses(block: Block) -> None:
    tomllib.loads(block.code)


def test_readme_links_point_at_files() -> None:
    readme = (ROOT / "README.md").read_text()
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", readme)
    local = [link for link in links if "://" not in link]
    assert local, "the README links into the docs"
    missing = [link for link in local if not (ROOT / link).exists()]
    assert not missing


def test_every_public_name_is_in_the_api_reference() -> None:
    reference = (ROOT / "docs/reference/api.md").read_text()
    missing = [
        n
        for n in hijack.__all__
        if f"hijack.{n}\n" not in reference and f":: {n}\n" not in reference
    ]
    assert not missing


def run_by(test: str) -> list[Block]:
    """The blocks whose marker names ``test`` (in this file) as their runner."""
    return [
        b
        for b in PYTHON
        if b.marker is not None
        and b.marker["what"] == f"tests/project/test_docs.py::{test}"
    ]


ECHO_SERVERS = run_by("test_echo_server_blocks_serve_and_echo")


@pytest.mark.parametrize("block", ECHO_SERVERS, ids=lambda b: b.name)
async def test_echo_server_blocks_serve_and_echo(
    block: Block, start_server: StartServer
) -> None:
    """The quick start's server (README, tutorial) serves until Ctrl-C: run
    as written minus its last line, ``trio.run(main)``, its ``handler`` on a
    free port, spoken to over a real socket as the text says."""
    code = block.code.rstrip()
    assert code.endswith("trio.run(main)")
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    exec(compile(code.removesuffix("trio.run(main)"), block.name, "exec"), namespace)
    _, port = await start_server(namespace["handler"])
    async with await trio.open_tcp_stream("127.0.0.1", port) as stream:
        await stream.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        assert (await read_until(stream, b"hello\n")).startswith(b"HTTP/1.1 200 OK")
        await stream.send_all(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\nhi"
        )
        data = await read_until(stream, b"\r\n\r\nhi")
        assert data.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
        await stream.send_eof()
        assert await read_until_closed(stream) == b""


def _quantity(text: str) -> float:
    """``10 s``, ``32 KiB``, ``16 MiB``, ``10,000``, ``3`` -> a number."""
    number, _, unit = text.strip().partition(" ")
    scale = {"": 1, "s": 1, "KiB": 1024, "MiB": 1024 * 1024}[unit]
    return float(number.replace(",", "")) * scale


def test_the_limits_table_says_what_limits_defaults_are() -> None:
    """docs/reference/limits.md lists every field of ``Limits`` with its
    real default (a new field, or a changed default, fails here)."""
    text = (ROOT / "docs/reference/limits.md").read_text()
    documented: dict[str, float] = {}
    for row in re.findall(r"^\| `(\w+)`((?: / `\w+`)*)[^|]*\| ([^|]+) \|", text, re.M):
        first, rest, defaults = row
        names = [first, *re.findall(r"`(\w+)`", rest)]
        # `tcp_keepalive_idle` / `_interval` / `_count`: suffixes of the first
        prefix = first.rsplit("_", 1)[0]
        names = [names[0], *(prefix + n if n.startswith("_") else n for n in names[1:])]
        for name, default in zip(names, defaults.split(" / "), strict=True):
            documented[name] = _quantity(default)
    actual = {f.name: f.default for f in dataclasses.fields(hijack.Limits)}
    assert documented == actual
