"""The Pareto analysis: frontier, figures and report from sweep results or a CSV.

A point dominates another when it costs no more and is at least as accurate,
and is strictly better in one of the two. The frontier is every point no other
point dominates; exact duplicates (same cost and accuracy) keep the first by
name. Several roots of one sweep (replicates) give each run's mean over them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

from qresnet import index, pareto_mixed, results
from qresnet.points import (  # noqa: F401 (the public names of the Pareto analysis)
    MIXED,
    Point,
    bit_class,
    cheapest_dominator,
    dominates,
    frontier,
    is_float,
    series,
)


class PointsError(ValueError):
    """A points CSV that cannot be read; the message names the row and column."""


def read_points_csv(path: str | Path) -> list[Point]:
    """Reads name,setting,cost,accuracy[,train_accuracy] rows, checking every value."""
    path = Path(path)
    if not path.is_file():
        raise PointsError(f"points file {str(path)!r} does not exist")
    rows = list(csv.DictReader(io.StringIO(path.read_text())))
    header = set(rows[0]) if rows else set()
    missing = [c for c in ("name", "setting", "cost", "accuracy") if c not in header]
    if missing:
        raise PointsError(
            f"{path}: missing column(s) {missing}; the header must include name,setting,cost,accuracy "
            "(train_accuracy optional)"
        )
    points = []
    for i, r in enumerate(rows, start=2):
        vals = {}
        for col in ("cost", "accuracy", "train_accuracy"):
            raw = (r.get(col) or "").strip()
            if col == "train_accuracy" and raw == "":
                vals[col] = None
                continue
            try:
                vals[col] = float(raw)
            except ValueError:
                raise PointsError(f"{path} line {i}: {col} {raw!r} is not a number") from None
            if not math.isfinite(vals[col]):
                raise PointsError(f"{path} line {i}: {col} {raw!r} is not finite")
        points.append(
            _checked(
                Point(r["name"], r["setting"], vals["cost"], vals["accuracy"], vals["train_accuracy"]),
                f"{path} line {i}",
            )
        )
    if not points:
        raise PointsError(f"{path} holds no points")
    return points


def _checked(p: Point, where: str) -> Point:
    """p, if its cost is >= 0 and its accuracies are fractions in [0, 1]; else PointsError."""
    if p.cost < 0:
        raise PointsError(f"{where}: cost {p.cost:g} of {p.name!r} is negative; costs are ratios >= 0")
    for what, v in (("accuracy", p.accuracy), ("train_accuracy", p.train_accuracy)):
        if v is not None and not 0 <= v <= 1:
            raise PointsError(f"{where}: {what} {v:g} of {p.name!r} is not in [0, 1]; give fractions (0.91, not 91)")
    return p


COST_AXES = ("linear", "quadratic", "memory")
# A replicate must be the same run: the fields of result.json that say what was trained. Replicates
# may be fine-tuned from different float runs (each seed's own), but all or none fine-tuned.
REPLICATE_FIELDS = ("model", "dataset", "setting", "width", "epochs", "batch_size", "w_bits", "a_bits", "fine_tuned")


def points_from_root(root: str | Path, cost_key: str) -> list[Point]:
    """Points from every result.json under a sweep root."""
    return [_point(r, cost_key, root) for r in _root_results(root)]


def _root_results(root: str | Path) -> list[dict]:
    rs = index.load_results(root)
    if not rs:
        raise PointsError(f"no result.json under {root}; run `qresnet sweep` first or pass --points")
    return rs


def _point(r: dict, cost_key: str, root) -> Point:
    bits = r["cost"].get("avg_bits") or {}
    p = Point(
        r["name"],
        r["setting"],
        r["cost"]["ratio"][cost_key],
        r["top1"],
        r["train_top1_at_best"],
        r["width"],
        bits.get("w"),
        bits.get("a"),
    )
    return _checked(p, f"{root}/{r['name']}/result.json")


def points_from_roots(roots: Sequence[str | Path], cost_key: str) -> tuple[list[Point], dict[str, list[float]]]:
    """Points from one sweep root, or each run's mean over replicate roots of the same sweep.

    Args:
      roots: sweep roots; with several, every root must hold the same run names at the same costs.
      cost_key: "linear", "quadratic" or "memory".

    Returns:
      (points, {name: [top-1 in each root]}); a point's accuracy and train accuracy are the means
      over the roots (train accuracy None if any root lacks it).
    """
    records = [_root_results(r) for r in roots]
    per_root = [[_point(r, cost_key, root) for r in rs] for root, rs in zip(roots, records)]
    if len(per_root) == 1:
        return per_root[0], {p.name: [p.accuracy] for p in per_root[0]}
    _check_replicates(roots, records)
    first = {p.name: p for p in per_root[0]}
    for root, pts in zip(roots[1:], per_root[1:], strict=True):
        names = {p.name for p in pts}
        if names != set(first):
            lacks, extra = sorted(set(first) - names), sorted(names - set(first))
            raise PointsError(
                f"replicate root {str(root)!r} does not hold the runs of {str(roots[0])!r}"
                + (f"; it lacks {lacks}" if lacks else "")
                + (f"; it has {extra} besides" if extra else "")
                + ": pass roots of the same sweep, each finished"
            )
        for p in pts:
            if not math.isclose(p.cost, first[p.name].cost, rel_tol=1e-9):
                raise PointsError(
                    f"run {p.name!r} costs {p.cost:g} in {str(root)!r} but {first[p.name].cost:g} in "
                    f"{str(roots[0])!r}: replicate roots must be the same sweep"
                )
    by_name = [{p.name: p for p in pts} for pts in per_root]
    accs, means = {}, []
    for name, p in first.items():
        accs[name] = [b[name].accuracy for b in by_name]
        trains = [b[name].train_accuracy for b in by_name]
        train = None if None in trains else statistics.mean(trains)
        means.append(dataclasses.replace(p, accuracy=statistics.mean(accs[name]), train_accuracy=train))
    return means, accs


def _check_replicates(roots, records) -> None:
    """Raises PointsError where a run's result in one root is not the same run as in the first root
    (another run identity, or another value of a REPLICATE_FIELDS field)."""
    first = {r["name"]: r for r in records[0]}
    for root, rs in zip(roots[1:], records[1:]):
        for r in rs:
            ref = first.get(r["name"])
            if ref is None:
                continue
            fields = [f for f in REPLICATE_FIELDS if _field(r, f) != _field(ref, f)]
            if fields:
                f = fields[0]
                raise PointsError(
                    f"run {r['name']!r} is not a replicate: its {f} is {_field(r, f)!r} in {str(root)!r} but "
                    f"{_field(ref, f)!r} in {str(roots[0])!r}; pass roots of the same sweep, trained the same way"
                )
            mine, theirs = _recipe(root, r["name"]), _recipe(roots[0], r["name"])
            if mine and theirs and mine != theirs:
                raise PointsError(
                    f"run {r['name']!r} is not a replicate: its config.json in {str(root)!r} and in "
                    f"{str(roots[0])!r} differ in more than seed and init_from; pass roots of the same sweep"
                )


def _recipe(root, name: str) -> str | None:
    """What replicates share: the run's identity (`results.run_identity`) with its seed and init_from
    left out, so that replicates may differ in seed and float source; None without a config.json."""
    path = Path(root) / name / "config.json"
    if not path.exists():
        return None
    record = results.read_json(path)
    config = {k: v for k, v in record["config"].items() if k not in ("seed", "init_from")}
    return results.run_identity({"config": config, "specs": record["specs"]})


def _field(result: dict, name: str):
    return bool(result.get("init_from")) if name == "fine_tuned" else result.get(name)


def replicate_lines(accs: dict[str, list[float]]) -> list[str]:
    """Markdown lines on how much each run's top-1 varies across replicate roots; [] for one root."""
    n = max((len(v) for v in accs.values()), default=0)
    if n < 2:
        return []
    spans = sorted((max(v) - min(v), name) for name, v in accs.items())
    return [
        "",
        f"## Replicates: each point is a run's mean over {n} sweep roots",
        "",
        f"The same run's top-1 spans {statistics.median(s for s, _ in spans):.4f} across the roots (median "
        f"over the {len(spans)} runs), at most {spans[-1][0]:.4f} ({spans[-1][1]}).",
    ]


