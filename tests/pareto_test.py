"""Frontier on hand-made points and on the paper's 36 ImageNet points."""

from pathlib import Path

import pytest

from qresnet import pareto
from qresnet.pareto import Point

DATA = Path(__file__).parent / "data"


def _names(points):
    return [p.name for p in points]


def test_dominated_points_are_dropped():
    pts = [Point("a", "bf16", 1.0, 0.80), Point("b", "w4a4", 0.5, 0.82), Point("c", "w8a8", 2.0, 0.85)]
    assert _names(pareto.frontier(pts)) == ["b", "c"]
    assert pareto.cheapest_dominator(pts[0], pts).name == "b"
    assert pareto.cheapest_dominator(pts[2], pts) is None


def test_ties_and_duplicates():
    pts = [
        Point("same_cost_worse", "x", 1.0, 0.70),
        Point("same_cost_better", "x", 1.0, 0.75),
        Point("dup_b", "x", 2.0, 0.80),
        Point("dup_a", "x", 2.0, 0.80),
        Point("same_acc_dearer", "x", 3.0, 0.80),
    ]
    # Equal cost: the more accurate wins; exact duplicates keep the first by name;
    # equal accuracy at a higher cost is dominated.
    assert _names(pareto.frontier(pts)) == ["same_cost_better", "dup_a"]
    assert not pareto.dominates(pts[2], pts[3]) and not pareto.dominates(pts[3], pts[2])
    assert pareto.dominates(pts[3], pts[4])


def test_paper_imagenet_frontier_matches_section_5_3():
    pts = pareto.read_points_csv(DATA / "paper_imagenet_points.csv")
    assert len(pts) == 36
    expected = [
        "w4a4_fm0.5",
        "w4a4_ends8_fm0.5",
        "w4a4_fm0.62",
        "w4a4_ends8_fm0.62",
        "w4a4_fm0.75",
        "w4a4_ends8_fm0.75",
        "w4a4_ends8_fm0.87",
        "w4a4_ends8_fm1.0",
        "w8a8_fm0.87",
        "w4a4_fm1.25",
        "w4a4_ends8_fm1.25",
        "w4a4_ends8_fm1.5",
        "w4a4_ends8_fm1.75",
        "w4a4_ends8_fm2.0",
        "w8a8_fm1.75",
        "w8a8_fm2.0",
    ]
    front = pareto.frontier(pts)
    assert _names(front) == expected
    assert all(pareto.cheapest_dominator(p, pts) for p in pts if pareto.is_float(p))
    assert pareto.cheapest_dominator(next(p for p in pts if p.name == "bf16_fm1.0"), pts).name == "w4a4_ends8_fm1.0"
    assert sum(pareto.bit_class(p.setting) == "4-bit" for p in front) == 13


def test_report_files(tmp_path):
    front = pareto.write_report(
        root=None, points=str(DATA / "paper_imagenet_points.csv"), cost_key="linear", out=str(tmp_path)
    )
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["frontier.csv", "gap.png", "gap.svg", "pareto_linear.png", "pareto_linear.svg", "report.md"]
    report = (tmp_path / "report.md").read_text()
    assert "Float points dominated: 9 of 9" in report and "4-bit 13/16" in report
    assert "by a quantized point: 9 of 9" in report
    lines = (tmp_path / "frontier.csv").read_text().splitlines()
    assert lines[0] == "name,setting,cost,accuracy" and len(lines) == 1 + len(front)


@pytest.mark.parametrize(
    "text,message",
    [
        ("name,setting,cost\na,bf16,1\n", r"missing column\(s\) \['accuracy'\]"),
        ("name,setting,cost,accuracy\na,bf16,1,high\n", "line 2: accuracy 'high' is not a number"),
        ("name,setting,cost,accuracy\na,bf16,nan,0.5\n", "line 2: cost 'nan' is not finite"),
        ("name,setting,cost,accuracy\n", "missing column"),
    ],
)
def test_bad_points_csv(tmp_path, text, message):
    path = tmp_path / "p.csv"
    path.write_text(text)
    with pytest.raises(pareto.PointsError, match=message):
        pareto.read_points_csv(path)
    assert not (tmp_path / "out").exists()


