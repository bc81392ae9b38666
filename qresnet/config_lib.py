"""Loading Python config files and applying `--config.key=value` overrides.

A config file defines `get_config()` returning an ml_collections.ConfigDict
(and, for sweeps, `get_sweep()`). Overrides are type-checked against the
value they replace; an unknown key is an error that names close matches.
Every numeric field is then checked against one table of ranges (`RANGES`)
before anything runs, so a value that would make a run lie or crash late is
refused up front, naming the field, its range and the fix.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import importlib.util
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says the fix."""


def _add_configs_root(path: Path) -> None:
    # Config files import their base as `from configs.<family> import base`.
    for parent in path.resolve().parents:
        if parent.name == "configs" and (parent / "__init__.py").exists():
            root = str(parent.parent)
            if root not in sys.path:
                sys.path.insert(0, root)
            return


def load_module(path: str | Path) -> ModuleType:
    """Imports a config file as a module; any failure to import is a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass e.g. --config configs/cifar10/resnet20_bf16.py"
        )
    _add_configs_root(path)
    name = "qresnet_config_" + "_".join(path.resolve().with_suffix("").parts[-3:])
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"config file {str(path)!r} is not a Python file; pass a configs/*.py file")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - whatever a config file raises, the user's fix is in that file
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) and e.lineno else ""
        raise ConfigError(f"config file {str(path)!r} failed to import{where}: {type(e).__name__}: {e}") from e
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"config file {str(path)!r} has no get_config() function")
    return module


def call_config(module: ModuleType, path: str | Path, fn: str = "get_config") -> Any:
    """module.fn(), its own errors turned into a ConfigError naming the file."""
    try:
        return getattr(module, fn)()
    except Exception as e:  # noqa: BLE001 - the fix is in the config file
        raise ConfigError(f"{fn}() of config file {str(path)!r} failed: {type(e).__name__}: {e}") from e


def parse_value(raw: str, current: Any, key: str) -> Any:
    """Parses an override string into the type of the value it replaces."""
    if isinstance(current, str) and not (raw[:1] in "\"'" and raw[-1:] == raw[:1] and len(raw) > 1):
        return raw
    low = raw.strip().lower()
    if low in ("true", "false") and (isinstance(current, bool) or current is None):
        return low == "true"
    if low == "none":
        return check_type(None, current, key)
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return check_type(value, current, key)


def check_type(value: Any, current: Any, key: str) -> Any:
    """Checks an override's type against the current value; ints widen to float. None replaces
    only a None."""
    if current is None:
        return value
    if isinstance(current, bool):
        ok = isinstance(value, bool)
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(current, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(current, (list, tuple)):
        ok = isinstance(value, (list, tuple))
    elif isinstance(current, str):
        ok = isinstance(value, str)
    else:
        ok = True
    if not ok:
        raise ConfigError(
            f"--config.{key}={value!r}: expected a {type(current).__name__} like the default "
            f"{current!r}, got {type(value).__name__}"
        )
    return value


def _all_keys(cfg: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in cfg.items():
        keys.append(prefix + k)
        if isinstance(v, ml_collections.ConfigDict):
            keys += _all_keys(v, prefix + k + ".")
    return keys


def set_value(cfg: ml_collections.ConfigDict, key: str, value: Any, parse: bool = False) -> None:
    """Sets a dotted key that must already exist (type-checked)."""
    node = cfg
    parts = key.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            close = difflib.get_close_matches(key, _all_keys(cfg), n=3)
            hint = f"; did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(f"unknown config key {key!r}{hint} (see the config file for the keys)")
        if i < len(parts) - 1:
            node = node[part]
    current = node[parts[-1]]
    if isinstance(current, ml_collections.ConfigDict):
        raise ConfigError(
            f"config key {key!r} is a group; set one of its fields, e.g. {key}.{next(iter(current.keys()))}"
        )
    value = parse_value(value, current, key) if parse else check_type(value, current, key)
    with node.unlocked():
        node[parts[-1]] = value


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> ml_collections.ConfigDict:
    """Applies `--config.key=value` (or `key=value`) strings in order."""
    for item in overrides:
        text = item[len("--config.") :] if item.startswith("--config.") else item
        if "=" not in text:
            raise ConfigError(f"override {item!r} must look like --config.key=value")
        key, raw = text.split("=", 1)
        set_value(cfg, key, raw, parse=True)
    return cfg


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `get_config()` from a file, applies overrides and checks every numeric field's range
    (`check_ranges`); returns a locked ConfigDict."""
    cfg = call_config(load_module(path), path)
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ConfigError(
            f"get_config() of {str(path)!r} returned a {type(cfg).__name__}; it must return an "
            "ml_collections.ConfigDict (wrap a dict in ml_collections.ConfigDict(...))"
        )
    cfg.lock()
    return check_ranges(apply_overrides(cfg, overrides))


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric field may take: from `lo` to `hi` (None: unbounded), ends included
    unless `lo_open` / `hi_open`; `note` says what the ends mean."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False
    hi_open: bool = False
    note: str = ""

    def contains(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return not (self.hi is not None and (v > self.hi or (self.hi_open and v == self.hi)))

    def __str__(self) -> str:
        lo = "-inf" if self.lo is None else f"{self.lo:g}"
        hi = "inf" if self.hi is None else f"{self.hi:g}"
        left = "(" if self.lo_open or self.lo is None else "["
        right = ")" if self.hi_open or self.hi is None else "]"
        return f"{left}{lo}, {hi}{right}" + (f" ({self.note})" if self.note else "")


POSITIVE = Range(0, lo_open=True)
AT_LEAST_1 = Range(1)
NON_NEGATIVE = Range(0)
# Every numeric field of the configs, and the values it may take (tests/configs_test.py checks that each
# field of every config is here and that a value outside its range is refused before anything is written).
RANGES: dict[str, Range] = {
    "seed": Range(0, 2**31 - 1),
    "checkpoint_every_epochs": Range(1, note="the last epoch is always saved"),
    "eval_batch_size": AT_LEAST_1,
    "smoothing_window": Range(1, note="eval points in the reported top-1's smoothing"),
    "model.width": POSITIVE,
    "model.channel_multiple": Range(0, note="0 = no padding"),
    "model.pallas_max_channels": AT_LEAST_1,
    "model.replica_size": Range(0, note="0 = statistics over the whole batch"),
    "dataset.crop_pad": NON_NEGATIVE,
    "dataset.image_size": Range(0, note="0 = the dataset's"),
    "dataset.synthetic_train": AT_LEAST_1,
    "dataset.synthetic_test": AT_LEAST_1,
    "dataset.train_subset": Range(0, note="0 = all"),
    "dataset.test_subset": Range(0, note="0 = all"),
    "dataset.workers": Range(0, note="0 = in the training process"),
    "dataset.decode_threads": AT_LEAST_1,
    "dataset.decode_batches_per_call": AT_LEAST_1,
    "dataset.cpu_decode_share": Range(0, 1, hi_open=True, note="the rest is decoded on the GPU"),
    "quant.act_start_step": Range(-1, note="-1 = at quant.act_start_epoch or act_start_frac"),
    "quant.act_start_epoch": Range(-1, note="-1 = at quant.act_start_frac of training"),
    "quant.act_start_frac": Range(0, 1, hi_open=True, note="1 would never quantize the activations"),
    "optim.batch_size": AT_LEAST_1,
    "optim.num_epochs": AT_LEAST_1,
    "optim.grad_accum_steps": AT_LEAST_1,
    "optim.base_lr": POSITIVE,
    "optim.momentum": Range(0, 1, hi_open=True),
    "optim.weight_decay": NON_NEGATIVE,
    "optim.warmup_epochs": NON_NEGATIVE,
    "optim.cosine_alpha": Range(0, 1, note="the floor of the cosine, relative to the peak"),
    "optim.cooldown_epochs": NON_NEGATIVE,
    "distill.weight": Range(0, 1, note="0 = no distillation"),
    "distill.temperature": POSITIVE,
}


def numeric_fields(cfg: ml_collections.ConfigDict, prefix: str = "") -> dict[str, float]:
    """{dotted key: value} of every int or float field (bools are not numbers here)."""
    out = {}
    for k, v in cfg.items():
        if isinstance(v, ml_collections.ConfigDict):
            out |= numeric_fields(v, prefix + k + ".")
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[prefix + k] = v
    return out


def check_ranges(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Raises ConfigError for the first numeric field that is not finite or is outside its `RANGES`
    entry, naming the field, its range and the override that fixes it; returns cfg."""
    for key, value in numeric_fields(cfg).items():
        allowed = RANGES.get(key)
        if not math.isfinite(value):
            raise ConfigError(f"--config.{key}={value!r} is not a finite number; give a value in {allowed or 'range'}")
        if allowed is not None and not allowed.contains(value):
            raise ConfigError(f"--config.{key}={value!r} is out of range: it must be in {allowed}")
    return cfg


def to_json(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(cfg.to_dict(), default=list))
