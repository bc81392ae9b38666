"""The results index: every run under a sweep root in one CSV table."""

from __future__ import annotations

import collections
import csv
import io
from pathlib import Path
from typing import Any

from qresnet import results

COLUMNS = (
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
    "commit",
)


def bits_summary(bits: dict[str, int | None]) -> str:
    """ "4 (stem 8, head 8)": the most common width, then the exceptions."""
    label = lambda b: "float" if b is None else str(b)  # noqa: E731
    common = collections.Counter(label(b) for b in bits.values()).most_common(1)[0][0]
    rest = [f"{n} {label(b)}" for n, b in bits.items() if label(b) != common]
    return common + (f" ({', '.join(rest)})" if rest else "")


def row(result: dict[str, Any]) -> dict[str, Any]:
    """One index row from a result.json object."""
    return {
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
        "commit": result["commit"],
    }


def load_results(root: str | Path) -> list[dict[str, Any]]:
    """Every complete result.json under root (one level of run folders), by name."""
    out = []
    for path in sorted(Path(root).glob("*/result.json")):
        result = results.read_result(path.parent)
        if result is not None:
            out.append({**result, "name": path.parent.name})
    return out


def write_index(root: str | Path) -> Path:
    """Writes root/index.csv atomically; returns its path."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for result in load_results(root):
        writer.writerow(row(result))
    path = Path(root) / "index.csv"
    results.atomic_write_text(path, buf.getvalue())
    return path
