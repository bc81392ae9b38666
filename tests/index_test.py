"""The results index: one row per finished run, from result.json records old and new."""

import csv

import pytest

from qresnet import index, results


def _result(name, setting, top1, train, **extra):
    """A result.json object as `qresnet train` writes it (the fields the index reads)."""
    return {
        "name": name,
        "model": "resnet20",
        "dataset": "cifar10_jpeg",
        "setting": setting,
        "width": 1.0,
        "epochs": 60,
        "top1": top1,
        "top1_last": top1 - 0.001,
        "train_top1_at_best": train,
        "cost": {
            "total": {"linear": 10, "quadratic": 100, "memory": 5},
            "ratio": {"linear": 0.25, "quadratic": 0.06, "memory": 0.27},
        },
        "w_bits": {"stem": 8, "stage1/block0/conv1": 4, "stage1/block0/conv2": 4, "stage1/block1/conv1": 4, "head": 8},
        "a_bits": {"stem": 8, "stage1/block0/conv1": 4, "stage1/block0/conv2": 4, "stage1/block1/conv1": 4, "head": 8},
        "images_per_s": 1000.0,
        "wall_s": 60.0,
        "device": "cpu",
        "versions": {},
        "commit": "abc",
        **extra,
    }


def test_bits_summary_names_the_common_width_then_the_exceptions():
    assert index.bits_summary({"stem": 8, "a": 4, "b": 4, "c": 4, "head": 8}) == "4 (stem 8, head 8)"
    assert index.bits_summary({"stem": None, "a": None}) == "float"
    assert index.bits_summary({"stem": None, "a": 4, "b": 4}) == "4 (stem float)"


def test_row_flattens_costs_and_computes_the_gap():
    r = index.row(_result("w4_new", "w4a4_ends8", 0.88, 0.95, setup_s=3.0, compile_s={"quantized": 2.5}))
    assert list(r) == list(index.COLUMNS)
    assert r["gap"] == pytest.approx(0.07) and r["linear"] == 0.25 and r["quadratic_total"] == 100
    assert r["w_bits"] == "4 (stem 8, head 8)" and r["background_compile_s"] == 2.5
    old = index.row(_result("w4_old", "w4a4_ends8", 0.88, 0.95))  # a record from before these fields
    assert old["setup_s"] == old["first_epoch_s"] == old["background_compile_s"] == ""


def test_write_index_lists_finished_runs_only_and_names_a_corrupt_record(tmp_path):
    results.atomic_write_json(tmp_path / "b" / "result.json", _result("x", "bf16", 0.9, 0.99))
    results.atomic_write_json(tmp_path / "a" / "result.json", _result("y", "w8a8", 0.89, 0.98))
    (tmp_path / "running").mkdir()  # no result.json yet: not in the index
    rows = list(csv.DictReader(index.write_index(tmp_path).open()))
    assert [r["name"] for r in rows] == ["a", "b"]  # the folder's name, in order
    assert [r["setting"] for r in rows] == ["w8a8", "bf16"]
    broken = _result("z", "w4a4", 0.5, 0.6)
    del broken["top1"]
    results.atomic_write_json(tmp_path / "c" / "result.json", broken)
    with pytest.raises(results.RecordError, match="c/result.json lacks"):
        index.write_index(tmp_path)
    assert len(list(csv.DictReader((tmp_path / "index.csv").open()))) == 2  # the old index is kept
