"""Sweep names, dry runs, and a real two-run sweep that a re-run skips."""

import json
import os
from pathlib import Path

import pytest

from qresnet import sweep

ROOT = Path(__file__).resolve().parent.parent
SMOKE_SWEEP = str(ROOT / "configs/smoke_sweep.py")


def test_run_names_are_deterministic_and_readable():
    entry = {"setting": "w4a4_ends8", "quant.rules": [(".*", 4, 4)], "model.width": 0.62, "seed": 3}
    assert sweep.run_name(entry) == "w4a4-ends8_width0.62_seed3"
    assert sweep.run_name(dict(reversed(list(entry.items())))) == sweep.run_name(entry)


def test_dry_run_lists_runs_and_trains_nothing(tmp_path, capsys):
    assert sweep.run_sweep(str(ROOT / "configs/cifar10/sweep_paper.py"), str(tmp_path), dry_run=True) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + 36 + 1 and out[1].startswith("bf16_width0.5") and out[1].endswith("to run")
    assert out[-1] == "no sweep is running on this root"
    assert list(tmp_path.iterdir()) == []


def test_dry_run_shows_a_run_stopped_with_a_checkpoint_as_to_resume(tmp_path, capsys):
    paper = str(ROOT / "configs/cifar10/sweep_paper.py")
    (tmp_path / "bf16_width0.5" / "ckpt" / "17").mkdir(parents=True)
    (tmp_path / "bf16_width0.5" / "ckpt" / "16").mkdir()
    (tmp_path / "w8a8_width0.5" / "ckpt").mkdir(parents=True)  # made, nothing saved yet
    assert sweep.run_sweep(paper, str(tmp_path), dry_run=True, only="width0.5$") == 0
    status = {line.split()[0]: line.split(None, 4)[4] for line in capsys.readouterr().out.splitlines()[1:-1]}
    assert status["bf16_width0.5"] == "to resume (17 of 60 epochs saved)"
    assert status["w8a8_width0.5"] == "to run"


def test_only_selects_runs_by_name_and_rejects_a_regex_that_matches_none(tmp_path, capsys):
    paper = str(ROOT / "configs/cifar10/sweep_paper.py")
    names = [name for name, _, _ in sweep.expand(paper, only="^w4a4_width1")]
    assert names == ["w4a4_width1", "w4a4_width1.25", "w4a4_width1.5", "w4a4_width1.75"]
    assert sweep.run_sweep(paper, str(tmp_path), dry_run=True, only="width2$") == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out[1:-1]] == ["bf16_width2", "w8a8_width2", "w4a4_width2", "w4a4-ends8_width2"]
    with pytest.raises(sweep.SweepError, match=r"--only 'width3' matches none of the sweep's runs: bf16_width0.5, "):
        sweep.expand(paper, only="width3")
    with pytest.raises(sweep.SweepError, match=r"--only 'seed\[' is not a regular expression"):
        sweep.expand(paper, only="seed[")


def test_work_orders_wide_and_long_runs_first():
    runs = {name: cfg for name, _, cfg in sweep.expand(str(ROOT / "configs/cifar10/sweep_paper.py"))}
    w = {name: sweep.work(cfg) for name, cfg in runs.items()}
    assert w["bf16_width2"] > w["bf16_width1"] > w["bf16_width0.5"]
    assert w["bf16_width1"] == w["w4a4_width1"]  # fake quantization trains at float cost
    longer = sweep.expand(str(ROOT / "configs/cifar10/sweep_paper.py"), ["--config.optim.num_epochs=120"])[0][2]
    assert sweep.work(longer) == 2 * w["bf16_width0.5"]


