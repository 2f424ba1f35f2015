"""Top functions of a py-spy ``--format raw`` profile (collapsed stacks).

``python profile_summary.py FILE [N]`` prints the N functions with the most
self samples (the frame on top of the stack) and with the most inclusive
samples (anywhere on the stack, counted once per stack).
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path


def summarize(path: Path, top: int = 15) -> str:
    own: Counter[str] = Counter()
    total: Counter[str] = Counter()
    samples = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_short(f) for f in stack.split(";")[1:]]  # [0] is the process
        if not frames:
            continue
        samples += count
        own[frames[-1]] += count
        for frame in set(frames):
            total[frame] += count
    if not samples:
        return f"{path.name}: no samples\n"
    lines = [f"{path.name}: {samples} samples", "", "self %  function"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in own.most_common(top)]
    lines += ["", "total %  function"]
    lines += [f"{100 * n / samples:6.1f}  {f}" for f, n in total.most_common(top)]
    return "\n".join(lines) + "\n"


def _short(frame: str) -> str:
    """``func (/long/path/pkg/mod.py:123)`` -> ``func (pkg/mod.py:123)``."""
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    parts = where.split("/")
    return f"{name} ({'/'.join(parts[-2:])})" if where else name


if __name__ == "__main__":
    print(summarize(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 15))
