"""Our Sphinx extension: reference pages written from the code itself.

The directives produce reStructuredText: in a MyST page, use them inside an
``{eval-rst}`` block.

* ``hijack-cli``: every command and its options, read from the real argument
  parser (``hijack.cli._main.build_parser()``), so the page cannot drift from
  ``hijack COMMAND --help`` and a new subcommand appears by itself.
* ``hijack-config-keys``: the keys a ``--config`` file takes (the long option
  names, per command), from the same parser.
* ``hijack-metrics``: the Prometheus metric names, types, labels and help,
  read from the ``Metrics`` object the command builds.
* At ``builder-inited``, the benchmark charts (``bench_charts.py``) are drawn
  from ``bench/RESULTS.md`` into ``_generated/``.
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bench_charts
from docutils import nodes
from docutils.statemachine import StringList
from sphinx.application import Sphinx
from sphinx.ext.napoleon import Config as NapoleonConfig
from sphinx.ext.napoleon.docstring import GoogleDocstring
from sphinx.util.docutils import SphinxDirective
from sphinx.util.nodes import nested_parse_with_titles

DOCS = Path(__file__).resolve().parent.parent
SUPPRESS = argparse.SUPPRESS


def build_parser() -> argparse.ArgumentParser:
    from hijack.cli._main import build_parser as build

    return build()


def subcommands(parser: argparse.ArgumentParser) -> Iterator[tuple[str, Any, str]]:
    """(name, subparser, one-line help) for every subcommand, in the order
    they were added (the order of ``hijack --help``)."""
    for action in parser._actions:  # argparse keeps subcommands only here
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, subparser in action.choices.items():
                yield name, subparser, helps.get(name, "")


def _literal(text: str) -> str:
    return "``" + text + "``" if text else ""


def _escape(text: str) -> str:
    """Plain argparse help text inside reST: no markup of its own."""
    return (
        text.replace("\\", "\\\\")
        .replace("*", "\\*")
        .replace("`", "\\`")
        .replace("|", "\\|")
        .replace("_", "\\_")
    )


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:
        params = dict(vars(action), prog=prog)
        params = {k: v for k, v in params.items() if v is not SUPPRESS}
        text = text % params
    return " ".join(text.split())


def _option_title(action: argparse.Action) -> str:
    if not action.option_strings:
        return action.metavar if isinstance(action.metavar, str) else action.dest
    metavar = ""
    if action.nargs != 0:
        metavar = (
            action.metavar if isinstance(action.metavar, str) else action.dest.upper()
        )
        if action.choices is not None and action.metavar is None:
            metavar = "{" + ",".join(str(c) for c in action.choices) + "}"
    return ", ".join(f"{o} {metavar}".strip() for o in action.option_strings)


def _option_lines(action: argparse.Action, prog: str) -> list[str]:
    lines = [f"``{_option_title(action)}``"]
    body = _escape(_help(action, prog)) or "(no help)"
    facts = []
    if isinstance(action, argparse._AppendAction) and "repeatable" not in body:
        facts.append("repeatable")
    if action.required:
        facts.append("required")
    if facts:
        body += " *(" + ", ".join(facts) + ")*"
    lines.append("   " + body)
    lines.append("")
    return lines


def _groups(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, list[argparse.Action]]]:
    for group in parser._action_groups:
        actions = [
            a
            for a in group._group_actions
            if a.help is not SUPPRESS
            and not isinstance(a, argparse._HelpAction | argparse._SubParsersAction)
        ]
        if actions:
            title = group.title or "options"
            yield title, actions


def cli_rest(parser: argparse.ArgumentParser) -> list[str]:
    """The whole command reference as reST lines."""
    lines: list[str] = []
    lines += [".. code-block:: text", ""]
    lines += ["   " + line for line in parser.format_usage().strip().splitlines()]
    lines += ["", _escape(parser.description or ""), ""]
    for title, actions in _groups(parser):
        lines += [f"**{title.capitalize()}** (before the command)", ""]
        for action in actions:
            lines += _option_lines(action, parser.prog)
    for name, subparser, one_line in subcommands(parser):
        lines += [f".. _cli-{name}:", "", f"hijack {name}", "-" * (7 + len(name)), ""]
        if one_line:
            lines += [_escape(one_line), ""]
        lines += [".. code-block:: text", ""]
        lines += [
            "   " + line for line in subparser.format_usage().strip().splitlines()
        ]
        lines += [""]
        if subparser.description:
            lines += [_escape(" ".join(subparser.description.split())), ""]
        for title, actions in _groups(subparser):
            lines += [f"**{title.capitalize()}**", ""]
            for action in actions:
                lines += _option_lines(action, subparser.prog)
        if subparser.epilog:
            lines += [_escape(" ".join(subparser.epilog.split())), ""]
    return lines


def _toml_kind(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "true / false"
    kind = "number" if action.type in (int, float) else "string"
    if isinstance(action, argparse._AppendAction):
        return f"list of {kind}s"
    return kind


def config_rest(parser: argparse.ArgumentParser) -> list[str]:
    """A table: every key a ``--config`` file may hold, its TOML type and
    the commands that take it."""
    keys: dict[str, tuple[str, list[str]]] = {}

    def add(action: argparse.Action, command: str) -> None:
        long = [o for o in action.option_strings if o.startswith("--")]
        if not long or action.dest in ("help", "config"):
            return
        key = long[0].removeprefix("--")
        keys.setdefault(key, (_toml_kind(action), []))[1].append(command)

    for action in parser._actions:
        add(action, "(all)")
    for name, subparser, _ in subcommands(parser):
        for action in subparser._actions:
            add(action, name)
    lines = [".. list-table::", "   :header-rows: 1", "", "   * - key", "     - value"]
    lines += ["     - commands"]
    for key in sorted(keys):
        kind, commands = keys[key]
        lines += [
            f"   * - ``{key}``",
            f"     - {kind}",
            f"     - {', '.join(commands)}",
        ]
    return lines


def metrics_rest() -> list[str]:
    """A table of the metrics the command's ``Metrics`` object registers."""
    from hijack.cli._metrics import Metrics

    metrics = Metrics()
    rows = []
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if name is None:
            continue
        kind = value._type
        exposed = f"{name}_total" if kind == "counter" else name
        labels = ", ".join(f"``{label}``" for label in value._labelnames)
        rows.append((exposed, kind, labels, value._documentation))
    lines = [".. list-table::", "   :header-rows: 1", ""]
    lines += ["   * - metric", "     - type", "     - labels", "     - what it counts"]
    for exposed, kind, labels, doc in rows:
        lines += [f"   * - ``{exposed}``", f"     - {kind}", f"     - {labels}"]
        lines += [f"     - {_escape(doc)}"]
    return lines


