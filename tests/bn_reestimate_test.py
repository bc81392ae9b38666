"""benchmarks.bn_reestimate: BatchNorm statistics re-estimated with a run's final quantized weights."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import bn_reestimate
from configs import settings
from qresnet import checkpoints, config_lib, data, feeds, run_spec, steps, train

SMOKE = Path(__file__).resolve().parents[1] / "configs/smoke.py"


@pytest.fixture(scope="module")
def two_bit_run(tmp_path_factory):
    """A smoke run at 2 bits with learned bounds, without augmentation (so that a batch's statistics
    are a function of its examples alone)."""
    workdir = tmp_path_factory.mktemp("bn") / "run"
    overrides = [
        f"--config.quant.rules={settings.SETTINGS['w2a2_ends8_full']!r}",
        "--config.setting=w2a2_ends8_full",
        "--config.dataset.crop_pad=0",
        "--config.dataset.flip=False",
    ]
    train.train_and_evaluate(config_lib.load_config(SMOKE, overrides), workdir, quiet=True)
    return workdir


def _restored(workdir):
    config = checkpoints.run_config(workdir)
    run = run_spec.finished_run_spec(config)
    return run, checkpoints.restore_final(run, workdir), feeds.load_arrays(run_spec.data_spec(config))


def test_top1_as_trained_is_the_trainers_last_eval_and_the_row_names_the_run(two_bit_run, tmp_path, capsys):
    out = tmp_path / "bn.jsonl"
    assert bn_reestimate.main(["--workdir", str(two_bit_run), "--batches", "2", "--out", str(out)]) == 0
    row = json.loads(out.read_text())
    result = json.loads((two_bit_run / "result.json").read_text())
    assert row["top1"] == pytest.approx(result["top1_last"], abs=1e-9)
    assert row["gain"] == pytest.approx(row["top1_reestimated"] - row["top1"])
    assert (row["setting"], row["batches"], row["batch_size"]) == ("w2a2_ends8_full", 2, 16)
    assert {"device", "date", "commit"} <= set(row)


def test_stem_mean_is_the_training_sets_mean_of_the_stem_output_whatever_the_old_statistics(two_bit_run):
    run, state, arrays = _restored(two_bit_run)
    n = len(arrays.train_labels) // run.batch_size * run.batch_size
    stats = bn_reestimate.reestimated_stats(run, state, arrays.train_images, n // run.batch_size)
    # The stem conv's output over the whole training set in one pass, its inputs quantized as trained.
    model = steps.create_model(run)
    x = data.normalize(jnp.asarray(arrays.train_images), run.info)
    _, inter = model.apply(state.variables(), x, train=False, act_quant=True, capture_intermediates=True)
    stem = inter["intermediates"]["stem"]["__call__"][0]
    np.testing.assert_allclose(stats["stem_bn"]["mean"], jnp.mean(stem, axis=(0, 1, 2)), rtol=1e-4, atol=1e-5)
    # Old running statistics play no part.
    spoiled = state.replace(batch_stats=jax.tree.map(lambda v: v * 100 + 3, state.batch_stats))
    again = bn_reestimate.reestimated_stats(run, spoiled, arrays.train_images, n // run.batch_size)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), stats, again)


def test_too_many_batches_and_folded_bn_are_named(two_bit_run):
    run, state, arrays = _restored(two_bit_run)
    with pytest.raises(ValueError, match=r"--batches 5: need 1 to 4 batches of 16"):
        bn_reestimate.reestimated_stats(run, state, arrays.train_images, 5)
    with pytest.raises(ValueError, match="fold_bn"):
        bn_reestimate.reestimated_stats(run, state.replace(batch_stats={}), arrays.train_images, 1)
