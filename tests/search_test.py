"""The bit-allocation search (scipy's milp), and sensitivity -> search -> sweep end to end, on the CPU."""

import importlib.util
import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from configs import settings
from qresnet import cli, config_lib, run_spec, search, sweep, train
from qresnet.quant import specs

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs/smoke.py"


def _instance(n_layers, bits, seed):
    rng = np.random.default_rng(seed)
    candidates = search.pairs(bits)
    costs = {f"l{i}": {p: float(rng.integers(1, 50)) * p[0] * p[1] for p in candidates} for i in range(n_layers)}
    damage = {f"l{i}": {p: float(rng.random()) / (p[0] * p[1]) for p in candidates} for i in range(n_layers)}
    return costs, damage


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_milp_allocation_equals_brute_force(seed):
    costs, damage = _instance(5, [2, 4, 8], seed)
    layers = list(costs)
    cheapest = sum(min(c.values()) for c in costs.values())
    for budget in (cheapest, cheapest + 300, cheapest + 3000, cheapest * 100):
        best = min(
            (sum(damage[n][p] for n, p in zip(layers, combo)), combo)
            for combo in itertools.product(search.pairs([2, 4, 8]), repeat=len(layers))
            if sum(costs[n][p] for n, p in zip(layers, combo)) <= budget
        )
        chosen, total, dmg = search.allocate(costs, damage, budget)
        assert total <= budget + 1e-9 and dmg == pytest.approx(best[0], abs=1e-9)
        assert set(chosen) == set(layers)


def test_infeasible_budget_names_the_cheapest_feasible_one():
    costs, damage = _instance(3, [4, 8], 0)
    cheapest = sum(min(c.values()) for c in costs.values())
    with pytest.raises(search.SearchError, match=f"give a budget >= {cheapest:g}"):
        search.allocate(costs, damage, cheapest - 1)


@pytest.mark.parametrize("bits", [[0, 4], [4, 9], [], ["4"], [True]])
def test_bits_outside_1_to_8_are_errors(bits):
    with pytest.raises(search.SearchError, match="bit widths from 1 to 8"):
        search.pairs(bits)


def test_milp_solve_for_resnet50_sized_problem_is_fast():
    import time

    costs, damage = _instance(54, [1, 2, 4, 8], 0)
    t0 = time.perf_counter()
    search.allocate(costs, damage, 3 * sum(min(c.values()) for c in costs.values()))
    assert time.perf_counter() - t0 < 1.0


@pytest.fixture(scope="module")
def float_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("search")
    rules = settings.SETTINGS["bf16"]
    cfg = config_lib.load_config(SMOKE, [f"--config.quant.rules={rules!r}", "--config.setting=bf16"])
    train.train_and_evaluate(cfg, tmp / "run", quiet=True)
    return tmp / "run"


