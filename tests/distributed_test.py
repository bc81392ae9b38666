"""Multi-process training (`qresnet train --coordinator`): two processes on localhost, JAX's CPU
collectives (Gloo), one CPU device each, against one process on the same global batch."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from qresnet import checkpoints, distributed, results, run_spec

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs/smoke.py"
# Epochs long enough (16 steps) to kill the job between its two checkpoints.
OVERRIDES = ["--config.dataset.synthetic_train=256", "--config.optim.num_epochs=2"]


def _port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(workdir: Path, process_id: int | None, port: int, devices: int, log: Path):
    cmd = [sys.executable, "-m", "qresnet.cli", "train", "--config", str(SMOKE), "--workdir", str(workdir), *OVERRIDES]
    if process_id is not None:
        cmd += ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(process_id)]
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
    with open(log, "a") as f:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)


def _job(workdir: Path, tmp: Path):
    port = _port()
    return [_start(workdir, i, port, 1, tmp / f"p{i}.log") for i in range(2)]


def _params(workdir: Path):
    run = run_spec.finished_run_spec(checkpoints.run_config(workdir))
    return checkpoints.restore_final(run, workdir).params


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A one-process run on two devices, and the same run as a two-process job that is killed (both
    processes) once its first checkpoint is written and then started again, resuming from it."""
    tmp = tmp_path_factory.mktemp("multi")
    # One process with two devices: the same mesh and program as two processes with one each.
    single = _start(tmp / "single", None, 0, 2, tmp / "single.log")
    workdir = tmp / "multi"
    job = _job(workdir, tmp)
    deadline = time.time() + 600
    while time.time() < deadline and not (workdir / "ckpt" / "1").is_dir():
        assert all(p.poll() is None for p in job), (tmp / "p0.log").read_text()[-3000:]
        time.sleep(0.2)
    for p in job:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    assert results.read_result(workdir) is None
    job = _job(workdir, tmp)
    codes = [p.wait(timeout=600) for p in job]
    assert codes == [0, 0], (tmp / "p0.log").read_text()[-3000:] + (tmp / "p1.log").read_text()[-3000:]
    assert single.wait(timeout=600) == 0, (tmp / "single.log").read_text()[-3000:]
    return tmp


def test_two_processes_train_as_one_on_the_same_global_batch(runs):
    one, two = runs / "single", runs / "multi"
    a, b = results.read_result(one), results.read_result(two)
    assert b["processes"] == 2 and a["processes"] == 1
    rows_a, rows_b = (results.read_jsonl(w / "metrics.jsonl") for w in (one, two))
    assert [r["epoch"] for r in rows_b] == [1, 2]  # one writer: each epoch once
    np.testing.assert_allclose([r["train_loss"] for r in rows_b], [r["train_loss"] for r in rows_a], rtol=1e-5)
    np.testing.assert_allclose([r["eval_loss"] for r in rows_b], [r["eval_loss"] for r in rows_a], rtol=1e-5)
    np.testing.assert_allclose(_flat(_params(two)), _flat(_params(one)), atol=1e-5, rtol=1e-5)
    assert not list(two.glob("result.json.*")) and not list(two.glob("*.tmp*"))
    assert "process 1 of 2" in (runs / "p1.log").read_text()


def test_both_processes_killed_then_restarted_finish_with_the_same_result(runs):
    """The two-process job was killed after its first checkpoint and resumed from it, each epoch
    recorded once; its losses and weights equal the one-process run's (the test above)."""
    two = runs / "multi"
    assert results.read_result(two)["resumed_from_epoch"] >= 1
    assert [r["epoch"] for r in results.read_jsonl(two / "metrics.jsonl")] == [1, 2]


def _flat(tree):
    import jax

    return np.concatenate([np.ravel(np.asarray(v)) for v in jax.tree.leaves(tree)])


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"coordinator": "localhost:1234"}, "needs --num-processes N and --process-id I"),
        ({"coordinator": "localhost:1234", "num_processes": 2, "process_id": 2}, "0 <= I < N"),
        ({"num_processes": 2}, "go with --coordinator"),
    ],
)
def test_incomplete_job_options_are_clear_errors(kw, message, monkeypatch):
    for var in ("QRESNET_COORDINATOR", "QRESNET_NUM_PROCESSES", "QRESNET_PROCESS_ID"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(distributed.DistributedError, match=message):
        distributed.initialize(**kw)


def test_a_single_process_joins_nothing(monkeypatch):
    for var in ("QRESNET_COORDINATOR", "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    assert distributed.initialize() == "" and distributed.primary()
