"""Records that stay true: results only from complete evidence, a run's identity checked wherever
it is reused, one process at a time on a workdir or sweep root, no record destroyed by the tool,
every numeric field checked before anything is written, messages instead of tracebacks."""

import csv
import fcntl
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from configs import settings
from qresnet import cli, config_lib, locks, pareto, results, train
from qresnet.quant import specs as specs_lib

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs/smoke.py"
SMOKE_SWEEP = ROOT / "configs/smoke_sweep.py"
METRIC_KEYS = ("top1", "top1_last", "train_top1_at_best", "best_epoch")
R8 = ["--config.model.name=resnet8"]  # the smallest ResNet: these tests are about records, not models


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished smoke run, copied by the tests that damage it."""
    workdir = tmp_path_factory.mktemp("finished") / "run"
    return workdir, train.train_and_evaluate(config_lib.load_config(SMOKE, R8), workdir, quiet=True)


def _copy(finished, tmp_path) -> Path:
    workdir = tmp_path / "run"
    shutil.copytree(finished[0], workdir)
    return workdir


def _epochs(workdir: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]


# 1. A result only from complete evidence.


@pytest.mark.parametrize("damage", ["first_row", "metrics_file"])
def test_lost_metrics_rows_are_trained_again_never_reported_from_what_remains(finished, tmp_path, capsys, damage):
    workdir = _copy(finished, tmp_path)
    (workdir / "result.json").unlink()
    lines = (workdir / "metrics.jsonl").read_text().splitlines(keepends=True)
    if damage == "metrics_file":
        (workdir / "metrics.jsonl").unlink()
    else:
        (workdir / "metrics.jsonl").write_text("".join(lines[1:]))
    result = train.train_and_evaluate(config_lib.load_config(SMOKE, R8), workdir, quiet=True)
    assert "training again from the start" in capsys.readouterr().err
    assert _epochs(workdir) == [1, 2]
    for key in METRIC_KEYS:  # the CPU is deterministic: the same result as the uninterrupted run
        assert result[key] == pytest.approx(finished[1][key], abs=1e-6), key
    assert list(workdir.glob("ckpt.incomplete-*"))  # the old checkpoints are kept, not deleted


# 2. Identity checked wherever a result, checkpoint or run is reused.


def test_deleting_config_json_does_not_turn_off_the_identity_check(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    (workdir / "config.json").unlink()
    other = config_lib.load_config(SMOKE, [*R8, "--config.seed=7"])
    with pytest.raises(train.TrainError, match="result of run"):
        train.train_and_evaluate(other, workdir, quiet=True)
    (workdir / "result.json").unlink()
    with pytest.raises(train.TrainError, match="no config.json"):
        train.train_and_evaluate(other, workdir, quiet=True)


def test_result_json_records_the_run_identity(finished):
    workdir, result = finished
    assert result["run_id"] == json.loads((workdir / "config.json").read_text())["run_id"]
    assert result["run_id"] == results.recorded_identity(workdir) and len(result["run_id"]) == 16


def test_sweep_rerun_with_other_overrides_is_refused(tmp_path, capsys):
    root = tmp_path / "sweep"
    assert cli.main(["sweep", "--config", str(SMOKE_SWEEP), "--root", str(root), "--only", "bf16", *R8]) == 0
    before = (root / "bf16_width0.25" / "result.json").read_text()
    argv = [
        "sweep",
        "--config",
        str(SMOKE_SWEEP),
        "--root",
        str(root),
        "--only",
        "bf16",
        *R8,
        "--config.optim.num_epochs=2",
    ]
    capsys.readouterr()
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "trained with another config" in err and "optim.num_epochs" in err
    assert cli.main([*argv, "--dry-run"]) == 0
    assert "trained otherwise" in capsys.readouterr().out
    assert (root / "bf16_width0.25" / "result.json").read_text() == before


def test_pareto_refuses_replicates_trained_differently(tmp_path, result_record):
    for root, epochs in (("a", 60), ("b", 30)):
        for name, setting in (("bf16_w1", "bf16"), ("w4_w1", "w4a4")):
            record = result_record(name, setting, 0.9, 0.99, epochs=epochs)
            results.atomic_write_json(tmp_path / root / name / "result.json", record)
    with pytest.raises(pareto.PointsError, match="not a replicate: its epochs is 30"):
        pareto.points_from_roots([tmp_path / "a", tmp_path / "b"], "linear")


def test_replicates_may_differ_in_seed_and_float_source_but_not_in_recipe(tmp_path, result_record):
    def write(root, seed, lr):
        config = {"seed": seed, "init_from": f"/floats/seed{seed}", "optim": {"base_lr": lr}}
        results.atomic_write_json(tmp_path / root / "w4" / "config.json", {"config": config, "specs": {}})
        record = result_record("w4", "w4a4", 0.9, 0.99, seed=seed, run_id=f"id{seed}{lr}")
        results.atomic_write_json(tmp_path / root / "w4" / "result.json", record)

    write("a", 0, 0.04)
    write("b", 1, 0.04)
    points, accs = pareto.points_from_roots([tmp_path / "a", tmp_path / "b"], "linear")
    assert accs == {"w4": [0.9, 0.9]}
    write("b", 1, 0.1)
    with pytest.raises(pareto.PointsError, match="differ in more than seed and init_from"):
        pareto.points_from_roots([tmp_path / "a", tmp_path / "b"], "linear")


def test_eval_compare_refuses_a_run_that_is_not_the_exported_one(tmp_path):
    from qresnet import export

    rules = settings.SETTINGS["w4a4_ends8_deploy"]
    overrides = [f"--config.quant.rules={rules!r}", "--config.setting=w4a4_ends8_deploy", "--config.optim.num_epochs=1"]
    for name, seed in (("a", 0), ("b", 1)):
        cfg = config_lib.load_config(SMOKE, [*R8, *overrides, f"--config.seed={seed}"])
        train.train_and_evaluate(cfg, tmp_path / name, quiet=True)
    path = export.export_run(tmp_path / "a", tmp_path / "a.qrx")
    assert export.read(path)[0]["run_id"] == results.recorded_identity(tmp_path / "a")
    with pytest.raises(export.ExportError, match="not of"):
        export.equivalence(tmp_path / "b", path)


# 3. One process at a time.


def test_a_lock_refuses_a_second_holder_and_outlives_no_killed_holder(tmp_path):
    lock = tmp_path / ".lock"
    refused = pytest.raises(locks.LockError, match="the thing is in use by process")
    with locks.exclusive(lock, "the thing"), refused, locks.exclusive(lock, "the thing"):
        pass
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from qresnet import locks; import time\nwith locks.exclusive({str(lock)!r}, 'x'):\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(locks.LockError), locks.exclusive(lock, "x"):
        pass
    holder.kill()
    holder.wait()
    with locks.exclusive(lock, "x", wait_s=5):  # the kernel let go of the killed holder's lock
        pass


def test_a_refused_process_names_a_holder_that_has_not_written_its_pid_yet(tmp_path):
    lock = tmp_path / ".lock"
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)  # holds the lock with the file still empty
    fcntl.flock(fd, fcntl.LOCK_EX)
    threading.Timer(0.3, lambda: lock.write_text("4242 thehost\n")).start()
    try:
        with pytest.raises(locks.LockError, match="in use by process 4242 on thehost"), locks.exclusive(lock, "x"):
            pass
    finally:
        os.close(fd)


def _start_together(cmds):
    procs = [subprocess.Popen(c, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    return [(p.wait(timeout=600), p.stdout.read(), p.stderr.read()) for p in procs]


def test_two_trainings_on_one_workdir_started_together(tmp_path):
    workdir = tmp_path / "run"
    cmd = [sys.executable, "-m", "qresnet.cli", "train", "--config", str(SMOKE), "--workdir", str(workdir), *R8]
    (a, _, err_a), (b, _, err_b) = _start_together([cmd, cmd])
    # One trains; the other is refused at the lock, or finds the finished result.
    assert sorted([a, b])[0] == 0 and {a, b} <= {0, 1}, (err_a, err_b)
    if 1 in (a, b):
        assert "is in use by process" in err_a + err_b
    assert _epochs(workdir) == [1, 2]
    assert not [p for p in (workdir / "ckpt").iterdir() if not p.name.isdigit()]  # no stray Orbax temp folder


def test_two_sweeps_on_one_root_started_together(tmp_path):
    root = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "qresnet.cli", "sweep", "--config", str(SMOKE_SWEEP), "--root", str(root), *R8]
    (a, _, err_a), (b, _, err_b) = _start_together([cmd, cmd])
    assert sorted([a, b]) in ([0, 0], [0, 1]), (err_a, err_b)
    if 1 in (a, b):
        assert "is in use by process" in err_a + err_b
    for run in ("bf16_width0.25", "w4a4-ends8_width0.25"):
        assert _epochs(root / run) == [1]
    rows = list(csv.DictReader((root / "index.csv").open()))
    assert len(rows) == 2


# 4. The tool never destroys a record it did not just write.


def test_export_never_overwrites_a_file(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    before = (workdir / "result.json").read_bytes()
    assert cli.main(["export", "--workdir", str(workdir), "--out", str(workdir / "result.json")]) == 1
    assert (workdir / "result.json").read_bytes() == before


def test_sweep_moves_an_unreadable_result_aside(tmp_path, capsys):
    root = tmp_path / "sweep"
    assert cli.main(["sweep", "--config", str(SMOKE_SWEEP), "--root", str(root), "--only", "bf16", *R8]) == 0
    result = root / "bf16_width0.25" / "result.json"
    broken = json.loads(result.read_text())
    del broken["top1"]
    result.write_text(json.dumps(broken))
    assert cli.main(["sweep", "--config", str(SMOKE_SWEEP), "--root", str(root), "--only", "bf16", *R8]) == 0
    assert json.loads((root / "bf16_width0.25" / "result.json.invalid-1").read_text()) == broken
    assert "top1" in json.loads(result.read_text())


def test_pareto_refuses_to_write_into_a_run(finished, tmp_path):
    workdir = _copy(finished, tmp_path)
    with pytest.raises(pareto.PointsError, match="holds a run's records"):
        pareto.write_report(root=str(finished[0].parent), points=None, cost_key="linear", out=str(workdir))


# 5. Every numeric field checked up front, generically.


def _config_files():
    return sorted(p for p in (ROOT / "configs").rglob("*.py") if p.name not in ("__init__.py", "settings.py"))


def test_every_numeric_field_of_every_config_has_a_range():
    for path in _config_files():
        module = config_lib.load_module(path)
        if not hasattr(module, "get_config") or path.name == "common.py":
            continue
        missing = set(config_lib.numeric_fields(module.get_config())) - set(config_lib.RANGES)
        assert not missing, f"{path.name}: {sorted(missing)} have no entry in config_lib.RANGES"


def _outside(r: config_lib.Range) -> float:
    if r.lo is not None:
        return r.lo - 1 if not r.lo_open else r.lo
    return r.hi + 1 if not r.hi_open else r.hi


@pytest.mark.parametrize("key", sorted(config_lib.RANGES))
def test_an_out_of_range_value_is_refused_before_the_workdir_exists(key, tmp_path, capsys):
    value = _outside(config_lib.RANGES[key])
    cfg = config_lib.load_config(SMOKE)
    current = config_lib.numeric_fields(cfg)[key]
    text = repr(int(value)) if isinstance(current, int) else repr(float(value))
    workdir = tmp_path / "run"
    assert cli.main(["train", "--config", str(SMOKE), "--workdir", str(workdir), f"--config.{key}={text}"]) == 1
    assert f"--config.{key}=" in capsys.readouterr().err
    assert not workdir.exists()


@pytest.mark.parametrize(
    "override, message",
    [
        ("--config.model.width=1e400", "is not a finite number"),
        ("--config.quant.rules=None", "expected a list"),
        ("--config.quant.act_start_step=8", "at or after the run's last step"),
    ],
)
def test_values_that_would_make_a_run_lie_are_refused(override, message, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert cli.main(["train", "--config", str(SMOKE), "--workdir", str(workdir), override]) == 1
    assert message in capsys.readouterr().err
    assert not workdir.exists()


def test_the_setting_label_is_derived_from_the_rules_where_they_disagree(capsys):
    from qresnet import resnet, run_spec

    four_bit = resnet.resolve_specs([(".*", 4, 4)], "resnet20")
    assert run_spec.setting_label("bf16", four_bit) == "w4a4"  # a 4-bit run is never recorded as float
    assert "recorded as 'w4a4'" in capsys.readouterr().err
    assert run_spec.setting_label("w4a4_deploy", four_bit) == "w4a4_deploy"
    assert run_spec.setting_label("my_run", four_bit) == "my_run"
    ends8 = resnet.resolve_specs(settings.SETTINGS["w4a4_ends8"], "resnet20")
    assert specs_lib.bits_label(ends8) == "w4a4_ends8"
    for name, rules in settings.SETTINGS.items():  # every named setting agrees with its own rules
        assert specs_lib.label_agrees(name, resnet.resolve_specs(rules, "resnet20")), name


def test_sweep_jobs_bench_batch_and_pareto_values_are_checked(tmp_path, capsys):
    assert cli.main(["sweep", "--config", str(SMOKE_SWEEP), "--root", str(tmp_path / "s"), "--jobs", "-1"]) == 1
    assert "--jobs -1 must be >= 0" in capsys.readouterr().err and not (tmp_path / "s").exists()
    from benchmarks import inference

    with pytest.raises(ValueError, match="must be >= 1"):
        inference.parse_case("resnet20:32:0")
    points = tmp_path / "p.csv"
    for row, message in (("a,bf16,-1,0.9", "is negative"), ("a,bf16,1,91", "give fractions")):
        points.write_text(f"name,setting,cost,accuracy\n{row}\n")
        assert cli.main(["pareto", "--points", str(points), "--out", str(tmp_path / "out")]) == 1
        assert message in capsys.readouterr().err


# 6. Messages, not tracebacks.


@pytest.mark.parametrize(
    "body, message",
    [
        ("def get_config(:\n", "failed to import (line 1): SyntaxError"),
        ("import no_such_module_here\n", "ModuleNotFoundError"),
        ("def get_config():\n    return {'seed': 0}\n", "returned a dict"),
        ("def get_config():\n    raise RuntimeError('boom')\n", "get_config() of config file"),
    ],
)
def test_a_broken_config_file_is_a_message(body, message, tmp_path, capsys):
    path = tmp_path / "bad.py"
    path.write_text(body)
    assert cli.main(["train", "--config", str(path), "--workdir", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_output_paths_that_are_files_are_messages(tmp_path, capsys):
    a_file = tmp_path / "file"
    a_file.write_text("mine")
    assert cli.main(["train", "--config", str(SMOKE), "--workdir", str(a_file)]) == 1
    assert "is a file" in capsys.readouterr().err
    assert cli.main(["train", "--config", str(SMOKE), "--workdir", str(a_file / "run")]) == 1
    assert "qresnet train: error:" in capsys.readouterr().err  # NotADirectoryError, as a message
    assert cli.main(["sweep", "--config", str(SMOKE_SWEEP), "--root", str(a_file)]) == 1
    assert "is a file" in capsys.readouterr().err
    assert a_file.read_text() == "mine"
