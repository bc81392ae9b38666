"""The `qresnet` command: cost output and errors with non-zero exits."""

import json

import pytest

from qresnet import cli

R50 = "configs/imagenet/resnet50_w4a4_ends8.py"


def test_cost_json_has_the_paper_constants(capsys):
    assert cli.main(["cost", "--config", R50, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["total"]["macs"] == 4_089_184_256 and out["total"]["weights"] == 25_502_912
    assert {k: round(v, 4) for k, v in out["ratio"].items()} == {"linear": 0.2573, "quadratic": 0.068, "memory": 0.2702}
    assert len(out["layers"]) == 54 and out["layers"][0]["name"] == "stem" and out["layers"][0]["w_bits"] == 8


def test_cost_table(capsys):
    assert cli.main(["cost", "--config", "configs/cifar10/resnet20_w4a4.py", "--config.model.width=1.5"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["name", "macs", "weights"]
    assert "stage2/block0/proj" in out and "ratio to bf16 resnet20" in out


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.model.widht=1.5", "unknown config key 'model.widht'"),
        ("--config.quant.rules=[('.*', 0, 4)]", "w_bits must be from 1 to 8"),
        ("--config.quant.rules=[('.*', 9, 4)]", "w_bits must be from 1 to 8"),
        ("--config.quant.rules=[('.*', -1, 4)]", "w_bits must be from 1 to 8"),
        ("--config.quant.rules=[('.*', '4', 4)]", "write e.g. 4, not '4'"),
        ("--config.quant.rules=[('stage7/.*', 4, 4), ('.*', 8, 8)]", "matches no layer"),
        ("--config.quant.rules=[('stem', 4, 4)]", "match no rule"),
        ("--config.model.width=0", "--config.model.width=0.0 is out of range"),
        ("--config.model.width=-1.0", "--config.model.width=-1.0 is out of range"),
        ("--config.model.name=resnet21", "unknown model 'resnet21'"),
        ("--config.dataset.name=mnist10", "unknown dataset 'mnist10'"),
    ],
)
def test_bad_inputs_exit_non_zero_with_a_clear_error(override, message, capsys):
    assert cli.main(["cost", "--config", "configs/cifar10/resnet20_bf16.py", override]) == 1
    assert message in capsys.readouterr().err


def test_unknown_command_and_help(capsys):
    assert cli.main(["frobnicate"]) == 2
    assert cli.main(["--help"]) == 0
    assert "qresnet <command>" in capsys.readouterr().out
    assert cli.main(["bench-int"]) == 2  # moved to the benchmarks: the message names where
    assert "python -m benchmarks.inference" in capsys.readouterr().err


def test_runs_writes_a_table_and_refuses_a_folder_without_runs(tmp_path, capsys, result_record):
    import csv

    from qresnet import results

    results.atomic_write_json(tmp_path / "root" / "r1" / "result.json", result_record("r1", "bf16", 0.9, 0.99))
    out = tmp_path / "runs.csv"
    assert cli.main(["runs", "--root", str(tmp_path / "root"), "--out", str(out), "--group", "mine"]) == 0
    assert [(r["group"], r["name"]) for r in csv.DictReader(out.open())] == [("mine", "r1")]
    (tmp_path / "none").mkdir()
    assert cli.main(["runs", "--root", str(tmp_path / "none"), "--out", str(out)]) == 1
    assert "no finished run" in capsys.readouterr().err


def test_sweep_passes_its_options_on(monkeypatch, tmp_path):
    from qresnet import sweep

    got = {}
    monkeypatch.setattr(sweep, "run_sweep", lambda *a, **kw: got.update(args=a, kw=kw) or 0)
    argv = ["sweep", "--config", "configs/smoke_sweep.py", "--root", str(tmp_path), "--jobs", "4", "--mps"]
    assert cli.main([*argv, "--command-buffers", "--only", "seed0$", "--config.seed=3"]) == 0
    assert got["args"][2] == ["--config.seed=3"]
    assert got["kw"] == {
        "dry_run": False,
        "jobs": 4,
        "mps": True,
        "command_buffers": True,
        "only": "seed0$",
        "backend": "local",
        "address": None,
    }
    assert cli.main([*argv[:5], "--backend", "ray", "--address", "10.0.0.1:6379"]) == 0
    assert got["kw"]["backend"] == "ray" and got["kw"]["address"] == "10.0.0.1:6379"
