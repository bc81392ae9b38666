"""The results index: one row per finished run, from result.json records old and new."""

import csv

import pytest

from qresnet import index, results


def test_bits_summary_names_the_common_width_then_the_exceptions():
    assert index.bits_summary({"stem": 8, "a": 4, "b": 4, "c": 4, "head": 8}) == "4 (stem 8, head 8)"
    assert index.bits_summary({"stem": None, "a": None}) == "float"
    assert index.bits_summary({"stem": None, "a": 4, "b": 4}) == "4 (stem float)"


def test_row_flattens_costs_and_computes_the_gap(result_record):
    fields = {"setup_s": 3.0, "compile_s": {"quantized": 2.5}, "init_from": "R/f", "distill_weight": 1.0}
    r = index.row(result_record("w4_new", "w4a4_ends8", 0.88, 0.95, **fields))
    assert list(r) == list(index.COLUMNS)
    assert r["init_from"] == "R/f" and r["distill_weight"] == 1.0
    assert r["gap"] == pytest.approx(0.07) and r["linear"] == 0.25 and r["quadratic_total"] == 100
    assert r["w_bits"] == "4 (stem 8, head 8)" and r["background_compile_s"] == 2.5
    old = index.row(result_record("w4_old", "w4a4_ends8", 0.88, 0.95))  # a record from before these fields
    assert old["setup_s"] == old["first_epoch_s"] == old["background_compile_s"] == old["init_from"] == ""


def test_write_index_lists_finished_runs_only_and_names_a_corrupt_record(tmp_path, result_record):
    results.atomic_write_json(tmp_path / "b" / "result.json", result_record("x", "bf16", 0.9, 0.99))
    results.atomic_write_json(tmp_path / "a" / "result.json", result_record("y", "w8a8", 0.89, 0.98))
    (tmp_path / "running").mkdir()  # no result.json yet: not in the index
    rows = list(csv.DictReader(index.write_index(tmp_path).open()))
    assert [r["name"] for r in rows] == ["a", "b"]  # the folder's name, in order
    assert [r["setting"] for r in rows] == ["w8a8", "bf16"]
    broken = result_record("z", "w4a4", 0.5, 0.6)
    del broken["top1"]
    results.atomic_write_json(tmp_path / "c" / "result.json", broken)
    with pytest.raises(results.RecordError, match="c/result.json lacks"):
        index.write_index(tmp_path)
    assert len(list(csv.DictReader((tmp_path / "index.csv").open()))) == 2  # the old index is kept


def test_runs_table_gathers_nested_runs_and_merges_groups(tmp_path, result_record):
    sweep = tmp_path / "sweep"
    results.atomic_write_json(sweep / "runs" / "a" / "result.json", result_record("a", "bf16", 0.9, 0.99))
    results.atomic_write_json(sweep / "extra" / "b" / "result.json", result_record("b", "w8a8", 0.89, 0.98))
    out = tmp_path / "runs.csv"
    assert index.write_runs_table(sweep, out) == (out, 2)
    rows = list(csv.DictReader(out.open()))
    assert [(r["group"], r["name"]) for r in rows] == [("sweep", "extra/b"), ("sweep", "runs/a")]
    assert list(rows[0]) == list(index.COLUMNS)
    other = tmp_path / "other"
    results.atomic_write_json(other / "c" / "result.json", result_record("c", "w4a4", 0.88, 0.97))
    index.write_runs_table(other, out, group="seeds")
    index.write_runs_table(sweep, out)  # the same group again: replaced, not duplicated
    groups = [r["group"] for r in csv.DictReader(out.open())]
    assert sorted(groups) == ["seeds", "sweep", "sweep"]


def test_runs_table_errors_leave_the_table_alone(tmp_path, result_record):
    out = tmp_path / "runs.csv"
    results.atomic_write_json(tmp_path / "r" / "x" / "result.json", result_record("x", "bf16", 0.9, 0.99))
    index.write_runs_table(tmp_path / "r", out)
    before = out.read_text()
    with pytest.raises(index.TableError, match="is not a folder"):
        index.write_runs_table(tmp_path / "missing", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(index.TableError, match="no finished run"):
        index.write_runs_table(tmp_path / "empty", out)
    foreign = tmp_path / "foreign.csv"
    foreign.write_text("a,b\n1,2\n")
    with pytest.raises(index.TableError, match="other columns"):
        index.write_runs_table(tmp_path / "r", foreign)
    assert out.read_text() == before and foreign.read_text() == "a,b\n1,2\n"
