"""Atomic records and tolerant readers."""

import json

import pytest

from qresnet import results


def test_atomic_write_leaves_no_temp_files(tmp_path):
    results.atomic_write_json(tmp_path / "a.json", {"x": 1})
    results.atomic_write_json(tmp_path / "a.json", {"x": 2})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 2}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_write_refuses_nan_and_keeps_the_old_file(tmp_path):
    results.atomic_write_json(tmp_path / "a.json", {"x": 1})
    with pytest.raises(ValueError):
        results.atomic_write_json(tmp_path / "a.json", {"x": float("nan")})
    assert json.loads((tmp_path / "a.json").read_text()) == {"x": 1}
    assert len(list(tmp_path.iterdir())) == 1


def test_truncated_json_is_reported(tmp_path):
    (tmp_path / "result.json").write_text('{"top1": 0.9, "mod')
    with pytest.raises(results.RecordError, match="truncated or corrupt"):
        results.read_result(tmp_path)


def test_incomplete_result_is_reported(tmp_path):
    (tmp_path / "result.json").write_text('{"top1": 0.9}')
    with pytest.raises(results.RecordError, match="lacks"):
        results.read_result(tmp_path)
    assert results.read_result(tmp_path / "missing") is None


def test_jsonl_skips_a_line_cut_by_a_kill(tmp_path):
    path = tmp_path / "m.jsonl"
    results.append_jsonl(path, {"epoch": 1})
    with open(path, "a") as f:
        f.write('{"epoch": 2, "lo')
    assert results.read_jsonl(path) == [{"epoch": 1}]


def test_atomic_write_without_overwrite_never_replaces_a_file(tmp_path):
    path = tmp_path / "out.bin"
    results.atomic_write_bytes(path, b"first", overwrite=False)
    with pytest.raises(FileExistsError):
        results.atomic_write_bytes(path, b"second", overwrite=False)
    assert path.read_bytes() == b"first" and sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]
