"""How the per-layer allocations of `qresnet search` fare in a Pareto report: each searched point
against the uniform frontier at its cost, and against the random allocations of the same budget.

The uniform reference of a searched point is the cheapest point of the uniform frontier (every
non-searched, non-random point, float included) that costs at least as much: the searched point
costs no more than it, so it "beats the uniform frontier at equal or lower cost" by its margin in
top-1. The budgets the experiment searches at are the uniform settings' own costs, so that is the
uniform setting whose cost was the budget, or a cheaper one where that setting is off the frontier.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from qresnet.points import MIXED, Point, frontier

# What the docs call a clear win: 0.3 points of top-1.
MARGIN = 0.003


def _kind(p: Point) -> tuple[str, str, str] | None:
    """(searched|random, cost axis, budget label) of a searched or random setting, else None."""
    m = MIXED.match(p.setting)
    return (m[1], m[2], p.setting[m.end() :]) if m else None


def compare(points: Sequence[Point], cost_key: str) -> list[dict]:
    """For each point searched on `cost_key`: its uniform reference, margin, and the random draws of
    its budget and width.

    Args:
      points: a report's points (costs on `cost_key`).
      cost_key: the report's cost axis; points searched on another axis are left out.

    Returns:
      [{point, uniform (Point or None), margin, randoms (accuracies)}], cheapest first.
    """
    uniform = frontier([p for p in points if _kind(p) is None])
    rows = []
    for p in sorted(points, key=lambda p: (p.cost, p.name)):
        kind = _kind(p)
        if kind is None or kind[:2] != ("searched", cost_key):
            continue
        above = [u for u in uniform if u.cost >= p.cost * (1 - 1e-9)]
        ref = min(above, key=lambda u: u.cost) if above else None
        randoms = [
            q.accuracy for q in points if (k := _kind(q)) and k == ("random", cost_key, kind[2]) and q.width == p.width
        ]
        rows.append(
            {"point": p, "uniform": ref, "margin": p.accuracy - ref.accuracy if ref else None, "randoms": randoms}
        )
    return rows


def lines(points: Sequence[Point], cost_key: str) -> list[str]:
    """Markdown: the table of `compare` and how many budgets the search wins; [] with no searched points."""
    rows = compare(points, cost_key)
    if not rows:
        return []
    out = [
        "",
        f"## Searched allocations ({cost_key}) against the uniform frontier and random allocations",
        "",
        "| searched point | cost | top-1 | uniform at equal or higher cost | its cost | its top-1 | margin "
        "| random draws | their mean | their best |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p, u, rnd = r["point"], r["uniform"], r["randoms"]
        ucells = f"{u.name} | {u.cost:.4f} | {u.accuracy:.4f} | {r['margin']:+.4f}" if u else "none | | | "
        rcells = f"{len(rnd)} | {statistics.mean(rnd):.4f} | {max(rnd):.4f}" if rnd else "0 | | "
        out.append(f"| {p.name} | {p.cost:.4f} | {p.accuracy:.4f} | {ucells} | {rcells} |")
    wins = sum(r["margin"] is not None and r["margin"] >= MARGIN for r in rows)
    with_random = [r for r in rows if r["randoms"]]
    beat_all = sum(r["point"].accuracy > max(r["randoms"]) for r in with_random)
    beat_mean = sum(r["point"].accuracy > statistics.mean(r["randoms"]) for r in with_random)
    out += [
        "",
        f"**The search beats the uniform frontier by at least {100 * MARGIN:.1f} points at {wins} of {len(rows)} "
        f"budgets**"
        + (
            f"; it beats every random draw at {beat_all} of {len(with_random)} budgets and their mean at {beat_mean}."
            if with_random
            else "."
        ),
    ]
    return out
