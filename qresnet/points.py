"""Points on a cost/accuracy plane and their Pareto frontier: the primitives of `qresnet.pareto`.

A point dominates another when it costs no more and is at least as accurate, and is strictly
better in one of the two. The frontier is every point no other point dominates; exact duplicates
(same cost and accuracy) keep the first by name.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence


@dataclasses.dataclass(frozen=True)
class Point:
    """One run on the plane: its cost (a ratio on one cost axis) and eval top-1, with what the report
    shows beside them (train top-1, width, average bits)."""

    name: str
    setting: str
    cost: float
    accuracy: float
    train_accuracy: float | None = None
    width: float | None = None
    # MAC-weighted average weight and input bits (`cost.mac_weighted_bits`); None in older records.
    w_bits: float | None = None
    a_bits: float | None = None

    @property
    def series(self) -> str:
        return series(self.setting)

    @property
    def gap(self) -> float | None:
        return None if self.train_accuracy is None else self.train_accuracy - self.accuracy


def dominates(a: Point, b: Point) -> bool:
    """a costs no more, is no less accurate, and is strictly better in one."""
    return a.cost <= b.cost and a.accuracy >= b.accuracy and (a.cost < b.cost or a.accuracy > b.accuracy)


def frontier(points: Sequence[Point]) -> list[Point]:
    """Non-dominated points in order of cost (duplicates keep the first by name).

    Args:
      points: any points.

    Returns:
      The Pareto frontier (minimise cost, maximise accuracy), cheapest first.
    """
    ordered = sorted(points, key=lambda p: (p.cost, -p.accuracy, p.name))
    out, best = [], -math.inf
    for p in ordered:
        if p.accuracy > best:
            out.append(p)
            best = p.accuracy
    return out


def cheapest_dominator(point: Point, points: Sequence[Point]) -> Point | None:
    """The lowest-cost point that dominates `point` (ties: most accurate, then name)."""
    doms = [q for q in points if dominates(q, point)]
    return min(doms, key=lambda q: (q.cost, -q.accuracy, q.name)) if doms else None


# Settings `qresnet search` writes: per-layer allocations searched, or random, on one cost axis.
MIXED = re.compile(r"(searched|random)\d*_(linear|quadratic|memory)_")


def series(setting: str) -> str:
    """The curve a setting belongs to: itself, or "searched (axis)" / "random (axis)" for the per-layer
    allocations of `qresnet search`, whatever their budget or draw."""
    m = MIXED.match(setting)
    return f"{m[1]} ({m[2]})" if m else setting


def bit_class(setting: str) -> str:
    """ "float" for bf16/float settings, "N-bit" for wNaM settings (N = the larger), "mixed" for
    searched and random per-layer allocations, else the name."""
    if MIXED.match(setting):
        return "mixed"
    s = setting.lower()
    if s in ("bf16", "bfloat16", "float", "fp32", "float32", "fp16"):
        return "float"
    m = re.match(r"w(\d+)a(\d+)", s)
    return f"{max(int(m[1]), int(m[2]))}-bit" if m else setting


def is_float(p: Point) -> bool:
    return bit_class(p.setting) == "float"
