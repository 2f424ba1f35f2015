"""tools/check_layers.py: the package's floors hold, and the check sees a
loop or an upward import when there is one."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load_checker() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "check_layers", ROOT / "tools" / "check_layers.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_layers"] = module
    spec.loader.exec_module(module)
    return module


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / "hijack" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / "hijack"


def test_the_package_has_no_loop_and_no_upward_import() -> None:
    assert load_checker().problems(ROOT / "hijack") == []


def test_a_loop_is_reported_even_when_lazy_or_type_only(tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "__init__.py": "",
            "_a.py": "def f():\n    from ._b import g\n",
            "_b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
            "    from ._a import f\n",
        },
    )
    assert load_checker().problems(package) == [
        "import loop: hijack._a -> hijack._b -> hijack._a"
    ]


def test_an_import_from_a_floor_above_is_reported(tmp_path: Path) -> None:
    package = write(
        tmp_path,
        {
            "__init__.py": "",
            "_server.py": "from .cli import main\n",
            "cli/__init__.py": "def main() -> None: ...\n",
            "tunnel/__init__.py": "",
            "tunnel/policy.py": "from ..upgrades import connect\n",
            "upgrades/__init__.py": "",
            "upgrades/connect.py": "from ..tunnel import policy\n",
        },
    )
    assert load_checker().problems(package) == [
        "hijack._server imports hijack.cli: core is below cli",
        "hijack.tunnel.policy imports hijack.upgrades.connect: tunnel is below "
        "upgrades",
        "import loop: hijack.tunnel.policy -> hijack.upgrades.connect -> "
        "hijack.tunnel.policy",
    ]


def test_upgrades_use_the_public_api_only() -> None:
    """The upgrades are the proof that users can write their own: none
    imports a private module of the core (``hijack._x``)."""
    import ast

    private = []
    for path in (ROOT / "hijack" / "upgrades").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        package = list(parts[:-1])  # a module's package; an __init__'s own
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package[: len(package) - (node.level - 1)]
                    module = [*base, *(node.module or "").split(".")]
                else:
                    module = (node.module or "").split(".")
                if (
                    len(module) > 1
                    and module[0] == "hijack"
                    and module[1].startswith("_")
                ):
                    private.append(f"{path.relative_to(ROOT)}: {'.'.join(module)}")
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    module = alias.name.split(".")
                    if (
                        len(module) > 1
                        and module[0] == "hijack"
                        and module[1].startswith("_")
                    ):
                        private.append(f"{path.relative_to(ROOT)}: {alias.name}")
    assert private == []
