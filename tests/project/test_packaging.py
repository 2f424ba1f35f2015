"""The built wheel ships what users need: py.typed, the upgrades, the CLI,
the pytest plugin; under the distribution name trio-hijack ("hijack" on
the package index is another project), with the version ``hijack
--version`` says."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import hijack

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_contains_py_typed_and_every_module(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable, "-m", "pip", "wheel", "--no-deps",
            "-v", "-w", str(tmp_path), str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
    )  # fmt: skip
    # The build's own output (setuptools speaks through pip -v): no
    # deprecation warning, as `project.license` as a table gave.
    assert "Deprecat" not in built.stdout + built.stderr
    (wheel,) = tmp_path.glob("trio_hijack-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    headers = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "\nName: trio-hijack\n" in headers
    assert f"\nVersion: {hijack.__version__}\n" in headers
    assert "\nLicense-Expression: MIT\n" in headers
    assert "hijack/py.typed" in names
    for module in ROOT.joinpath("hijack").rglob("*.py"):
        assert module.relative_to(ROOT).as_posix() in names
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "hijack = hijack.cli:main" in text
    # The pytest plugin: its module and its pytest11 entry point.
    assert "pytest_hijack.py" in names
    assert "[pytest11]\nhijack = pytest_hijack" in text


def test_version_flag() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "hijack", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout == f"hijack {hijack.__version__}\n"
