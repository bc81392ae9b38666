"""The workdir record: atomic file writes, config.json, metrics.jsonl, result.json.

Every file qresnet writes goes through `atomic_write_*`: the bytes go to a
temporary file in the same folder, are flushed and fsynced, then renamed over
the target, so a reader (or a killed run) sees the old file or the new one,
never half of one.
"""

from __future__ import annotations

import json
import math
import os
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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Writes `data` to `path` atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
        raise RecordError(f"{path} is truncated or corrupt ({e}); delete it to redo that step") from e


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
        raise RecordError(f"{path} lacks {missing}; delete it and re-run the command to redo the run")
    if not (isinstance(result["top1"], (int, float)) and math.isfinite(result["top1"])):
        raise RecordError(f"{path} has a non-numeric top1 {result['top1']!r}; delete it and re-run")
    return result
