"""Draw the benchmark charts from ``bench/RESULTS.md`` (what ``make bench``
wrote): one SVG per row of the bench (tunnel throughput, tunnel setup, ...),
one panel per workload, one bar per server, hijack's bars highlighted.

Run by the docs build (``hijack_docs.draw_charts``) into ``docs/_generated``;
also a script: ``python docs/_ext/bench_charts.py bench/RESULTS.md OUTDIR``.
The figures are the file's, as written: nothing is computed but the layout.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

HIJACK_COLOR = "#d9480f"
PEER_COLOR = "#868e96"
CEILING_COLOR = "#ced4da"


@dataclass(frozen=True)
class Figure:
    """One line of the results table."""

    row: str
    workload: str
    server: str
    value: float
    unit: str
    cpu: str


def parse_results(text: str) -> list[Figure]:
    """The lines of the first table of RESULTS.md (``| row | workload |
    server | figure | ...``), figures split into value and unit."""
    figures = []
    in_table = False
    for line in text.splitlines():
        if line.startswith("| row | workload | server | figure"):
            in_table = True
            continue
        if in_table and not line.startswith("|"):
            break
        if not in_table or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        row, workload, server, figure = cells[:4]
        cpu = cells[5] if len(cells) > 5 else ""
        match = re.fullmatch(r"([\d,.]+)\s*(.*)", figure)
        if match is None:
            continue
        value = float(match[1].replace(",", ""))
        figures.append(Figure(row, workload, server, value, match[2], cpu))
    return figures


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def grouped(figures: list[Figure]) -> Iterator[tuple[str, list[list[Figure]]]]:
    """(row, [figures of each workload]) in the file's order."""
    rows: dict[str, dict[str, list[Figure]]] = {}
    for figure in figures:
        rows.setdefault(figure.row, {}).setdefault(figure.workload, []).append(figure)
    for row, workloads in rows.items():
        yield row, list(workloads.values())


def _color(server: str) -> str:
    if server.startswith("hijack"):
        return HIJACK_COLOR
    if server.startswith("ceiling") or server.startswith("direct"):
        return CEILING_COLOR
    return PEER_COLOR


def draw(row: str, workloads: list[list[Figure]], path: Path) -> None:
    import matplotlib

    matplotlib.use("svg")
    import matplotlib.pyplot as plt

    plt.rcParams["svg.hashsalt"] = "hijack"  # stable ids: same input, same file
    plt.rcParams["svg.fonttype"] = "none"  # text as text: small, searchable
    panels = len(workloads)
    columns = 2 if panels > 1 else 1  # side by side: a chart fits a screen
    rows = -(-panels // columns)
    height = 0.32 * max(len(w) for w in workloads) + 1.0
    fig, axes = plt.subplots(
        rows,
        columns,
        figsize=(6.0 * columns, height * rows),
        squeeze=False,
        layout="constrained",
    )
    for spare in axes.flat[panels:]:
        spare.set_visible(False)
    for axis, figures in zip(axes.flat, workloads, strict=False):
        names = [f.server for f in figures]
        values = [f.value for f in figures]
        bars = axis.barh(names, values, color=[_color(n) for n in names])
        axis.invert_yaxis()
        axis.bar_label(
            bars, labels=[f"{v:,.1f}" for v in values], padding=3, fontsize=8
        )
        axis.set_title(figures[0].workload, fontsize=9, loc="left")
        axis.set_xlabel(figures[0].unit, fontsize=8)
        axis.tick_params(labelsize=8)
        axis.margins(x=0.18)
        for side in ("top", "right"):
            axis.spines[side].set_visible(False)
    fig.suptitle(row, fontsize=11, x=0.01, ha="left")
    fig.savefig(
        path,
        format=path.suffix[1:],
        metadata={"Date": None} if path.suffix == ".svg" else None,
    )
    plt.close(fig)


def write_charts(results: Path, outdir: Path) -> list[Path]:
    """One ``bench-<row>.svg`` per row of ``results`` in ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    written = []
    for row, workloads in grouped(parse_results(results.read_text())):
        path = outdir / f"bench-{slug(row)}.svg"
        draw(row, workloads, path)
        written.append(path)
    return written


if __name__ == "__main__":
    for written in write_charts(Path(sys.argv[1]), Path(sys.argv[2])):
        print(written)