def test_sweep_runs_then_skips_finished_runs(tmp_path, capsys):
    root = tmp_path / "sw"
    assert sweep.run_sweep(SMOKE_SWEEP, str(root), jobs=2) == 0
    results = sorted(root.glob("*/result.json"))
    assert [p.parent.name for p in results] == ["bf16_width0.25", "w4a4-ends8_width0.25"]
    mtimes = [p.stat().st_mtime_ns for p in results]
    assert (root / "index.csv").read_text().count("\n") == 3
    import csv

    rows = {r["name"]: r for r in csv.DictReader((root / "index.csv").open())}
    # one-epoch runs compile one training program each, and their evaluation program in the background
    assert all(float(rows[n]["background_compile_s"]) > 0 for n in rows)
    assert (root / "pareto" / "pareto_linear.png").exists() and (root / "pareto" / "report.md").exists()
    log = [json.loads(line) for line in (root / sweep.SWEEP_LOG).read_text().splitlines()]
    assert len(log) == 1 and log[0]["jobs_per_gpu"] == 2 and log[0]["wall_s"] > 0
    assert sorted(r["name"] for r in log[0]["runs"]) == ["bf16_width0.25", "w4a4-ends8_width0.25"]
    assert all(r["status"] == "ok" and 0 < r["s"] <= log[0]["wall_s"] for r in log[0]["runs"])
    assert "over 1 invocation(s)" in capsys.readouterr().out
    assert sweep.run_sweep(SMOKE_SWEEP, str(root)) == 0
    assert "2 done, 0 to run" in capsys.readouterr().out
    assert len((root / sweep.SWEEP_LOG).read_text().splitlines()) == 1  # nothing ran, nothing logged
    assert [p.stat().st_mtime_ns for p in results] == mtimes
    assert not list(root.rglob("*.tmp")) and not (root / sweep.RUNNING).exists()
    # An invocation killed outright left its record: the next one logs it, to its last heartbeat.
    _plant_record(root, pid=_dead_pid(), pid_start="1")
    assert sweep.run_sweep(SMOKE_SWEEP, str(root)) == 0
    out, err = capsys.readouterr()
    assert "was killed before it logged itself; logging its 592 s up to its last heartbeat and 1 ended run" in err
    log = [json.loads(line) for line in (root / sweep.SWEEP_LOG).read_text().splitlines()]
    assert len(log) == 2 and log[1]["killed"] is True and log[1]["wall_s"] == 591.5
    assert log[1]["runs"] == [{"name": "bf16_width0.25", "status": "ok", "s": 300.0}] and "pid" not in log[1]
    assert f"{log[0]['wall_s'] + 591.5:.0f} s over 2 invocation(s), 1 of them killed" in out
    assert not (root / sweep.RUNNING).exists()


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _plant_record(root, **fields):
    """root/RUNNING as an invocation writes it (started 591.5 s before its last heartbeat)."""
    import socket

    record = {
        "started": "2026-12-02T18:23:20+0000",
        "started_unix": 1000.0,
        "jobs_per_gpu": 8,
        "mps": True,
        "gpus": ["0"],
        "commit": "abc1234",
        "host": socket.gethostname(),
        "last_seen_unix": 1591.5,
        "runs": [{"name": "bf16_width0.25", "status": "ok", "s": 300.0}],
        **fields,
    }
    root.mkdir(parents=True, exist_ok=True)
    (root / sweep.RUNNING).write_text(json.dumps(record))


def test_a_sweep_still_running_keeps_a_second_one_off_its_root(tmp_path, capsys):
    import re
    import socket
    import subprocess
    import time

    root = tmp_path / "sw"
    alive = subprocess.Popen(["sleep", "60"])
    try:
        _plant_record(root, pid=alive.pid, pid_start=sweep._pid_start(alive.pid))
        assert sweep.run_sweep(SMOKE_SWEEP, str(root), dry_run=True) == 0  # --dry-run says who holds the root
        host = re.escape(socket.gethostname())
        assert re.fullmatch(
            f"invocation started 2026-12-02T18:23:20\\+0000 by process {alive.pid} on {host}: "
            r"running; last heartbeat \d+ s ago, 592 s after its start; 1 run\(s\) ended since",
            capsys.readouterr().out.splitlines()[-1],
        )
        with pytest.raises(sweep.SweepError, match=f"is being swept by process {alive.pid} on .*kill -TERM"):
            sweep.run_sweep(SMOKE_SWEEP, str(root))
    finally:
        alive.kill()
        alive.wait()
    # The same pid started at another time is another process: that record is a killed invocation's.
    _plant_record(root, pid=os.getppid(), pid_start="1")
    assert not sweep._alive(json.loads((root / sweep.RUNNING).read_text()))
    # On another host (a shared file system) only a recent heartbeat says it is alive.
    for seen, alive_there in ((time.time(), True), (time.time() - 4 * sweep.HEARTBEAT_S, False)):
        _plant_record(root, host="another-host", pid=1, last_seen_unix=seen)
        assert sweep._alive(json.loads((root / sweep.RUNNING).read_text())) is alive_there
    assert not list(root.glob("*/result.json"))


