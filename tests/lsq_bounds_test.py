"""benchmarks.lsq_bounds: where a run's learned bounds ended, and the kernel weights beyond them."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import lsq_bounds
from configs import settings
from qresnet import checkpoints, config_lib, resnet, run_spec, train
from qresnet.quant import ops

SMOKE = Path(__file__).resolve().parents[1] / "configs/smoke.py"


@pytest.mark.parametrize(
    "kernel,bound,bits,full,beyond",
    [
        # 2 bits, one channel, bound 1: codes -1..1 (symmetric) or -2..1 (full)
        ([[-3.0], [-1.5], [0.0], [0.4], [2.5]], [1.0], 2, True, 2),
        ([[-3.0], [-1.5], [0.0], [0.4], [2.5]], [1.0], 2, False, 3),
        # 3 bits symmetric (codes -3..3), a bound per output channel: s = 3 / bound
        ([[0.5, 3.0], [-0.9, -3.0]], [1.0, 4.0], 3, False, 0),
        ([[0.5, 3.0], [-0.9, -3.0]], [0.4, 4.0], 3, False, 2),
    ],
)
def test_beyond_share_counts_the_weights_outside_the_grid(kernel, bound, bits, full, beyond):
    assert lsq_bounds.beyond_share(np.array(kernel), np.array(bound), bits, full) == (beyond, np.size(kernel))


def test_a_pass_run_reports_its_bounds_and_the_weights_a_clipped_gradient_would_leave(tmp_path, capsys):
    """A smoke run at 2 bits with the kernel gradient passed beyond the bound and the 2-bit kernels
    standardized: one learned kernel bound per output channel, and the weights counted beyond them are
    those the clipped gradient zeroes in the kernel as the layer quantizes it."""
    setting = "w2a2_ends8_full_pass_std"
    overrides = [f"--config.quant.rules={settings.SETTINGS[setting]!r}", f"--config.setting={setting}"]
    train.train_and_evaluate(config_lib.load_config(SMOKE, overrides), tmp_path / "run", quiet=True)
    out = tmp_path / "bounds.jsonl"
    assert lsq_bounds.main(["--workdir", str(tmp_path / "run"), "--out", str(out)]) == 0
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["setting"] == setting and {"device", "date", "commit"} <= set(row)

    config = checkpoints.run_config(tmp_path / "run")
    run = run_spec.finished_run_spec(config)
    state = checkpoints.restore_final(run, tmp_path / "run")
    params, stats = state.params, state.variables()["quant_stats"]
    paths = resnet.kernel_paths(params)
    assert row["w"]["bounds"] == sum(_at(params, p)["kernel"].shape[-1] for p in paths.values())
    assert row["a"]["bounds"] > 0 and row["w"]["at_floor"] >= 0
    zeroed = total = 0
    for name, path in paths.items():
        spec, kernel = run.specs[name], _at(params, path)["kernel"]
        kernel = ops.standardize(kernel) if spec.w_standardize else kernel
        bound = ops.learned_bound(_at(stats, path)["kernel_bound"], _at(params, path)["kernel_bound_offset"])
        # The clipped straight-through gradient of the layer's quantizer: zero exactly beyond the range.
        fake_quant = lambda k, s=spec, b=bound: ops.lsq_fake_quant(k, s.w_bits, b, True, 1.0, s.w_full_grid)  # noqa: E731
        grad = jax.grad(lambda k, f=fake_quant: jnp.sum(f(k)))
        zeroed += int(jnp.sum(grad(kernel) == 0))
        total += kernel.size
    assert 0 < row["w"]["beyond_share"] < 0.5  # at 2 bits, LSQ's start leaves the tails beyond the bound
    assert row["w"]["beyond_share"] == pytest.approx(zeroed / total)


def _at(tree, path):
    for key in path:
        tree = tree[key]
    return tree
