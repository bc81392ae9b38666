"""Per-layer bit allocation under a cost budget, solved exactly (`qresnet search`).

For each layer l and candidate pair c = (w_bits, a_bits) the layer has a cost (`qresnet.cost`, on
the linear, quadratic or memory axis) and a predicted damage (a sensitivity, `damage`). The
allocation that minimises the summed damage with the summed cost within a budget is a
multiple-choice knapsack: binary x[l, c], one pair per layer (sum_c x[l, c] = 1), cost <= budget,
solved as a mixed-integer program by `scipy.optimize.milp` (HiGHS), exact up to its tolerances.

The baseline that says whether the sensitivities matter (`random_damages`): the same knapsack with
random per-layer sensitivities, so a random allocation spends the budget as fully as the search does
and differs from it only in which layers get the bits.
"""

from __future__ import annotations

import itertools
import json
import pprint
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qresnet.quant.specs import QuantSpec

Pair = tuple[int, int]


class SearchError(ValueError):
    """A search that cannot be done; the message names the value and the fix."""


def check_bits(bits: Sequence[int]) -> tuple[int, ...]:
    """The candidate bit widths, sorted; SearchError unless each is an int from 1 to 8."""
    bad = [b for b in bits if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 8]
    if bad or not bits:
        raise SearchError(f"--bits {list(bits)}: give bit widths from 1 to 8, e.g. --bits 2,3,4,8")
    return tuple(sorted(set(bits)))


def pairs(bits: Sequence[int]) -> list[Pair]:
    """Every (w_bits, a_bits) of the candidate widths."""
    return list(itertools.product(check_bits(bits), repeat=2))


def allocate(
    costs: Mapping[str, Mapping[Pair, float]],
    damage: Mapping[str, Mapping[Pair, float]],
    budget: float,
):
    """The per-layer pairs of least summed damage whose summed cost is at most `budget`.

    Args:
      costs: {layer: {pair: cost}}; every layer's candidates.
      damage: {layer: {pair: predicted damage}}, the same layers and pairs.
      budget: the largest summed cost allowed.

    Returns:
      ({layer: pair}, its summed cost, its summed damage).

    Raises:
      SearchError: unknown layers or pairs in `damage`, or a budget below the cheapest allocation
        (the message names the cheapest feasible budget).
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    layers = list(costs)
    if set(damage) != set(layers) or any(set(damage[name]) != set(costs[name]) for name in layers):
        unknown = sorted(set(damage) ^ set(layers)) or [n for n in layers if set(damage[n]) != set(costs[n])]
        raise SearchError(f"costs and sensitivities do not cover the same layers and bit pairs: {unknown[:5]}")
    cheapest = sum(min(costs[name].values()) for name in layers)
    if budget < cheapest:
        raise SearchError(
            f"budget {budget:g} is below the cheapest allocation ({cheapest:g}); give a budget >= {cheapest:g}"
        )
    index = [(name, pair) for name in layers for pair in costs[name]]
    c = np.array([damage[name][pair] for name, pair in index], np.float64)
    cost_row = np.array([costs[name][pair] for name, pair in index], np.float64)
    one_each = np.zeros((len(layers), len(index)))
    for j, (name, _) in enumerate(index):
        one_each[layers.index(name), j] = 1.0
    constraints = [
        LinearConstraint(one_each, 1, 1),
        LinearConstraint(cost_row[None], -np.inf, budget),
    ]
    res = milp(c, constraints=constraints, integrality=np.ones(len(index)), bounds=Bounds(0, 1))
    if res.x is None:
        raise SearchError(f"the solver found no allocation within budget {budget:g} ({res.message})")
    chosen = {name: pair for (name, pair), x in zip(index, res.x) if x > 0.5}
    return (
        chosen,
        sum(costs[n][p] for n, p in chosen.items()),
        sum(damage[n][p] for n, p in chosen.items()),
    )


def random_damages(
    layers: Sequence[str], bits: Sequence[int], rng: np.random.Generator
) -> dict[str, dict[Pair, float]]:
    """{layer: {(w, a): r_w * 4^-w + r_a * 4^-a}} with r log-uniform over [0.01, 100] per layer and side:
    each layer's damage falls with its bits as quantization noise power does (4x a bit), at a random
    importance."""
    out = {}
    for name in layers:
        r_w, r_a = 10.0 ** rng.uniform(-2, 2, size=2)
        out[name] = {(w, a): r_w * 4.0**-w + r_a * 4.0**-a for w, a in pairs(bits)}
    return out


def parse_budgets(text: str, config, cost_key: str, settings: Mapping[str, Sequence]) -> list[tuple[str, float]]:
    """[(label, budget)] from "0.05,w3a3_ends8": numbers are cost ratios, names are that setting's cost
    (rules in `settings`) for `config`'s model on `cost_key`."""
    from qresnet import cost, run_spec

    if cost_key not in cost.COST_KEYS:
        raise SearchError(f"--cost {cost_key!r}: choose one of {', '.join(cost.COST_KEYS)}")
    out = []
    for item in (t.strip() for t in text.split(",")):
        try:
            out.append((f"{float(item):g}", float(item)))
            continue
        except ValueError:
            pass
        if item not in settings:
            raise SearchError(
                f"--budgets: {item!r} is neither a cost ratio nor a setting; give numbers (0.05) or one of "
                f"{', '.join(sorted(settings))}"
            )
        c = config.copy_and_resolve_references()
        c.quant.rules = list(settings[item])
        out.append((item, float(run_spec.config_cost(c)["ratio"][cost_key])))
    if not out or not all(0 < b < float("inf") for _, b in out):  # also NaN
        raise SearchError(f"--budgets {text!r}: give positive cost ratios or setting names, e.g. 0.05,w3a3_ends8")
    return out