def test_repeated_runs_are_summarised_per_setting_and_width():
    pts = [
        pareto.Point("f0", "bf16", 1.0, 0.880, width=1.0),
        pareto.Point("f1", "bf16", 1.0, 0.884, width=1.0),
        pareto.Point("q0", "w8a8", 0.5, 0.881, width=1.0),
        pareto.Point("q1", "w8a8", 0.5, 0.885, width=1.0),
        pareto.Point("single", "w4a4", 0.25, 0.87, width=2.0),
    ]
    lines = pareto.seed_table(pts)
    assert "| bf16 | 1 | 2 | 0.8820 | 0.0028 | 0.8800 | 0.8840 |  |" in lines
    assert "| w8a8 | 1 | 2 | 0.8830 | 0.0028 | 0.8810 | 0.8850 | +0.0010 |" in lines
    assert "Repeated runs" in pareto.report_markdown(pts, "linear")
    # f1 beats every w8a8 run, but the w8a8 mean (0.882 at cost 0.5) dominates the bf16 mean
    # (0.882 at 1); f0 is dominated by its own seed f1 too, which is not the paper's question.
    pts = pts[:3] + [pareto.Point("q1", "w8a8", 0.5, 0.883, width=1.0)]
    report = pareto.report_markdown(pts, "linear")
    assert "Float points dominated: 1 of 2**; **by a quantized point: 1 of 2**" in report
    assert "| f0 | 1.0000 | 0.8800 | q1 | 0.5000 | 0.8830 | q1 | 0.5000 | 0.8830 |" in report
    assert "| f1 | 1.0000 | 0.8840 | none | |  | none | |  |" in report
    assert "float means dominated by a quantized mean: bf16_width1 by w8a8_width1." in report
    assert pareto.seed_table(pts[:1] + pts[2:3]) == []  # no repeated (setting, width): no table


@pytest.fixture
def write_run(result_record):
    """Writes root/name/result.json for a run of the given setting, cost (every kind) and accuracies."""
    from qresnet import results

    def write(root, name, setting, cost, top1, train):
        costs = dict.fromkeys(("linear", "quadratic", "memory"), cost)
        results.atomic_write_json(
            root / name / "result.json",
            result_record(name, setting, top1, train, cost={"total": costs, "ratio": costs}),
        )

    return write


def test_replicate_roots_give_each_runs_mean(tmp_path, write_run):
    """Two sweeps of the same runs: each point is the run's mean; a float point that one replicate
    calls undominated is dominated on the means."""
    a, b = tmp_path / "a", tmp_path / "b"
    for root, f, q in ((a, 0.880, 0.875), (b, 0.870, 0.885)):
        write_run(root, "bf16", "bf16", 1.0, f, 0.99)
        write_run(root, "w4", "w4a4", 0.25, q, 0.95)
    front = pareto.write_report(root=[str(a), str(b)], points=None, cost_key="linear", out=str(tmp_path / "out"))
    assert _names(front) == ["w4"]  # means: bf16 0.875 at 1.0, w4 0.880 at 0.25
    points = (tmp_path / "out" / "points.csv").read_text().splitlines()
    assert points[0] == "name,setting,cost,accuracy,train_accuracy,replicates"
    assert [r.split(",")[0] for r in points[1:]] == ["bf16", "w4"] and points[1].endswith(",2")
    assert float(points[1].split(",")[3]) == pytest.approx(0.875) and float(points[2].split(",")[4]) == pytest.approx(
        0.95
    )
    report = (tmp_path / "out" / "report.md").read_text()
    assert "each point is a run's mean over 2 sweep roots" in report
    assert "spans 0.0100" in report and "at most 0.0100" in report
    assert (a / "index.csv").exists() and (b / "index.csv").exists()
    # A single root is read as before: no points.csv, no replicates section.
    pareto.write_report(root=str(a), points=None, cost_key="linear", out=str(tmp_path / "one"))
    assert not (tmp_path / "one" / "points.csv").exists()
    assert "Replicates" not in (tmp_path / "one" / "report.md").read_text()


