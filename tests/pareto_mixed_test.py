"""The searched-against-uniform-and-random comparison of the Pareto report."""

import pytest

from qresnet import pareto_mixed
from qresnet.points import Point


def _p(name, setting, cost, acc, width=1.0):
    return Point(name, setting, cost, acc, width=width)


POINTS = [
    _p("bf16", "bf16", 1.0, 0.90),
    _p("w4", "w4a4_ends8", 0.06, 0.885),
    _p("w3", "w3a3_ends8", 0.035, 0.880),
    _p("w2", "w2a2_ends8", 0.02, 0.860),
    # Spends its whole w3 budget: compared with w3 (equal cost), not with the cheaper w2.
    _p("s3", "searched_quadratic_w3a3_ends8", 0.035, 0.884),
    # Spends less than the w4 budget: the reference is w4, the cheapest uniform point costing as much or more.
    _p("s4", "searched_quadratic_w4a4_ends8", 0.055, 0.886),
    _p("r0", "random0_quadratic_w3a3_ends8", 0.035, 0.870),
    _p("r1", "random1_quadratic_w3a3_ends8", 0.034, 0.876),
    _p("r_other_width", "random2_quadratic_w3a3_ends8", 0.02, 0.99, width=0.5),
    _p("m3", "searched_memory_w3a3_ends8", 0.05, 0.95),  # searched on another axis: left out
]


def test_each_searched_point_meets_the_uniform_point_it_costs_no_more_than():
    rows = {r["point"].name: r for r in pareto_mixed.compare(POINTS, "quadratic")}
    assert set(rows) == {"s3", "s4"}
    assert rows["s3"]["uniform"].name == "w3" and rows["s3"]["margin"] == pytest.approx(0.004)
    assert rows["s4"]["uniform"].name == "w4" and rows["s4"]["margin"] == pytest.approx(0.001)
    assert sorted(rows["s3"]["randoms"]) == [0.870, 0.876]  # same budget and width only
    assert rows["s4"]["randoms"] == []


def test_the_summary_counts_wins_of_at_least_the_margin():
    text = "\n".join(pareto_mixed.lines(POINTS, "quadratic"))
    assert "at least 0.3 points at 1 of 2 budgets**; it beats every random draw at 1 of 1" in text
    assert "| s3 | 0.0350 | 0.8840 | w3 | 0.0350 | 0.8800 | +0.0040 | 2 | 0.8730 | 0.8760 |" in text
    assert pareto_mixed.lines(POINTS, "linear") == []  # nothing searched on that axis