def starts_at_max(quantizer: str, bits: int) -> bool:
    """Whether a bound of `bits` starts at the paper's max under a sensitivity quantizer
    (`sensitivity.QUANTIZERS`): always for "max_abs", never for "lsq", from 3 bits for "lsq_full" (where
    the paper's start trains better, docs/results.md; at 2 bits LSQ's does)."""
    return quantizer == "max_abs" or (quantizer == "lsq_full" and bits >= 3)


def rule_options(quantizer: str, layer: str, w_bits: int = 8, a_bits: int = 8) -> dict[str, Any]:
    """A layer's rule options for the quantizer a sensitivity file was computed for
    (`sensitivity.QUANTIZERS`): learned step sizes for "lsq" and "lsq_full", on an unsigned input grid
    for every layer but the stem (as configs/settings.LSQ_RELU: their inputs come out of a ReLU); with
    "lsq_full" also the full kernel grid and, per side, bounds started at the paper's from 3 bits (as
    configs/settings' w3a3_ends8_full_max and w2a2_ends8_full)."""
    if quantizer not in ("lsq", "lsq_full"):
        return {}
    out = {"w_bound": "lsq", "a_bound": "lsq", **({} if layer == "stem" else {"a_signed": False})}
    if quantizer == "lsq_full":
        out |= {"w_grid": "full"} if w_bits >= 2 else {}
        out |= {"w_lsq_start": "max"} if starts_at_max(quantizer, w_bits) else {}
        out |= {"a_lsq_start": "max"} if starts_at_max(quantizer, a_bits) else {}
    return out


def candidate_costs(config, bits: Sequence[int], cost_key: str) -> dict[str, dict[Pair, float]]:
    """{layer: {(w_bits, a_bits): cost}} of a run's model on one axis, as ratios to the config's
    bf16 reference (the numbers `qresnet cost` and `qresnet sweep --dry-run` print)."""
    from qresnet import cost, run_spec

    if cost_key not in cost.COST_KEYS:
        raise SearchError(f"--cost {cost_key!r}: choose one of {', '.join(cost.COST_KEYS)}")
    full = run_spec.config_cost(config)
    reference = full["total"][cost_key] / full["ratio"][cost_key]
    out = {}
    for layer in full["layers"]:
        out[layer["name"]] = {
            (w, a): getattr(
                cost.layer_cost(
                    layer["name"],
                    layer["macs"],
                    layer["weights"],
                    QuantSpec(w_bits=w, a_bits=a),
                ),
                cost_key,
            )
            / reference
            for w, a in pairs(bits)
        }
    return out


