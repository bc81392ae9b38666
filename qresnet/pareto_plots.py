"""The Pareto report's figures: accuracy against cost by series, and the generalization gap."""

from __future__ import annotations

import io
from pathlib import Path

from qresnet import results

# Costs spanning more than this ratio are drawn on a log axis.
LOG_SPAN = 30.0


def _axes():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 4.5))


def _save(fig, ax, out: Path, stem: str) -> None:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    for ext in ("png", "svg"):
        buf = io.BytesIO()
        fig.savefig(buf, format=ext, dpi=150)
        results.atomic_write_bytes(out / f"{stem}.{ext}", buf.getvalue())
    plt.close(fig)


def plot(points, front, cost_key, out: Path) -> None:
    fig, ax = _axes()
    for name in sorted({p.series for p in points}):
        pts = sorted((p for p in points if p.series == name), key=lambda p: p.cost)
        style = "x" if pts[0].series != pts[0].setting else "o-"  # mixed points are budgets, not a width curve
        ax.plot([p.cost for p in pts], [100 * p.accuracy for p in pts], style, ms=4, label=name)
    xs, ys = [p.cost for p in front], [100 * p.accuracy for p in front]
    ax.plot(xs, ys, "k--", lw=1, drawstyle="steps-post", label="Pareto frontier")
    ax.scatter(xs, ys, s=80, facecolors="none", edgecolors="k", zorder=3)
    costs = [p.cost for p in points]
    # Over more than a decade and a half (sub-4-bit points on the quadratic axis), a linear axis would
    # squeeze every quantized point against the left edge.
    log = min(costs) > 0 and max(costs) / min(costs) > LOG_SPAN
    if log:
        ax.set_xscale("log")
    ax.set_xlabel(f"{cost_key} cost (ratio to the bf16 reference model{', log scale' if log else ''})")
    ax.set_ylabel("top-1 accuracy (%)")
    _save(fig, ax, out, f"pareto_{cost_key}")


def plot_gap(points, out: Path) -> None:
    pts = [p for p in points if p.gap is not None]
    if not pts:
        return
    by_width = all(p.width is not None for p in pts)
    x = (lambda p: p.width) if by_width else (lambda p: p.cost)
    fig, ax = _axes()
    for setting in sorted({p.setting for p in pts}):
        sp = sorted((p for p in pts if p.setting == setting), key=x)
        ax.plot([x(p) for p in sp], [100 * p.gap for p in sp], "o-", ms=4, label=setting)
    ax.set_xlabel("width multiplier" if by_width else "cost")
    ax.set_ylabel("train top-1 - eval top-1 (points)")
    ax.axhline(0, color="k", lw=0.5)
    _save(fig, ax, out, "gap")
