"""kill -9 at a random moment, then the same command again: nothing lost, nothing doubled.

Also: a corrupt newest checkpoint falls back to the previous one.
"""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import pytest

from qresnet import cli, config_lib, data, feeds, train

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs/smoke.py"
METRIC_KEYS = ("top1", "top1_last", "train_top1_at_best")


def _cli(*args):
    return [sys.executable, "-m", "qresnet.cli", *args]


def _kill_at_random(cmd, seconds, seed):
    """Starts cmd in its own process group and SIGKILLs the group at a random time."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    delay = random.Random(seed).uniform(*seconds)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return delay


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("ref") / "run"
    return train.train_and_evaluate(config_lib.load_config(SMOKE), workdir, quiet=True)


def test_train_killed_then_rerun_matches_uninterrupted(reference, tmp_path):
    workdir = tmp_path / "run"
    cmd = _cli("train", "--config", str(SMOKE), "--workdir", str(workdir))
    _kill_at_random(cmd, (8, 40), seed=int(time.time()))
    subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
    result = json.loads((workdir / "result.json").read_text())
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(reference[key], abs=1e-6), key
    epochs = [json.loads(line)["epoch"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert not list(workdir.rglob("*.tmp"))


def test_sweep_killed_then_rerun_finishes_only_missing_runs(tmp_path):
    root = tmp_path / "sweep"
    cmd = _cli("sweep", "--config", str(ROOT / "configs/smoke_sweep.py"), "--root", str(root), "--jobs", "1")
    _kill_at_random(cmd, (30, 45), seed=int(time.time()))
    done_before = {p.parent.name: p.stat().st_mtime_ns for p in root.glob("*/result.json")}
    out = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    assert f"{len(done_before)} done, {2 - len(done_before)} to run" in out
    results = sorted(root.glob("*/result.json"))
    assert [p.parent.name for p in results] == ["bf16_width0.25", "w4a4-ends8_width0.25"]
    for p in results:  # finished runs were not redone
        if p.parent.name in done_before:
            assert p.stat().st_mtime_ns == done_before[p.parent.name]
        json.loads(p.read_text())
    assert not list(root.rglob("*.tmp"))
    assert (root / "index.csv").read_text().count("\n") == 3


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(reference, tmp_path, capsys):
    cfg = config_lib.load_config(SMOKE)
    workdir = tmp_path / "run"
    train.train_and_evaluate(cfg, workdir, quiet=True)
    (workdir / "result.json").unlink()
    for f in (workdir / "ckpt" / "2").rglob("*"):
        if f.is_file():
            f.write_bytes(b"\0garbage")
    result = train.train_and_evaluate(cfg, workdir, quiet=True)
    assert "checkpoint 2 is unreadable" in capsys.readouterr().err
    assert result["resumed_from_epoch"] == 1
    for key in METRIC_KEYS:
        assert result[key] == pytest.approx(reference[key], abs=1e-6), key


def test_out_of_memory_suggests_a_smaller_batch(tmp_path, monkeypatch):
    def oom(*args, **kwargs):
        raise jax.errors.JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 1.00GiB")

    monkeypatch.setattr(feeds, "train_epoch", oom)
    with pytest.raises(train.TrainError, match="out of memory at batch size 16; try --config.optim.batch_size=8"):
        train.train_and_evaluate(config_lib.load_config(SMOKE), tmp_path / "oom", quiet=True)
    assert not (tmp_path / "oom" / "result.json").exists()


@pytest.mark.parametrize(
    "override,message",
    [
        ("--config.optim.batch_sise=8", "unknown config key"),
        ("--config.quant.rules=[('.*', 4, 9)]", "a_bits must be from 1 to 8"),
        ("--config.model.width=-0.5", "--config.model.width=-0.5 is out of range"),
        ("--config.dataset.name=imagenet21k", "unknown dataset"),
        ("--config.checkpoint_every_epochs=0", "--config.checkpoint_every_epochs=0 is out of range"),
    ],
)
def test_bad_train_input_writes_nothing(tmp_path, override, message, capsys):
    workdir = tmp_path / "run"
    assert cli.main(["train", "--config", str(SMOKE), "--workdir", str(workdir), override]) == 1
    assert message in capsys.readouterr().err
    assert not workdir.exists()


def test_missing_dataset_files_write_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(data, "_DEFAULT_DIRS", ())
    monkeypatch.delenv("QRESNET_DATA", raising=False)
    workdir = tmp_path / "run"
    args = [
        "train",
        "--config",
        str(ROOT / "configs/cifar10/resnet20_bf16.py"),
        "--workdir",
        str(workdir),
        f"--config.dataset.data_dir={tmp_path / 'nowhere'}",
        f"--config.dataset.tfds_dir={tmp_path / 'tfds'}",
    ]
    assert cli.main(args) == 1
    assert "cifar10_jpeg.npz not found" in capsys.readouterr().err
    assert not workdir.exists() and not (tmp_path / "tfds").exists()