class _RestDirective(SphinxDirective):
    has_content = False

    def lines(self) -> list[str]:
        raise NotImplementedError

    def run(self) -> list[nodes.Node]:
        container = nodes.section() if self.with_titles else nodes.container()
        source = self.get_source_info()[0]
        content = StringList(self.lines(), source=source)
        if self.with_titles:
            nested_parse_with_titles(self.state, content, container)
        else:
            self.state.nested_parse(content, self.content_offset, container)
        return list(container.children)

    with_titles = False


class CLIDirective(_RestDirective):
    with_titles = True

    def lines(self) -> list[str]:
        return cli_rest(build_parser())


class ConfigKeysDirective(_RestDirective):
    def lines(self) -> list[str]:
        return config_rest(build_parser())


class MetricsDirective(_RestDirective):
    def lines(self) -> list[str]:
        return metrics_rest()


def draw_charts(app: Sphinx) -> None:
    bench_charts.write_charts(DOCS.parent / "bench" / "RESULTS.md", DOCS / "_generated")


def _field_list_as_attributes(obj: Any, lines: list[str]) -> list[str]:
    """A dataclass docstring that lists its fields as ``name: text`` lines
    (continuations indented) without an "Attributes:" header gets one."""
    if any(line.strip() in ("Attributes:", "Args:") for line in lines):
        return lines
    fields = {f.name for f in dataclasses.fields(obj)}
    for index, line in enumerate(lines):
        name = line.split(":", 1)[0].split(" / ")[0].strip()
        if ":" in line and not line.startswith(" ") and name in fields:
            rest = [("    " + item) if item else item for item in lines[index:]]
            return [*lines[:index], "Attributes:", *rest]
    return lines


def google_sections(
    app: Sphinx, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """The docstrings' Google-style sections ("Attributes:", "Args:") as reST,
    for classes, functions and modules only: napoleon would also read the
    first line of a property ("A snapshot: the open connections") as a type."""
    if what not in ("class", "exception", "function", "method", "module"):
        return
    if what == "class" and dataclasses.is_dataclass(obj):
        lines[:] = _field_list_as_attributes(obj, lines)
    config: Any = NapoleonConfig(
        napoleon_use_ivar=False, napoleon_numpy_docstring=False
    )
    kind: Any = what
    converted = GoogleDocstring(lines, config, app, kind, name, obj, options).lines()
    lines[:] = converted


def resolve_short_name(
    app: Sphinx, env: Any, node: Any, contnode: nodes.Element
) -> nodes.Element | None:
    """A Python reference written with a short name (``ConnectPolicy`` in a
    module that imports it) links to the one documented object of that
    name, if there is exactly one."""
    if node.get("refdomain") != "py":
        return None
    target = node["reftarget"].lstrip(".~")
    domain = env.get_domain("py")
    found: list[str] = []
    # The name as written, then its last part (a re-exported class named
    # through the module that re-exports it).
    for wanted in dict.fromkeys([target, target.rsplit(".", 1)[-1]]):
        found = [n for n in domain.objects if n == wanted or n.endswith("." + wanted)]
        if found:
            break
    if len(found) != 1:
        return None
    name = found[0]
    docname = domain.objects[name].docname
    from sphinx.util.nodes import make_refnode

    return make_refnode(
        app.builder,
        node["refdoc"],
        docname,
        domain.objects[name].node_id,
        contnode,
        name,
    )


def setup(app: Sphinx) -> dict[str, Any]:
    app.connect("missing-reference", resolve_short_name)
    app.connect("autodoc-process-docstring", google_sections)
    app.add_directive("hijack-cli", CLIDirective)
    app.add_directive("hijack-config-keys", ConfigKeysDirective)
    app.add_directive("hijack-metrics", MetricsDirective)
    app.connect("builder-inited", draw_charts)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