def test_a_root_that_cannot_take_its_index_still_gets_the_report(tmp_path, write_run, monkeypatch, capsys):
    write_run(tmp_path / "a", "w4", "w4a4", 0.25, 0.88, 0.95)

    def read_only(root):
        raise PermissionError(13, "Permission denied", str(root))

    monkeypatch.setattr(pareto.index, "write_index", read_only)
    front = pareto.write_report(root=str(tmp_path / "a"), points=None, cost_key="linear", out=str(tmp_path / "out"))
    assert _names(front) == ["w4"] and (tmp_path / "out" / "report.md").exists()
    assert "index.csv not refreshed" in capsys.readouterr().err


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda write, b: write(b, "w8", "w8a8", 0.5, 0.88, 0.97), r"has \['w8'\] besides"),
        (lambda write, b: (b / "w4" / "result.json").unlink(), r"lacks \['w4'\]"),
        (lambda write, b: write(b, "w4", "w4a4", 0.5, 0.88, 0.95), "run 'w4' costs 0.5 in .* but 0.25"),
    ],
)
def test_replicate_roots_must_be_the_same_sweep(tmp_path, write_run, change, message):
    a, b = tmp_path / "a", tmp_path / "b"
    for root in (a, b):
        write_run(root, "bf16", "bf16", 1.0, 0.88, 0.99)
        write_run(root, "w4", "w4a4", 0.25, 0.87, 0.95)
    change(write_run, b)
    with pytest.raises(pareto.PointsError, match=message):
        pareto.write_report(root=[str(a), str(b)], points=None, cost_key="linear", out=str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()  # nothing written for a bad set of roots


def test_mixed_allocations_are_one_series_with_mac_weighted_bits_on_every_axis(tmp_path, result_record):
    """Searched and random allocations are series of their own (whatever the budget), in the 'mixed'
    bit class; the report gives each frontier point's MAC-weighted bits and every cost axis's frontier,
    and draws each axis; replicates fine-tuned from different float runs are still replicates."""
    from qresnet import results

    def write(root, name, setting, costs, top1, bits, init_from):
        cost = {"total": costs, "ratio": costs, "avg_bits": {"w": bits, "a": bits}}
        record = result_record(name, setting, top1, 0.95, cost=cost, init_from=init_from)
        results.atomic_write_json(root / name / "result.json", record)

    roots = [tmp_path / "s0", tmp_path / "s1"]
    for seed, root in enumerate(roots):
        src = f"/floats/seed{seed}"
        write(root, "bf16", "bf16", {"linear": 1.0, "quadratic": 1.0, "memory": 1.0}, 0.88, 16.0, src)
        write(root, "w4", "w4a4_ends8", {"linear": 0.25, "quadratic": 0.06, "memory": 0.25}, 0.875, 4.2, src)
        write(root, "w2", "w2a2_ends8", {"linear": 0.25, "quadratic": 0.02, "memory": 0.13}, 0.85, 2.3, src)
        # Cheaper than w4 on the quadratic axis and more accurate than w2; costlier on memory than w2.
        mixed = {"linear": 0.25, "quadratic": 0.04, "memory": 0.2}
        write(root, "sq", "searched_quadratic_w3a3_ends8", mixed, 0.87, 3.1, src)
        write(root, "r0", "random0_quadratic_w3a3_ends8", mixed, 0.86, 3.0, src)
    front = pareto.write_report(
        root=[str(r) for r in roots], points=None, cost_key="quadratic", out=str(tmp_path / "o"), all_axes=True
    )
    assert _names(front) == ["w2", "sq", "w4", "bf16"]
    assert pareto.series("searched_quadratic_0.05") == "searched (quadratic)"
    assert pareto.series("random2_memory_w3a3_ends8") == "random (memory)" and pareto.series("w4a4") == "w4a4"
    assert pareto.bit_class("random0_quadratic_0.05") == "mixed"
    report = (tmp_path / "o" / "report.md").read_text()
    assert "| sq | searched_quadratic_w3a3_ends8 | 0.0400 | 0.8700 | 3.10 | 3.10 |" in report
    assert "mixed 1/4 (25%)" in report and "weights 6.40, inputs 6.40" in report  # (2.3 + 3.1 + 4.2 + 16) / 4
    assert "**linear**" in report and "**memory**" in report and "**quadratic**" in report
    for axis in ("linear", "quadratic", "memory"):
        assert (tmp_path / "o" / f"pareto_{axis}.png").exists()
    assert "| sq | 0.0400 | 0.8700 | w4 | 0.0600 | 0.8750 | -0.0050 | 1 | 0.8600 | 0.8600 |" in report
    assert "at least 0.3 points at 0 of 1 budgets**; it beats every random draw at 1 of 1" in report
