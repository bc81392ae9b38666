"""`qresnet sweep --backend ray` on a local Ray cluster of 2 CPUs and 2 logical GPUs."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from qresnet import ray_backend, results, sweep, train  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent

# Three runs of the smoke model on two logical GPUs, two epochs each (a checkpoint after the first): the
# quantized one is killed (its second epoch compiles the quantized phase's program, a window to kill it in).
SWEEP3 = """
from configs import settings, smoke


def get_config():
    return smoke.get_config()


def get_sweep():
    runs = (("bf16", 0), ("w4a4_ends8", 0), ("bf16", 1))
    return [{"setting": s, "quant.rules": settings.SETTINGS[s], "seed": seed} for s, seed in runs]
"""


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _kill_when_training(workdir: Path, killed: list) -> None:
    """SIGKILLs the training process of `workdir` once its first epoch is recorded."""
    deadline = time.time() + 300
    while time.time() < deadline:
        lock = workdir / train.LOCK_FILE
        if (workdir / "metrics.jsonl").exists() and lock.exists():
            try:
                pid = int(lock.read_text().split()[0])
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            except (ValueError, IndexError, ProcessLookupError):
                pass
        time.sleep(0.05)


def test_ray_sweep_retries_a_killed_run_and_matches_the_local_backend(cluster, tmp_path, capsys):
    config = tmp_path / "sweep3.py"
    config.write_text(SWEEP3)
    root = tmp_path / "root"
    names = [name for name, _, _ in sweep.expand(str(config))]
    assert len(names) == 3
    victim = root / "w4a4-ends8_seed0"
    killed = []
    watcher = threading.Thread(target=_kill_when_training, args=(victim, killed), daemon=True)
    watcher.start()
    assert sweep.run_sweep(str(config), str(root), backend="ray", jobs=1) == 0
    watcher.join(timeout=1)
    assert killed, "the test did not manage to kill the run's training process"

    log = [json.loads(line) for line in (root / sweep.SWEEP_LOG).read_text().splitlines()]
    runs = log[-1]["runs"]
    assert sorted(r["name"] for r in runs) == sorted(names) and all(r["status"] == "ok" for r in runs)
    # One logical GPU each (1/--jobs of one), so at most two at once, each with its own device.
    assert {r["devices"] for r in runs} <= {"0", "1"}
    for r in runs:  # the runs under way when each one started
        running = [o for o in runs if o["start"] <= r["start"] < o["end"]]
        assert len(running) <= 2
        assert len({o["devices"] for o in running}) == len(running)
    assert max(sum(o["start"] <= r["start"] < o["end"] for o in runs) for r in runs) == 2  # two at once, at times
    # The killed run was retried and resumed: same result as a run trained without interruption.
    retried = results.read_result(victim)
    _, _, cfg = next(e for e in sweep.expand(str(config)) if e[0] == victim.name)
    alone = train.train_and_evaluate(cfg, tmp_path / "alone", quiet=True)
    assert retried["top1"] == alone["top1"] and retried["top1_last"] == alone["top1_last"]
    assert "result.json" in os.listdir(victim) and not list(victim.glob("result.json.*"))

    # The report is the local backend's: a local sweep over the same root trains nothing and
    # writes the same Pareto report.
    report = (root / "pareto" / "report.md").read_text()
    capsys.readouterr()
    assert sweep.run_sweep(str(config), str(root)) == 0
    assert "3 done, 0 to run" in capsys.readouterr().out
    assert (root / "pareto" / "report.md").read_text() == report
    # A re-run on Ray trains nothing either.
    assert sweep.run_sweep(str(config), str(root), backend="ray", jobs=1) == 0
    assert "3 done, 0 to run" in capsys.readouterr().out


def test_a_root_some_node_cannot_see_is_refused_before_anything_runs(cluster, tmp_path, monkeypatch):
    monkeypatch.setattr(ray_backend, "_sees", lambda path: False)
    with pytest.raises(ray_backend.RayBackendError, match="not visible from Ray node"):
        ray_backend.check_shared_root(tmp_path)
    assert not list(tmp_path.iterdir())  # the token is gone


@pytest.mark.parametrize(
    "kw,message",
    [
        ({"backend": "slurm"}, "--backend 'slurm': choose local or ray"),
        ({"address": "10.0.0.1:6379"}, "--address 10.0.0.1:6379 is a Ray cluster's"),
        ({"backend": "ray", "mps": True}, "--mps starts an MPS daemon on this host only"),
    ],
)
def test_bad_backend_options_are_clear_errors(kw, message, tmp_path):
    with pytest.raises(ray_backend.RayBackendError, match=message):
        sweep.run_sweep(str(ROOT / "configs/smoke_sweep.py"), str(tmp_path / "r"), **kw)
    assert not (tmp_path / "r").exists()
