"""The runs table: one CSV row per finished run, from its result.json.

A sweep writes its root's `index.csv` (`write_index`); `qresnet runs` gathers
the runs of any folder, at any depth, into one table that can hold many groups
(`write_runs_table`), as `docs/results/runs.csv` does for every run the
project's documents cite. Both have the columns of `COLUMNS`.
"""

from __future__ import annotations

import collections
import csv
import io
from pathlib import Path
from typing import Any

from qresnet import results

COLUMNS = (
    "group",
    "name",
    "model",
    "dataset",
    "setting",
    "width",
    "seed",
    "init_from",
    "distill_weight",
    "epochs",
    "w_bits",
    "a_bits",
    "linear",
    "quadratic",
    "memory",
    "linear_total",
    "quadratic_total",
    "memory_total",
    "top1",
    "top1_last",
    "train_top1_at_best",
    "gap",
    "images_per_s",
    "wall_s",
    "setup_s",
    "first_epoch_s",
    "background_compile_s",
    "device",
    "date",
    "commit",
    "command",
)


def bits_summary(bits: dict[str, int | None]) -> str:
    """ "4 (stem 8, head 8)": the most common width, then the exceptions."""
    label = lambda b: "float" if b is None else str(b)  # noqa: E731
    common = collections.Counter(label(b) for b in bits.values()).most_common(1)[0][0]
    rest = [f"{n} {label(b)}" for n, b in bits.items() if label(b) != common]
    return common + (f" ({', '.join(rest)})" if rest else "")


def row(result: dict[str, Any], group: str = "") -> dict[str, Any]:
    """One row from a result.json object; `group` names the sweep or set of runs it belongs to."""
    return {
        "group": group,
        "name": result.get("name", ""),
        "model": result["model"],
        "dataset": result["dataset"],
        "setting": result["setting"],
        "width": result["width"],
        "seed": result.get("seed", ""),
        "init_from": result.get("init_from", ""),  # absent in older records
        "distill_weight": result.get("distill_weight", ""),
        "epochs": result["epochs"],
        "w_bits": bits_summary(result.get("w_bits", {})) if result.get("w_bits") else "",
        "a_bits": bits_summary(result.get("a_bits", {})) if result.get("a_bits") else "",
        **{k: result["cost"]["ratio"][k] for k in ("linear", "quadratic", "memory")},
        **{f"{k}_total": result["cost"]["total"][k] for k in ("linear", "quadratic", "memory")},
        "top1": result["top1"],
        "top1_last": result["top1_last"],
        "train_top1_at_best": result["train_top1_at_best"],
        "gap": result["train_top1_at_best"] - result["top1"],
        "images_per_s": result["images_per_s"],
        "wall_s": result["wall_s"],
        "setup_s": result.get("setup_s", ""),  # absent in older records
        "first_epoch_s": result.get("first_epoch_s", ""),
        # Later phases' programs compiled beside training (absent in older records).
        "background_compile_s": sum(result["compile_s"].values()) if "compile_s" in result else "",
        "device": result["device"],
        "date": result.get("date", ""),
        "commit": result["commit"],
        "command": result.get("command", ""),  # the command that trained it (absent in older records)
    }


def load_results(root: str | Path) -> list[dict[str, Any]]:
    """Every complete result.json under root (one level of run folders), by name."""
    out = []
    for path in sorted(Path(root).glob("*/result.json")):
        result = results.read_result(path.parent)
        if result is not None:
            out.append({**result, "name": path.parent.name})
    return out


def _compact(value):
    """Floats to 6 significant digits: the table's values are measurements, not bit patterns."""
    return float(f"{value:.6g}") if isinstance(value, float) else value


def _csv_text(rows) -> str:
    rows = [{k: _compact(v) for k, v in r.items()} for r in rows]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_index(root: str | Path) -> Path:
    """Writes root/index.csv atomically; returns its path."""
    root = Path(root)
    path = root / "index.csv"
    results.atomic_write_text(path, _csv_text(row(r, root.name) for r in load_results(root)))
    return path


class TableError(ValueError):
    """A runs table or folder that cannot be read or written; the message names it and the fix."""


def find_results(root: str | Path) -> list[tuple[str, dict[str, Any]]]:
    """(run folder relative to root, result) of every complete result.json under root, at any depth,
    in path order; a corrupt one raises RecordError naming it."""
    root = Path(root)
    out = []
    for path in sorted(root.rglob("result.json")):
        result = results.read_result(path.parent)
        if result is not None:
            rel = path.parent.relative_to(root).as_posix()
            out.append((rel if rel != "." else root.name, {**result, "name": path.parent.name}))
    return out


def write_runs_table(root: str | Path, out: str | Path, *, group: str = "") -> tuple[Path, int]:
    """Writes one row per finished run under `root` into the CSV `out`, atomically.

    Rows of `out` from other groups are kept, so one table can gather many folders; rows of the
    same group are replaced. A run's name is its folder's path under `root`.

    Args:
      root: a folder of run workdirs (each with a result.json), at any depth.
      out: the CSV to write (created, or merged into).
      group: the rows' group ("" = root's folder name).

    Returns:
      (the path written, the number of rows from root).

    Raises:
      TableError: root is not a folder or holds no finished run; `out` has other columns.
    """
    root, out = Path(root), Path(out)
    if not root.is_dir():
        raise TableError(f"--root {str(root)!r} is not a folder; give a folder of run workdirs")
    group = group or root.resolve().name
    found = find_results(root)
    if not found:
        raise TableError(f"no finished run (result.json) under {root}; train one first or check the path")
    kept = []
    if out.exists():
        old = list(csv.DictReader(io.StringIO(out.read_text())))
        if old and list(old[0]) != list(COLUMNS):
            raise TableError(f"{out} has other columns than a runs table; write to a new file")
        kept = [r for r in old if r["group"] != group]
    new = [{**row(result, group), "name": rel} for rel, result in found]
    results.atomic_write_text(out, _csv_text(kept + new))
    return out, len(new)