def damages(sens: Mapping[str, Any], bits: Sequence[int]) -> dict[str, dict[Pair, float]]:
    """{layer: {(w, a): Omega_w(w) + damage_a(a)}} from a `qresnet sensitivity` JSON object."""
    out = {}
    for name, layer in sens["layers"].items():
        w, a = (
            {int(k): v for k, v in layer["w"].items()},
            {int(k): v for k, v in layer["a"].items()},
        )
        missing = sorted(set(check_bits(bits)) - (set(w) & set(a)))
        if missing:
            raise SearchError(
                f"the sensitivity file has no {missing}-bit measurement for layer {name!r} (it has "
                f"{sorted(w)}): run qresnet sensitivity with --bits covering --bits"
            )
        out[name] = {(wb, ab): w[wb] + a[ab] for wb, ab in pairs(bits)}
    return out


def search(
    sens: Mapping[str, Any],
    config,
    cost_key: str,
    budgets: Sequence[tuple[str, float]],
    bits: Sequence[int],
    *,
    random_draws: int = 0,
    seed: int = 0,
) -> list:
    """[{name, budget, cost, damage, rules}] for each (label, budget): the allocation (`allocate`) as
    exact-name rules with the sensitivity file's quantizer (`rule_options`); with `random_draws`, that
    many allocations a budget by random sensitivities instead (`random_damages`; damage is then the
    file's predicted damage of the random allocation)."""
    if random_draws < 0:
        raise SearchError(f"--random {random_draws}: give a number of draws >= 0")
    costs = candidate_costs(config, bits, cost_key)
    dmg = damages(sens, bits)
    unknown = sorted(set(dmg) ^ set(costs))
    if unknown:
        raise SearchError(
            f"layers {unknown[:4]} are in only one of the sensitivity file and the run's model: compute the "
            "sensitivity of this run (qresnet sensitivity --workdir RUN)"
        )
    quantizer = sens.get("quantizer", "max_abs")
    rng = np.random.default_rng(seed)
    out = []
    for label, budget in budgets:
        draws = [(f"searched_{cost_key}_{label}", dmg)]
        if random_draws:
            draws = [
                (f"random{i}_{cost_key}_{label}", random_damages(list(costs), bits, rng)) for i in range(random_draws)
            ]
        for name, by in draws:
            chosen, total, _ = allocate(costs, by, budget)
            rules = [
                (re.escape(n), *chosen[n], rule_options(quantizer, n, *chosen[n]))
                if quantizer != "max_abs"
                else (re.escape(n), *chosen[n])
                for n in costs
            ]
            damage = sum(dmg[n][p] for n, p in chosen.items())
            out.append({"name": name, "budget": budget, "cost": total, "damage": damage, "rules": rules})
    return out


def write_sweep(path, config, cost_key: str, found: Sequence[Mapping[str, Any]], source: str) -> Path:
    """A sweep config (get_config, get_sweep) with one run per budget, explicit per-layer rules and
    each run's predicted cost in PREDICTED; never overwrites."""
    from qresnet import config_lib, results

    path = Path(path)
    entries = [{"setting": f["name"], "quant.rules": [tuple(r) for r in f["rules"]]} for f in found]
    predicted = {e["setting"]: {cost_key: f["cost"], "damage": f["damage"]} for e, f in zip(entries, found)}
    text = f'''"""Per-layer bit allocations searched by qresnet search (cost axis {cost_key!r}) from {source}:
one run per budget, the training recipe of the run the sensitivities were computed on.

    qresnet sweep --config {path.name} --root R
"""

import json

import ml_collections

CONFIG = json.loads({json.dumps(json.dumps(config_lib.to_json(config)))})
ENTRIES = {pprint.pformat(entries, width=110, sort_dicts=False)}
# Predicted cost of each run (ratio to the bf16 reference, qresnet cost's), and its summed sensitivity.
PREDICTED = {pprint.pformat(predicted, width=110)}


def get_config():
    return ml_collections.ConfigDict(CONFIG)


def get_sweep():
    return [dict(e) for e in ENTRIES]
'''
    try:
        results.atomic_write_bytes(path, text.encode(), overwrite=False)
    except FileExistsError:
        raise SearchError(f"--out {path} exists; qresnet never overwrites a file: choose another path") from None
    return path
