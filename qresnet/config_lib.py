"""Loading Python config files and applying `--config.key=value` overrides.

A config file defines `get_config()` returning an ml_collections.ConfigDict
(and, for sweeps, `get_sweep()`). Overrides are type-checked against the
value they replace; an unknown key is an error that names close matches.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
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
    """Imports a config file as a module."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"config file {str(path)!r} does not exist; pass e.g. --config configs/cifar10/resnet20_bf16.py"
        )
    _add_configs_root(path)
    name = "qresnet_config_" + "_".join(path.resolve().with_suffix("").parts[-3:])
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"config file {str(path)!r} has no get_config() function")
    return module


def parse_value(raw: str, current: Any, key: str) -> Any:
    """Parses an override string into the type of the value it replaces."""
    if isinstance(current, str) and not (raw[:1] in "\"'" and raw[-1:] == raw[:1] and len(raw) > 1):
        return raw
    low = raw.strip().lower()
    if low in ("true", "false") and (isinstance(current, bool) or current is None):
        return low == "true"
    if low == "none":
        return None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    return check_type(value, current, key)


def check_type(value: Any, current: Any, key: str) -> Any:
    """Checks an override's type against the current value; ints widen to float."""
    if current is None or value is None:
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
    """Loads `get_config()` from a file and applies overrides; returns a locked ConfigDict."""
    cfg = load_module(path).get_config()
    cfg.lock()
    return apply_overrides(cfg, overrides)


def to_json(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-ready dict (tuples become lists)."""
    return json.loads(json.dumps(cfg.to_dict(), default=list))
