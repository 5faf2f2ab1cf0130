"""Render the benchmark plots of the documentation site from ``benchmarks/results.json``.

    python benchmarks/plots.py          # or: nox -s plots   (needs the `plots` extra)

The numbers are those of docs/benchmarks.md's tables, copied into the JSON file; this script
does not measure anything. Each PNG records the SHA-256 of the JSON it was drawn from (a PNG
text chunk, ``Data-SHA256``), so tests/test_docs.py notices a plot older than its numbers.
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import sys
from collections import defaultdict
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
DATA = ROOT / "benchmarks" / "results.json"
OUT = ROOT / "docs" / "img"
PLOTS = ("bench-throughput.png", "bench-overhead.png")


def data_hash(path: pathlib.Path = DATA) -> str:
    """The SHA-256 (hex) that every plot drawn from ``path`` records."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def png_text(path: pathlib.Path) -> dict[str, str]:
    """The tEXt chunks of a PNG file (keyword -> text), read with the standard library."""
    blob = path.read_bytes()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    out: dict[str, str] = {}
    pos = 8
    while pos < len(blob):
        length = int.from_bytes(blob[pos:pos + 4], "big")
        kind = blob[pos + 4:pos + 8]
        if kind == b"tEXt":
            key, _, value = blob[pos + 8:pos + 8 + length].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + length
    return out


def _axes(ax: Any, title: str, xlabel: str, ylabel: str, *, log_y: bool = False) -> None:
    """Log x axis (and y with ``log_y``) with plain tick labels, labels, grid, legend."""
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1 else f"{v:g}")
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.xaxis.set_major_formatter(plain)
    ax.yaxis.set_major_formatter(plain)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)


def _throughput(plt: Any, data: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lines: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for row in data["rows"]:
        if row["processes"] == 1:
            lines[row["store"]].append((row["runs"], row["steps_per_s"]))
    for (store, points), color in zip(sorted(lines.items(), reverse=True),
                                      ("tab:blue", "tab:orange"), strict=False):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", color=color, label=f"{store}, 1 process")
        for row in data["rows"]:
            if row["store"] == store and row["processes"] > 1:
                ax.plot([row["runs"]], [row["steps_per_s"]], marker="^", markersize=9,
                        linestyle="none", color=color,
                        label=f"{store}, {row['processes']} processes")
    _axes(ax, data["title"], "concurrent runs", "durable steps per second")
    return fig


def _overhead(plt: Any, data: dict[str, Any]) -> Any:
    fig, ax = plt.subplots(figsize=(7, 4.2))
    lines: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for row in data["rows"]:
        lines[(row["path"], row["runs"])].append((row["steps_per_run"], row["overhead_us"]))
    for (path, runs), points in sorted(lines.items()):
        xs, ys = zip(*sorted(points), strict=True)
        ax.plot(xs, ys, marker="o", linestyle="-" if runs == 1 else "--",
                label=f"{path}, {runs:,} run{'s' if runs > 1 else ''} at once")
    _axes(ax, data["title"], "steps per run", "overhead per step (µs)", log_y=True)
    return fig


def main() -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(DATA.read_text(encoding="utf-8"))
    OUT.mkdir(exist_ok=True)
    meta = {"Data-SHA256": data_hash(), "Source": "benchmarks/results.json"}
    for name, draw in zip(PLOTS, (_throughput, _overhead), strict=True):
        fig = draw(plt, data[name.removeprefix("bench-").removesuffix(".png")])
        fig.tight_layout()
        fig.savefig(OUT / name, dpi=110, metadata=meta)
        plt.close(fig)
        print(f"wrote {(OUT / name).relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