def report_markdown(
    points: Sequence[Point],
    cost_key: str,
    replicates: dict[str, list[float]] | None = None,
    by_axis: dict[str, Sequence[Point]] | None = None,
) -> str:
    """report.md: frontier table, dominance of every float point, share per bit width, gap, with
    `replicates` ({name: top-1 in each replicate root}) how much each run varied, and with `by_axis`
    ({cost axis: points}) each axis's frontier."""
    front = frontier(points)
    lines = [f"# Pareto report ({cost_key} cost)", "", f"{len(points)} points, {len(front)} on the frontier.", ""]
    floats = [p for p in points if is_float(p)]
    quantized = [p for p in points if not is_float(p)]
    dominated = {p.name: cheapest_dominator(p, points) for p in floats}
    by_quantized = {p.name: cheapest_dominator(p, quantized) for p in floats}
    if floats:
        n_dom = sum(d is not None for d in dominated.values())
        n_q = sum(d is not None for d in by_quantized.values())
        lines.append(
            f"**Float points dominated: {n_dom} of {len(floats)}**"
            + (" (every float point is dominated)" if n_dom == len(floats) else "")
            + f"; **by a quantized point: {n_q} of {len(floats)}**."
        )
    lines.append(share_line(front))
    lines += ["", "## Frontier (cheapest first)", "", "| name | setting | cost | accuracy | avg w bits | avg a bits |"]
    lines += ["|---|---|---|---|---|---|"]
    lines += [
        f"| {p.name} | {p.setting} | {p.cost:.4f} | {p.accuracy:.4f} | {_bits(p.w_bits)} | {_bits(p.a_bits)} |"
        for p in front
    ]
    if floats:
        lines += [
            "",
            "## Float points and their cheapest dominators (any point; quantized points only)",
            "",
            "| float point | cost | accuracy | cheapest dominator | its cost | its accuracy "
            "| cheapest quantized dominator | its cost | its accuracy |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for p in sorted(floats, key=lambda p: (p.cost, p.name)):
            cells = [
                f"{d.name} | {d.cost:.4f} | {d.accuracy:.4f}" if d else "none | | "
                for d in (dominated[p.name], by_quantized[p.name])
            ]
            lines.append(f"| {p.name} | {p.cost:.4f} | {p.accuracy:.4f} | {cells[0]} | {cells[1]} |")
    lines += seed_table(points)
    lines += pareto_mixed.lines(points, cost_key)
    lines += replicate_lines(replicates or {})
    lines += axes_lines(by_axis, cost_key) if by_axis else []
    gaps = [p for p in points if p.gap is not None]
    if gaps:
        lines += [
            "",
            "## Generalization gap (train top-1 - eval top-1)",
            "",
            "| name | setting | gap |",
            "|---|---|---|",
        ]
        lines += [f"| {p.name} | {p.setting} | {p.gap:+.4f} |" for p in sorted(gaps, key=lambda p: (p.setting, p.cost))]
    return "\n".join(lines) + "\n"


def _bits(v: float | None) -> str:
    return "" if v is None else f"{v:.2f}"


def share_line(front: Sequence[Point]) -> str:
    """The frontier's share by bit width (setting) and, where recorded, its MAC-weighted average bits."""
    shares: dict[str, int] = {}
    for p in front:
        shares[bit_class(p.setting)] = shares.get(bit_class(p.setting), 0) + 1
    line = "**Frontier by bit width:** " + ", ".join(
        f"{k} {v}/{len(front)} ({100 * v / len(front):.0f}%)" for k, v in sorted(shares.items(), key=lambda kv: -kv[1])
    )
    bits = [p for p in front if p.w_bits is not None]
    if bits:
        w, a = (statistics.mean(getattr(p, f) for p in bits) for f in ("w_bits", "a_bits"))
        line += f"; **MAC-weighted average bits** over its points: weights {w:.2f}, inputs {a:.2f}"
    return line + "."


def axes_lines(by_axis: dict[str, Sequence[Point]], primary: str = "") -> list[str]:
    """Markdown: for each cost axis, its frontier's size, shares and members, and for each axis but
    `primary` (the report's, whose section comes earlier) how its searched allocations fare."""
    lines = ["", "## Every cost axis", ""]
    for axis, pts in by_axis.items():
        front = frontier(pts)
        lines += [
            f"**{axis}** ([figure](pareto_{axis}.png)): {len(front)} of {len(pts)} points on the frontier. "
            + share_line(front),
            "",
            "Frontier: " + ", ".join(f"{p.name} ({p.cost:.4f}, {p.accuracy:.4f})" for p in front) + ".",
            "",
        ]
        if axis != primary:
            lines += pareto_mixed.lines(pts, axis)[1:] + [""]
    return lines


def seed_table(points: Sequence[Point]) -> list[str]:
    """Markdown lines: mean, sample std and range of accuracy per (setting, width) with several runs
    (seeds), and each mean's difference to the float mean at that width; [] if no group repeats."""
    groups: dict[tuple[str, float], list[float]] = {}
    cost: dict[tuple[str, float], float] = {}
    for p in points:
        if p.width is not None:
            groups.setdefault((p.setting, p.width), []).append(p.accuracy)
            cost.setdefault((p.setting, p.width), p.cost)
    if not any(len(v) > 1 for v in groups.values()):
        return []
    float_mean = {w: statistics.mean(v) for (s, w), v in groups.items() if bit_class(s) == "float"}
    lines = [
        "",
        "## Repeated runs (seeds): accuracy per setting and width",
        "",
        "| setting | width | runs | mean | std | min | max | mean - float mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for (setting, width), accs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        std = statistics.stdev(accs) if len(accs) > 1 else float("nan")
        mean = statistics.mean(accs)
        delta = f"{mean - float_mean[width]:+.4f}" if width in float_mean and bit_class(setting) != "float" else ""
        lines.append(
            f"| {setting} | {width:g} | {len(accs)} | {mean:.4f} | {std:.4f} | {min(accs):.4f} | {max(accs):.4f} | "
            f"{delta} |"
        )
    means = [
        Point(f"{s}_width{w:g}", s, cost[(s, w)], statistics.mean(v), width=w) for (s, w), v in sorted(groups.items())
    ]
    mean_floats = [p for p in means if is_float(p)]
    mean_quantized = [p for p in means if not is_float(p)]
    if mean_floats:
        lines += [
            "",
            "On the means: frontier "
            + ", ".join(p.name for p in frontier(means))
            + "; float means dominated by a quantized mean: "
            + "; ".join(
                f"{p.name} by {getattr(cheapest_dominator(p, mean_quantized), 'name', 'none')}" for p in mean_floats
            )
            + ".",
        ]
    return lines


def write_report(
    *, root: str | Sequence[str] | None, points: str | None, cost_key: str, out: str, all_axes: bool = False
) -> list[Point]:
    """Writes pareto_<cost>.png/.svg, gap.png/.svg, report.md and frontier.csv to `out`; with `all_axes`
    (sweep roots only: a points CSV has one cost), a figure and a report section for every cost axis.

    Args:
      root: a sweep root (reads result.json files), several replicate roots of one sweep (each
        run's mean over them; also writes points.csv, the mean points), or None.
      points: a CSV of points or None (exactly one of root and points).
      cost_key: "linear", "quadratic" or "memory" (only used with root).
      out: output folder.

    Returns:
      The frontier.
    """
    roots = [root] if isinstance(root, (str, Path)) else list(root or [])
    accs: dict[str, list[float]] = {}
    by_axis = {}
    if roots:
        pts, accs = points_from_roots(roots, cost_key)
        if all_axes:
            by_axis = {k: pts if k == cost_key else points_from_roots(roots, k)[0] for k in COST_AXES}
    else:
        pts = read_points_csv(points)
    out_dir = Path(out)
    if out_dir.exists() and not out_dir.is_dir():
        raise PointsError(f"--out {out} is a file; give a folder for the report")
    held = [n for n in ("config.json", "result.json", "metrics.jsonl") if (out_dir / n).exists()]
    if held:
        raise PointsError(f"--out {out} holds a run's records ({', '.join(held)}); write the report elsewhere")
    out_dir.mkdir(parents=True, exist_ok=True)
    front = frontier(pts)
    from qresnet import pareto_plots

    for axis, axis_points in (by_axis or {cost_key: pts}).items():
        pareto_plots.plot(axis_points, frontier(axis_points), axis, out_dir)
    pareto_plots.plot_gap(pts, out_dir)
    results.atomic_write_text(out_dir / "report.md", report_markdown(pts, cost_key, accs, by_axis))
    results.atomic_write_text(out_dir / "frontier.csv", _csv(["name", "setting", "cost", "accuracy"], front))
    if len(roots) > 1:
        cols = ["name", "setting", "cost", "accuracy", "train_accuracy", "replicates"]
        rows = [[p.name, p.setting, p.cost, p.accuracy, p.train_accuracy, len(accs[p.name])] for p in pts]
        results.atomic_write_text(out_dir / "points.csv", _csv(cols, rows))
    for r in roots:
        try:
            index.write_index(r)
        except OSError as e:  # A read-only root (e.g. someone else's results) still gets its report.
            print(f"pareto: {r}/index.csv not refreshed ({e}); the report does not need it", file=sys.stderr)
    print(f"pareto: {len(front)} of {len(pts)} points on the frontier; wrote {out_dir}/report.md")
    return front


def _csv(columns: Sequence[str], rows) -> str:
    """CSV text: a header, then each row (a list, or a Point, which gives the fields named in `columns`)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for r in rows:
        writer.writerow([getattr(r, c) for c in columns] if isinstance(r, Point) else r)
    return buf.getvalue()