def test_sensitivity_then_search_writes_a_sweep_that_dry_runs_with_the_predicted_costs(float_run, tmp_path, capsys):
    sens = tmp_path / "s.json"
    argv = ["sensitivity", "--workdir", str(float_run), "--bits", "2,4,8", "--batches", "2", "--batch-size", "16"]
    assert cli.main([*argv, "--probes", "2", "--measure-bits", "2", "--out", str(sens)]) == 0
    obj = json.loads(sens.read_text())
    assert obj["quantizer"] == "lsq" and set(obj["measured"]["drop"]) == set(obj["layers"])
    assert -1 <= obj["spearman"]["2"] <= 1 and 0 <= obj["measured"]["top1"] <= 1
    assert cli.main([*argv, "--probes", "2", "--out", str(sens)]) == 1  # refused up front, the file kept
    assert "never overwrites" in capsys.readouterr().err and json.loads(sens.read_text()) == obj
    layers = obj["layers"]
    assert list(layers)[0] == "stem" and list(layers)[-1] == "head"
    for layer in layers.values():  # fewer bits, more damage (weights); every value finite
        assert layer["w"]["2"] >= layer["w"]["4"] >= layer["w"]["8"] >= 0 and np.isfinite(layer["a"]["2"])
    out = tmp_path / "searched.py"
    argv = ["search", "--sensitivity", str(sens), "--cost", "quadratic", "--budgets", "0.01,0.03", "--bits", "2,4,8"]
    assert cli.main([*argv, "--out", str(out)]) == 0
    spec = importlib.util.spec_from_file_location("searched", out)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    entries = module.get_sweep()
    assert len(entries) == 2
    for entry in entries:
        cfg = config_lib.load_config(str(out), sweep.override_args(entry))
        predicted = module.PREDICTED[entry["setting"]]["quadratic"]
        assert run_spec.config_cost(cfg)["ratio"]["quadratic"] == pytest.approx(predicted, rel=1e-9)
        assert predicted <= float(entry["setting"].removeprefix("searched_quadratic_")) + 1e-12
        # The file's quantizer, on an unsigned input grid past the stem (inputs out of a ReLU).
        lsq = {"w_bound": "lsq", "a_bound": "lsq"}
        assert entry["quant.rules"][0][0] == "stem" and entry["quant.rules"][0][3] == lsq
        assert all(r[3] == {**lsq, "a_signed": False} for r in entry["quant.rules"][1:])
    capsys.readouterr()
    assert cli.main(["sweep", "--config", str(out), "--root", str(tmp_path / "r"), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    for entry in entries:
        line = next(line for line in printed.splitlines() if line.startswith(sweep.run_name(entry)))
        assert float(line.split()[2]) == pytest.approx(module.PREDICTED[entry["setting"]]["quadratic"], abs=1e-4)
    # Random baselines: 3 draws a budget, a setting's cost as the budget, each within it.
    rand = tmp_path / "random.py"
    assert cli.main([*argv[:5], "--budgets", "w4a4_ends8,0.03", "--random", "3", "--out", str(rand)]) == 0
    spec = importlib.util.spec_from_file_location("random_", rand)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    names = [e["setting"] for e in module.get_sweep()]
    assert names == [f"random{i}_quadratic_{b}" for b in ("w4a4_ends8", "0.03") for i in range(3)]
    w4 = config_lib.load_config(SMOKE, [f"--config.quant.rules={settings.SETTINGS['w4a4_ends8']!r}"])
    w4_cost = run_spec.config_cost(w4)["ratio"]["quadratic"]
    assert all(module.PREDICTED[n]["quadratic"] <= w4_cost + 1e-12 for n in names[:3])
    assert len({json.dumps(e["quant.rules"]) for e in module.get_sweep()}) > 2  # the draws differ
    assert cli.main([*argv[:5], "--budgets", "w9a9", "--out", str(tmp_path / "z.py")]) == 1
    assert "neither a cost ratio nor a setting" in capsys.readouterr().err
    assert cli.main([*argv[:5], "--budgets", "nan", "--out", str(tmp_path / "z.py")]) == 1
    assert "give positive cost ratios" in capsys.readouterr().err and not (tmp_path / "z.py").exists()
    # Bad budgets and bits: clear errors, nothing written.
    before = out.read_bytes()
    assert cli.main([*argv[:5], "--budgets", "0.00001", "--out", str(tmp_path / "x.py")]) == 1
    assert "give a budget >=" in capsys.readouterr().err and not (tmp_path / "x.py").exists()
    assert cli.main([*argv[:5], "--budgets", "0.02", "--bits", "3,4", "--out", str(tmp_path / "y.py")]) == 1
    assert "no [3]-bit measurement" in capsys.readouterr().err
    assert cli.main([*argv, "--out", str(out)]) == 1 and out.read_bytes() == before
    assert "never overwrites" in capsys.readouterr().err

    def refused(layers_, name):
        """`qresnet search` on a copy of the file with other layers: exit 1, its message, nothing written."""
        (tmp_path / f"{name}.json").write_text(json.dumps(dict(obj, layers=layers_)))
        args = ["search", "--sensitivity", str(tmp_path / f"{name}.json"), "--budgets", "0.03"]
        assert cli.main([*args, "--out", str(tmp_path / f"{name}.py")]) == 1
        assert not (tmp_path / f"{name}.py").exists()
        return capsys.readouterr().err

    # A width measured for weights but not for activations is missing too.
    lacks_a = {k: dict(v, a={b: d for b, d in v["a"].items() if b != "4"}) for k, v in layers.items()}
    assert "no [4]-bit measurement" in refused(lacks_a, "lacks_a")
    # Sensitivities of layers the model does not have (another model's file).
    other = {("renamed" if k == "stem" else k): v for k, v in layers.items()}
    assert "['renamed', 'stem'] are in only one of the sensitivity file and the run's model" in refused(other, "other")


def test_lsq_full_rules_carry_the_grid_and_each_sides_start_by_bits():
    """The searched runs of an "lsq_full" sensitivity train as the best uniform settings do at each width:
    the full kernel grid, bounds from the paper's at 3 or more bits, from LSQ's at 2."""
    opts = search.rule_options("lsq_full", "stage1/block0/conv1", 2, 4)
    assert opts == {"w_bound": "lsq", "a_bound": "lsq", "a_signed": False, "w_grid": "full", "a_lsq_start": "max"}
    assert search.rule_options("lsq_full", "stem", 8, 8) == {
        "w_bound": "lsq",
        "a_bound": "lsq",
        "w_grid": "full",
        "w_lsq_start": "max",
        "a_lsq_start": "max",
    }
    plain = {"w_bound": "lsq", "a_bound": "lsq", "a_signed": False}
    assert search.rule_options("lsq", "stage1/block0/conv1", 3, 3) == plain
    assert search.rule_options("max_abs", "stem", 4, 4) == {}
    specs.make_rule((".*", 2, 3, search.rule_options("lsq_full", "x", 2, 3)))  # a valid spec
