"""The built wheel ships what users need: py.typed, the upgrades, the CLI,
the pytest plugin."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_wheel_contains_py_typed_and_every_module(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--no-deps",
            "-q", "-w", str(tmp_path), str(ROOT),
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("hijack-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "hijack/py.typed" in names
    for module in ROOT.joinpath("hijack").rglob("*.py"):
        assert module.relative_to(ROOT).as_posix() in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "hijack = hijack.cli:main" in text
    # The pytest plugin: its module and its pytest11 entry point.
    assert "pytest_hijack.py" in names
    assert "[pytest11]\nhijack = pytest_hijack" in text
