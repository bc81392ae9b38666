import json

import pytest

from qresnet import run_spec


def _run(root, name, width, seed, bits=None):
    d = root / name
    d.mkdir(parents=True)
    r = {"model": "resnet20", "dataset": "cifar10_jpeg", "width": width, "seed": seed, "w_bits": {"stem": bits}}
    (d / "result.json").write_text(json.dumps({**r, "a_bits": {"stem": bits}}))
    return str(d)


def test_init_from_a_root_picks_the_float_run_of_this_width_and_seed(tmp_path):
    """A sweep root of float runs as init_from: the finished float run of the same model, width,
    dataset and (of several) seed; a run's own workdir is itself; none or several is a clear error."""
    a = _run(tmp_path, "bf16_width0.5_seed0", 0.5, 0)
    b = _run(tmp_path, "bf16_width0.5_seed1", 0.5, 1)
    c = _run(tmp_path, "bf16_width1_seed0", 1.0, 0)
    _run(tmp_path, "w4a4_width1_seed1", 1.0, 1, bits=4)  # quantized: never a float source
    resolve = run_spec.resolve_init_from
    assert resolve(str(tmp_path), "resnet20", 0.5, "cifar10_jpeg", 1) == b
    assert resolve(str(tmp_path), "resnet20", 0.5, "cifar10_jpeg", 0) == a
    assert resolve(str(tmp_path), "resnet20", 1.0, "cifar10_jpeg", 1) == c  # the only float run of width 1
    (tmp_path / "own").mkdir()
    (tmp_path / "own" / "config.json").write_text("{}")
    assert resolve(str(tmp_path / "own"), "resnet20", 2.0, "cifar10_jpeg", 0) == str(tmp_path / "own")
    assert resolve("", "resnet20", 1.0, "cifar10_jpeg", 0) == ""
    with pytest.raises(run_spec.TrainError, match="holds no finished run"):
        resolve(str(tmp_path), "resnet20", 2.0, "cifar10_jpeg", 0)
    _run(tmp_path, "bf16_width0.5_seed0_again", 0.5, 0)
    both = r"holds 2 \(bf16_width0.5_seed0, bf16_width0.5_seed0_again\) finished"
    with pytest.raises(run_spec.TrainError, match=both):
        resolve(str(tmp_path), "resnet20", 0.5, "cifar10_jpeg", 0)


def test_init_from_a_root_of_quantized_runs_picks_this_seeds_run(tmp_path):
    """A progressive fine-tune's next stage: a root holding only quantized runs gives the one of this
    seed; two of one seed is a clear error."""
    a = _run(tmp_path, "w3a3_width1_seed0", 1.0, 0, bits=3)
    b = _run(tmp_path, "w3a3_width1_seed1", 1.0, 1, bits=3)
    resolve = run_spec.resolve_init_from
    assert resolve(str(tmp_path), "resnet20", 1.0, "cifar10_jpeg", 0) == a
    assert resolve(str(tmp_path), "resnet20", 1.0, "cifar10_jpeg", 1) == b
    _run(tmp_path, "w3a3_other_width1_seed1", 1.0, 1, bits=3)
    two = r"holds 2 \(w3a3_other_width1_seed1, w3a3_width1_seed1\) finished run"
    with pytest.raises(run_spec.TrainError, match=two):
        resolve(str(tmp_path), "resnet20", 1.0, "cifar10_jpeg", 1)