def test_the_running_record_is_rewritten_at_run_ends_and_heartbeats(tmp_path, monkeypatch):
    running = sweep._Running(tmp_path, {"started_unix": 5.0})
    first = json.loads((tmp_path / sweep.RUNNING).read_text())
    assert first["pid"] == os.getpid() and first["runs"] == [] and first["last_seen_unix"] >= 5.0
    running.beat([])  # nothing ended, heartbeat not due: not rewritten
    assert json.loads((tmp_path / sweep.RUNNING).read_text()) == first
    running.beat([{"name": "a", "status": "ok", "s": 1.0}])  # a run ended
    assert json.loads((tmp_path / sweep.RUNNING).read_text())["runs"] == [{"name": "a", "status": "ok", "s": 1.0}]
    monkeypatch.setattr(sweep, "HEARTBEAT_S", 0.0)
    written = (tmp_path / sweep.RUNNING).stat().st_mtime_ns
    running.beat([{"name": "a", "status": "ok", "s": 1.0}])  # heartbeat due
    assert (tmp_path / sweep.RUNNING).stat().st_mtime_ns > written


def test_command_buffers_reach_every_run_and_the_records(tmp_path, monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_dump_hlo_as_text=false")  # a user's own flags are kept
    root = tmp_path / "cb"
    assert sweep.run_sweep(SMOKE_SWEEP, str(root), jobs=2, command_buffers=True) == 0
    flags = f"--xla_dump_hlo_as_text=false {sweep.COMMAND_BUFFER_FLAG}"
    (entry,) = [json.loads(line) for line in (root / sweep.SWEEP_LOG).read_text().splitlines()]
    assert entry["xla_flags"] == flags and entry["mps"] is False
    for path in root.glob("*/result.json"):
        assert json.loads(path.read_text())["xla_flags"] == flags


def test_mps_daemon_starts_a_private_daemon_and_stops_it(tmp_path, monkeypatch):
    import json
    import os

    import pytest

    log = tmp_path / "calls.jsonl"
    fake = tmp_path / "bin" / sweep.MPS_CONTROL
    fake.parent.mkdir()
    fake.write_text(
        "#!/usr/bin/env python3\nimport json, os, sys\n"
        f"open({str(log)!r}, 'a').write(json.dumps([sys.argv[1:], sys.stdin.read() if len(sys.argv) == 1 else '',"
        " os.environ['CUDA_MPS_PIPE_DIRECTORY']]) + '\\n')\n"
    )
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    with sweep.mps_daemon() as env:
        pipe = env["CUDA_MPS_PIPE_DIRECTORY"]
        assert Path(pipe).is_dir() and len(pipe) < 100
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert calls == [[["-d"], "", pipe], [[], "quit\n", pipe]]
    assert not Path(pipe).exists()
    fake.write_text("#!/bin/sh\nexit 3\n")  # a daemon that will not start
    with pytest.raises(sweep.SweepError, match="could not start the CUDA MPS daemon"), sweep.mps_daemon():
        pass
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(sweep.SweepError, match="nvidia-cuda-mps-control"), sweep.mps_daemon():
        pass


def test_sigterm_stops_the_sweep_and_its_runs_at_a_checkpoint(tmp_path):
    """A sweep killed the way `timeout` or a scheduler kills it launches nothing more, and its
    running run saves a checkpoint and stops; the exit code says it was stopped, not failed."""
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "sw"
    cmd = [sys.executable, "-m", "qresnet.cli", "sweep", "--config", SMOKE_SWEEP, "--root", str(root), "--jobs", "1"]
    cmd += ["--config.optim.num_epochs=500", "--config.checkpoint_every_epochs=1000"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = root / "bf16_width0.25" / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and metrics.read_text().strip()) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    record = json.loads((root / sweep.RUNNING).read_text())  # the running invocation's record
    assert record["pid"] == proc.pid and sweep._alive(record)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == sweep.INTERRUPTED, err
    assert "bf16_width0.25 stopped" in out
    assert "stopped by SIGTERM; 1 running run(s) saved a checkpoint (bf16_width0.25)" in err
    epochs = [int(p.name) for p in (root / "bf16_width0.25" / "ckpt").iterdir()]
    assert len(epochs) == 1 and 1 <= epochs[0] < 500
    assert not list(root.glob("*/result.json")) and not (root / "w4a4-ends8_width0.25").exists()
    (entry,) = [json.loads(line) for line in (root / sweep.SWEEP_LOG).read_text().splitlines()]
    assert entry["runs"] == [{"name": "bf16_width0.25", "status": "stopped", "s": entry["runs"][0]["s"]}]
    assert "killed" not in entry and not (root / sweep.RUNNING).exists()
