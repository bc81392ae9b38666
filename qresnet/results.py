"""The workdir record: atomic file writes, config.json, metrics.jsonl, result.json,
the paper's reporting of a run (`report`), and provenance (commit, versions, device).

Every file qresnet writes goes through `atomic_write_*`: the bytes go to a
temporary file in the same folder, are flushed and fsynced, then renamed over
the target, so a reader (or a killed run) sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

RESULT_KEYS = (
    "model",
    "dataset",
    "setting",
    "width",
    "epochs",
    "top1",
    "top1_last",
    "train_top1_at_best",
    "cost",
    "images_per_s",
    "wall_s",
    "device",
    "versions",
    "commit",
)


class RecordError(RuntimeError):
    """A record file that is missing, truncated or corrupt."""


def atomic_write_bytes(path: str | Path, data: bytes, *, overwrite: bool = True) -> None:
    """Writes `data` to `path` atomically (temp file in the same folder, fsync, rename).

    With overwrite=False the file appears only if `path` did not exist (a hard link, which the
    file system refuses atomically), else FileExistsError: two writers never replace each other.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.ndarray, tuple)):
        return list(o.tolist() if isinstance(o, np.ndarray) else o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def to_json_text(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, default=_json_default, allow_nan=False) + "\n"


def atomic_write_json(path: str | Path, obj: Any) -> None:
    """Writes `obj` as indented JSON, atomically; NaN/inf are refused."""
    atomic_write_text(path, to_json_text(obj))


def atomic_write_npz(path: str | Path, arrays: Mapping[str, np.ndarray]) -> None:
    import io

    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(path, buf.getvalue())


def read_json(path: str | Path) -> Any:
    """Reads a JSON record; a truncated or corrupt file raises RecordError naming it."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise RecordError(
            f"{path} is truncated or corrupt ({e}); restore it from a copy, or move the run's folder aside to redo it"
        ) from e


def to_json_line(obj: Mapping[str, Any]) -> str:
    return json.dumps(obj, default=_json_default) + "\n"


def append_jsonl(path: str | Path, obj: Mapping[str, Any]) -> None:
    """Appends one JSON line (metrics are an append-only log, re-read tolerantly)."""
    with open(path, "a") as f:
        f.write(to_json_line(obj))
        f.flush()


def atomic_write_jsonl(path: str | Path, rows) -> None:
    """Rewrites a JSON-lines file with `rows`, atomically (a file of results that grows row by row)."""
    atomic_write_text(path, "".join(to_json_line(r) for r in rows))


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """Reads a JSON-lines file, skipping a final line cut short by a kill."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows


def read_result(workdir: str | Path) -> dict[str, Any] | None:
    """result.json of a run if present and complete, else None; corrupt raises RecordError."""
    path = Path(workdir) / "result.json"
    if not path.exists():
        return None
    result = read_json(path)
    missing = [k for k in RESULT_KEYS if k not in result]
    if missing:
        raise RecordError(f"{path} lacks {missing}; move it aside and re-run the command to rebuild it")
    if not (isinstance(result["top1"], (int, float)) and math.isfinite(result["top1"])):
        raise RecordError(f"{path} has a non-numeric top1 {result['top1']!r}; move it aside and re-run")
    return result


def smooth(values: list[float], window: int) -> list[float]:
    """Triangular smoothing (weights 1,2,..,k,..,2,1 over `window` points), renormalised at the ends."""
    half = window // 2
    weights = [half + 1 - abs(j) for j in range(-half, half + 1)]
    out = []
    for i in range(len(values)):
        num = den = 0.0
        for j, w in zip(range(i - half, i + half + 1), weights):
            if 0 <= j < len(values):
                num += w * values[j]
                den += w
        out.append(num / den)
    return out


def report(history: list[dict[str, Any]], act_start_step: int, window: int) -> dict[str, Any]:
    """The paper's reporting: best smoothed eval top-1 at steps >= act_start_step."""
    evals = [h for h in history if "eval_top1" in h]
    sm_eval = smooth([h["eval_top1"] for h in evals], window)
    sm_train = smooth([h["train_top1"] for h in evals], window)
    eligible = [i for i, h in enumerate(evals) if h["step"] >= act_start_step] or list(range(len(evals)))
    best = max(eligible, key=lambda i: sm_eval[i])
    return {
        "top1": sm_eval[best],
        "top1_last": evals[-1]["eval_top1"],
        "train_top1_at_best": sm_train[best],
        "best_step": evals[best]["step"],
        "best_epoch": evals[best]["epoch"],
    }


def device_description() -> str:
    """ "1x NVIDIA H200 (gpu)": the local devices a record was made on."""
    import jax

    devs = jax.local_devices()
    return f"{len(devs)}x {devs[0].device_kind} ({devs[0].platform})"


def xla_flags_field() -> dict[str, str]:
    """{"xla_flags": $XLA_FLAGS} if set (they change the programs XLA builds), else {}: for records."""
    return {"xla_flags": os.environ["XLA_FLAGS"]} if os.environ.get("XLA_FLAGS") else {}


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that decide a record's numbers."""
    import flax
    import jax
    import optax

    return {
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else "",
        "flax": flax.__version__,
        "optax": optax.__version__,
        "numpy": np.__version__,
    }


def git_commit() -> str:
    """HEAD of the checkout ("-dirty" if modified), or $QRESNET_COMMIT where there is no .git."""
    if os.environ.get("QRESNET_COMMIT"):
        return os.environ["QRESNET_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode:
        return "unknown"
    return commit.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def provenance() -> dict[str, str]:
    """{"device", "date", "commit"} for a record made now."""
    import time

    return {"device": device_description(), "date": time.strftime("%Y-%m-%d"), "commit": git_commit()}


def run_identity(record: Mapping[str, Any]) -> str:
    """A run's identity: 16 hex digits of the SHA-256 of its resolved config and per-layer specs
    (`{"config", "specs"}` as config.json holds them), canonical JSON. Two runs share it exactly
    when they train the same thing; it is recorded in config.json, result.json and exports, and
    checked wherever a result, checkpoint or run is reused."""
    import hashlib

    canonical = json.dumps(
        {"config": record["config"], "specs": record["specs"]}, sort_keys=True, default=_json_default
    )
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def recorded_identity(workdir: str | Path) -> str | None:
    """The identity of the run whose config.json is in workdir (its run_id, or computed from its
    config for records written before run_id was), or None without a config.json."""
    path = Path(workdir) / "config.json"
    if not path.exists():
        return None
    record = read_json(path)
    return record.get("run_id") or run_identity(record)


def move_aside(path: Path, why: str) -> Path:
    """Renames `path` to `<name>.<why>-<n>` (the first n free) instead of deleting it: a record
    the tool did not just write is never destroyed. Returns the new path."""
    n = 1
    while (target := path.with_name(f"{path.name}.{why}-{n}")).exists():
        n += 1
    path.rename(target)
    return target


def config_diff(a: Any, b: Any, prefix: str = "") -> list[str]:
    """The dotted keys at which two nested config dicts differ, sorted."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return sorted(k for key in set(a) | set(b) for k in config_diff(a.get(key), b.get(key), f"{prefix}{key}."))
    return [] if a == b else [prefix.rstrip(".")]
