"""Tables, CSV and plots of evaluation rows (``longctx eval``); matplotlib is optional (plots are skipped)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Optional, Sequence


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}" if abs(v) < 1e5 else f"{v:,.0f}"
    if isinstance(v, dict):
        return " ".join(f"{k}:{_fmt(x)}" for k, x in v.items())
    return str(v)


def columns(rows: Sequence[dict]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols and k != "error":
                cols.append(k)
    if any("error" in r for r in rows):
        cols.append("error")
    return cols


def format_table(rows: Sequence[dict], cols: Optional[Sequence[str]] = None) -> str:
    """A plain-text table (right-aligned numbers); a row's ``error`` explains a length it could not run."""
    if not rows:
        return "(no rows)"
    cols = list(cols or columns(rows))
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict]) -> None:
    cols = columns(rows)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([json.dumps(r.get(c)) if isinstance(r.get(c), dict) else r.get(c) for c in cols])


def can_plot() -> bool:
    """Whether matplotlib is importable (plots are skipped without it)."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def plot(path: Path, series: dict[str, list[tuple[float, Optional[float]]]], xlabel: str, ylabel: str, title: str,
         *, logx: bool = True, logy: bool = False) -> bool:
    """Write a PNG line plot when matplotlib is importable; return whether one was written."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    drawn = False
    for label, pts in series.items():
        pts = [p for p in pts if p[1] is not None]
        if pts:
            ax.plot(*zip(*pts), marker="o", label=label)
            drawn = True
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    if logx:
        ax.set_xscale("log", base=2)
    if logy:
        ax.set_yscale("log")
    if drawn:
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
