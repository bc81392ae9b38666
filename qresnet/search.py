"""Per-layer bit allocation under a cost budget, solved exactly (`qresnet search`).

For each layer l and candidate pair c = (w_bits, a_bits) the layer has a cost (`qresnet.cost`, on
the linear, quadratic or memory axis) and a predicted damage (a sensitivity, `damage`). The
allocation that minimises the summed damage with the summed cost within a budget is a
multiple-choice knapsack: binary x[l, c], one pair per layer (sum_c x[l, c] = 1), cost <= budget,
solved as a mixed-integer program by `scipy.optimize.milp` (HiGHS), exact up to its tolerances.
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
    budgets: Sequence[float],
    bits: Sequence[int],
) -> list:
    """[{budget, cost, damage, rules}] for each budget: the allocation (`allocate`) as exact-name rules."""
    costs = candidate_costs(config, bits, cost_key)
    dmg = damages(sens, bits)
    unknown = sorted(set(dmg) ^ set(costs))
    if unknown:
        raise SearchError(
            f"layers {unknown[:4]} are in only one of the sensitivity file and the run's model: compute the "
            "sensitivity of this run (qresnet sensitivity --workdir RUN)"
        )
    out = []
    for budget in budgets:
        chosen, total, damage = allocate(costs, dmg, budget)
        rules = [(re.escape(name), *chosen[name]) for name in costs]
        out.append({"budget": budget, "cost": total, "damage": damage, "rules": rules})
    return out


def write_sweep(path, config, cost_key: str, found: Sequence[Mapping[str, Any]], source: str) -> Path:
    """A sweep config (get_config, get_sweep) with one run per budget, explicit per-layer rules and
    each run's predicted cost in PREDICTED; never overwrites."""
    from qresnet import config_lib, results

    path = Path(path)
    entries = [
        {
            "setting": f"searched_{cost_key}{f['budget']:g}",
            "quant.rules": [tuple(r) for r in f["rules"]],
        }
        for f in found
    ]
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
