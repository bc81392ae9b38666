"""`qresnet sweep`: expand a config's get_sweep() into runs and train the missing ones.

Each run is a `qresnet train` subprocess with the sweep entry as overrides, in
`root/<name>`; its name is derived from the entry, so re-running the same
command finds finished runs (those with a result.json) and skips them. Runs
start longest first (`work`) and are spread over every local GPU, `jobs` at a
time on each (several small runs share a GPU; the first epochs' compilation of
one overlaps the training of another). With `mps`, the runs' processes share
each GPU through the CUDA Multi-Process Service, so their kernels can run at the
same time instead of taking turns (small models leave most of a GPU idle; docs/performance.md
has the sweep's wall time each way). SIGTERM to the sweep launches nothing more and stops the
running runs at their next epoch's end with a checkpoint (exit code 143).
Each invocation that runs anything appends its wall time and each run's time to
`root/sweep_log.jsonl`, so a sweep finished over several invocations (preempted,
time-limited jobs) still reports its whole wall time. While it runs, an invocation keeps
`root/.sweep_running.json` (rewritten every HEARTBEAT_S and at each run's end): one killed
outright (SIGKILL, a lost machine) leaves it behind, and the next invocation logs it, its wall
time counted up to its last heartbeat; one still alive on this host keeps a second sweep off
the root.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from qresnet import config_lib, ray_backend, results

# Exit code of a run or sweep stopped by SIGTERM (128 + 15, as a shell reports it).
INTERRUPTED = 128 + signal.SIGTERM
SWEEP_LOG = "sweep_log.jsonl"
RUNNING = ".sweep_running.json"
LOCK_FILE = ".sweep.lock"  # held by the invocation sweeping a root (`locks.exclusive`)
HEARTBEAT_S = 10.0


class SweepError(ValueError):
    """A sweep that cannot be expanded or run."""


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return re.sub(r"[^A-Za-z0-9.+-]+", "-", str(value)).strip("-")


def run_name(entry: Mapping[str, Any]) -> str:
    """Deterministic name of a sweep entry: setting first, then key=value pairs.

    `quant.rules` is named by `setting`; other keys by their last component.
    """
    parts = [_fmt(entry["setting"])] if "setting" in entry else []
    for key in sorted(entry):
        if key in ("setting", "quant.rules"):
            continue
        parts.append(f"{key.split('.')[-1]}{_fmt(entry[key])}")
    return "_".join(parts) or "run"


def override_args(entry: Mapping[str, Any]) -> list[str]:
    """`--config.key=value` strings that reproduce an entry."""
    return [f"--config.{k}={v if isinstance(v, str) else repr(v)}" for k, v in entry.items()]


def expand(
    config_path: str, overrides: Sequence[str] = (), only: str | None = None
) -> list[tuple[str, list[str], Any]]:
    """[(name, override args, resolved ConfigDict)] for every run of the sweep (those whose name
    `only`, a regex, matches anywhere, if given)."""
    module = config_lib.load_module(config_path)
    try:
        pattern = re.compile(only) if only is not None else None
    except re.error as e:
        raise SweepError(f"--only {only!r} is not a regular expression ({e}); e.g. --only 'seed0$'") from e
    if not hasattr(module, "get_sweep"):
        raise SweepError(f"{config_path} has no get_sweep(); `qresnet train` runs a single config")
    sweep = config_lib.call_config(module, config_path, "get_sweep")
    if not isinstance(sweep, (list, tuple)) or not all(isinstance(e, Mapping) for e in sweep):
        raise SweepError(f"get_sweep() of {config_path} must return a list of {{dotted.key: value}} dicts")
    runs, seen = [], {}
    for entry in sweep:
        name = run_name(entry)
        if name in seen:
            raise SweepError(
                f"sweep entries {seen[name]} and {entry} get the same run name {name!r}; "
                "give them distinct settings or keys"
            )
        seen[name] = entry
        if pattern is not None and not pattern.search(name):
            continue
        args = list(overrides) + override_args(entry)
        runs.append((name, args, config_lib.load_config(config_path, args)))
    if not seen:
        raise SweepError(f"{config_path}: get_sweep() returned no runs")
    if not runs:
        raise SweepError(f"--only {only!r} matches none of the sweep's runs: {', '.join(seen)}")
    return runs


def work(cfg) -> float:
    """A run's training work in MACs (float MACs per image x epochs x train images), for ordering."""
    from qresnet import data, run_spec

    macs = run_spec.config_cost(cfg)["total"]["macs"]
    return float(macs) * cfg.optim.num_epochs * data.dataset_info(cfg.dataset.name).num_train


def _devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d for d in visible.split(",") if d.strip()]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        n = len([line for line in out.stdout.splitlines() if line.startswith("GPU ")])
    except (OSError, subprocess.SubprocessError):
        n = 0
    return [str(i) for i in range(n)]


MPS_CONTROL = "nvidia-cuda-mps-control"
# XLA runs whole programs, loops and conditionals included, as CUDA graphs: one launch per scanned
# epoch instead of one per kernel (small ResNets launch hundreds of short kernels a step).
COMMAND_BUFFER_FLAG = "--xla_gpu_enable_command_buffer=FUSION,CUBLAS,CUBLASLT,CUDNN,CUSTOM_CALL,WHILE,CONDITIONAL"


@contextlib.contextmanager
def mps_daemon():
    """Runs a private CUDA MPS control daemon while the block runs; yields the environment
    variables that connect a process to it. Raises SweepError if the NVIDIA tool is missing."""
    binary = shutil.which(MPS_CONTROL)
    if binary is None:
        raise SweepError(
            f"--mps needs {MPS_CONTROL} (installed with the NVIDIA driver's utilities) on PATH; "
            "install it or run without --mps"
        )
    # A short private folder: the daemon's pipes are Unix sockets, whose paths are length-limited.
    folder = Path(tempfile.mkdtemp(prefix="qresnet-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for d in env.values():
        Path(d).mkdir()
    full = {**os.environ, **env}
    try:
        subprocess.run([binary, "-d"], env=full, check=True, timeout=60, capture_output=True, text=True)
    except (subprocess.SubprocessError, OSError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise SweepError(f"could not start the CUDA MPS daemon ({e}); run without --mps") from e
    try:
        yield env
    finally:
        subprocess.run([binary], input="quit\n", text=True, env=full, timeout=60, check=False)
        shutil.rmtree(folder, ignore_errors=True)


def run_sweep(
    config_path: str,
    root: str,
    overrides: Sequence[str] = (),
    *,
    dry_run: bool = False,
    jobs: int = 0,
    mps: bool = False,
    command_buffers: bool = False,
    only: str | None = None,
    backend: str = "local",
    address: str | None = None,
) -> int:
    """Trains every run of the sweep that has no result.json yet; returns an exit code.

    Args:
      config_path: a config file with get_config() and get_sweep().
      root: folder for the runs (`root/<name>`), `index.csv` and, once every run
      is done, the Pareto report in `root/pareto`.
      overrides: `--config.key=value` applied to every run.
      dry_run: list the runs and their costs, train nothing.
      jobs: concurrent runs per GPU (0: 3 on a GPU, 1 on a CPU).
      mps: share the GPUs through a CUDA MPS daemon started for the sweep
        (ignored, with a note, where there is no GPU).
      command_buffers: run each whole training epoch (its scan loop included) as
        CUDA graphs (`COMMAND_BUFFER_FLAG` added to the runs' XLA_FLAGS).
      only: a regex; run only the runs whose name it matches (anywhere in the name).
      backend, address: "local" (qresnet's scheduler) or "ray" (`qresnet.ray_backend`), and its cluster.

    Returns:
      0 if every run finished, 1 if any failed.
    """
    from qresnet import locks

    if jobs < 0:
        raise SweepError(f"--jobs {jobs} must be >= 0 (0: 3 runs at a time on a GPU, 1 on a CPU)")
    ray_backend.check_options(backend, address, mps)  # Ray itself is imported only for --backend ray
    runs = expand(config_path, overrides, only)
    root_path = Path(root)
    if root_path.exists() and not root_path.is_dir():
        raise SweepError(f"--root {root} is a file; give a folder for the sweep's runs")
    others = {name: why for name, _, cfg in runs if (why := _trained_otherwise(root_path / name, cfg))}
    if dry_run:
        _print_plan(root_path, runs, others)
        return 0
    if others:
        first = next(iter(others))
        raise SweepError(
            f"{root} holds {len(others)} run(s) trained with another config than this sweep's ({first}: "
            f"{others[first]}); run the sweep with the overrides it was started with, or use another --root"
        )
    root_path.mkdir(parents=True, exist_ok=True)
    with locks.exclusive(root_path / LOCK_FILE, f"sweep root {root}"):
        if backend == "ray":
            ray_backend.join(address, root_path)
        return _sweep_locked(config_path, root_path, runs, jobs, mps, command_buffers, only, backend)


def _trained_otherwise(workdir: Path, cfg) -> str:
    """Why the run in `workdir` is not the run of `cfg` ("" if it is, or nothing is there yet)."""
    from qresnet import run_spec
    from qresnet.quant import specs as specs_lib

    recorded = results.recorded_identity(workdir)
    if recorded is None:
        return ""
    record = {"config": config_lib.to_json(cfg), "specs": specs_lib.specs_to_json(run_spec.resolve_specs(cfg))}
    if recorded == results.run_identity(record):
        return ""
    old = results.read_json(workdir / "config.json").get("config", {})
    diff = results.config_diff(old, record["config"])
    return f"differs at {', '.join(diff[:4])}" if diff else "different per-layer specs"


def _print_plan(root: Path, runs, others: Mapping[str, str]) -> None:
    """--dry-run: each run's costs and status (done, to run, to resume, or trained with another config)."""
    from qresnet import checkpoints, run_spec

    print(f"{'run':28s} {'linear':>8s} {'quadratic':>9s} {'memory':>8s}  status")
    for name, _, cfg in runs:
        ratio = run_spec.config_cost(cfg)["ratio"]
        saved = checkpoints.epochs_saved(root / name)
        status = f"to resume ({saved} of {cfg.optim.num_epochs} epochs saved)" if saved else "to run"
        status = "done" if (root / name / "result.json").exists() else status
        status = f"trained otherwise ({others[name]})" if name in others else status
        print(f"{name:28s} {ratio['linear']:8.4f} {ratio['quadratic']:9.4f} {ratio['memory']:8.4f}  {status}")
    print(_running_status(root))


def _sweep_locked(config_path, root_path: Path, runs, jobs, mps, command_buffers, only, backend="local") -> int:
    """The sweep, under the root's lock."""
    from qresnet import index, train

    _take_over(root_path)
    todo = []
    for name, args, cfg in runs:
        try:
            finished = results.read_result(root_path / name) is not None
        except results.RecordError as e:
            aside = results.move_aside(root_path / name / "result.json", "invalid")
            print(f"{name}: {e}; kept as {aside.name}, running it again", file=sys.stderr)
            finished = False
        if not finished:
            todo.append((work(cfg), name, args))
    # Longest first: the widest runs do not start last and leave the GPU to one process at the end.
    todo = [(name, args) for _, name, args in sorted(todo, key=lambda t: -t[0])]
    selected = f" matching --only {only!r}" if only is not None else ""
    print(f"sweep: {len(runs)} runs{selected}, {len(runs) - len(todo)} done, {len(todo)} to run", flush=True)
    devices = _devices()
    per_device = jobs or (3 if devices else 1)
    slots = [(d, j) for d in (devices or [None]) for j in range(per_device)]
    started = time.time()
    with contextlib.ExitStack() as stack:
        env = {}
        if mps and devices and todo:
            env = stack.enter_context(mps_daemon())
        elif mps:
            print("sweep: --mps ignored: no GPU found" if not devices else "sweep: nothing to run", flush=True)
        if command_buffers:
            env = {**env, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} {COMMAND_BUFFER_FLAG}".strip()}
        xla_flags = env.get("XLA_FLAGS", os.environ.get("XLA_FLAGS"))  # what the runs ran under
        running = None
        if todo:
            entry = _entry(started, per_device, "CUDA_MPS_PIPE_DIRECTORY" in env, devices, xla_flags)
            running = _Running(root_path, entry)
        ray_run = functools.partial(ray_backend.run_all, jobs=jobs, launch=launch, interrupted=INTERRUPTED)
        run_all = _run_all if backend == "local" else ray_run
        with train.stop_requests() as stop:
            timings = run_all(config_path, root_path, todo, slots, len(runs) - len(todo), len(runs), env, stop, running)
    failed = [t["name"] for t in timings if t["status"] == "FAILED"]
    stopped = [t["name"] for t in timings if t["status"] == "stopped"]
    if running is not None:
        _log_invocation(root_path, {**entry, "wall_s": round(time.time() - started, 1), "runs": timings})
        running.path.unlink(missing_ok=True)
    index.write_index(root_path)
    if stop:
        print(
            f"sweep: stopped by {signal.Signals(stop[0]).name}; {len(stopped)} running run(s) saved a checkpoint "
            f"({', '.join(stopped) or 'none'}); re-run the same command to resume",
            file=sys.stderr,
        )
        return INTERRUPTED
    if failed:
        print(
            f"sweep: {len(failed)} run(s) failed: {', '.join(failed)}; see their log.txt; "
            "re-run the same command to retry them",
            file=sys.stderr,
        )
        return 1
    from qresnet import pareto

    pareto.write_report(root=str(root_path), points=None, cost_key="linear", out=str(root_path / "pareto"))
    print(
        f"sweep: all {len(runs)} runs done; index at {root_path / 'index.csv'}, Pareto report in {root_path / 'pareto'}"
    )
    return 0


def _entry(started: float, jobs: int, mps: bool, devices, xla_flags) -> dict[str, Any]:
    """The fields of this invocation's sweep_log entry known at its start."""
    return {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "started_unix": round(started, 1),
        "jobs_per_gpu": jobs,
        "mps": mps,
        "gpus": list(devices),
        **({"xla_flags": xla_flags} if xla_flags else {}),
        "commit": results.git_commit(),
    }


def _log_invocation(root: Path, entry: Mapping[str, Any]) -> None:
    """Appends an invocation to root/sweep_log.jsonl and prints the sweep's wall time so far."""
    log = root / SWEEP_LOG
    results.append_jsonl(log, entry)
    entries = results.read_jsonl(log)
    total = sum(e.get("wall_s", 0.0) for e in entries)
    killed = sum(bool(e.get("killed")) for e in entries)
    note = f", {killed} of them killed (counted to their last heartbeat)" if killed else ""
    print(
        f"sweep: {entry['wall_s']:.0f} s this time; {total:.0f} s over {len(entries)} invocation(s){note} "
        f"of {root} ({log})"
    )


class _Running:
    """root/RUNNING while an invocation runs: its entry, the runs ended so far, and when it was
    last seen alive; rewritten at most every HEARTBEAT_S, and whenever a run ends."""

    def __init__(self, root: Path, entry: Mapping[str, Any]):
        self.path, self.ended, self.written = root / RUNNING, -1, 0.0
        self.entry = {**entry, "host": socket.gethostname(), "pid": os.getpid(), "pid_start": _pid_start(os.getpid())}
        root.mkdir(parents=True, exist_ok=True)
        self.beat([])

    def beat(self, timings: list[dict[str, Any]]) -> None:
        now = time.time()
        if len(timings) == self.ended and now - self.written < HEARTBEAT_S:
            return
        self.ended, self.written = len(timings), now
        results.atomic_write_json(self.path, {**self.entry, "last_seen_unix": round(now, 1), "runs": timings})


def _pid_start(pid: int) -> str | None:
    """When process `pid` started, in clock ticks since boot (Linux's /proc), or None: with the
    pid, it names one process (pids are reused)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(record: Mapping[str, Any]) -> bool:
    """Whether the invocation that wrote a RUNNING record is still running: on this host, its
    process; on another (a shared file system), a heartbeat within the last 3 HEARTBEAT_S."""
    pid = record.get("pid")
    if record.get("host") != socket.gethostname():
        return time.time() - float(record["last_seen_unix"]) < 3 * HEARTBEAT_S
    if not isinstance(pid, int) or pid == os.getpid():
        return False
    if record.get("pid_start") is not None:
        return _pid_start(pid) == record["pid_start"]
    try:
        os.kill(pid, 0)  # PermissionError: alive, another user's
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def _running_status(root: Path) -> str:
    """One line on the invocation that holds `root`, if any (for --dry-run)."""
    try:
        record = json.loads((root / RUNNING).read_text())
        seen = time.time() - float(record["last_seen_unix"])
        since = float(record["last_seen_unix"]) - float(record["started_unix"])
    except FileNotFoundError:
        return "no sweep is running on this root"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{root / RUNNING} is unreadable ({e})"
    state = "running" if _alive(record) else "killed (the next invocation logs it)"
    return (
        f"invocation started {record.get('started')} by process {record.get('pid')} on {record.get('host')}: "
        f"{state}; last heartbeat {seen:.0f} s ago, {since:.0f} s after its start; "
        f"{len(record.get('runs', []))} run(s) ended since"
    )


def _take_over(root: Path) -> None:
    """Logs an earlier invocation that was killed before it could log itself (its RUNNING record
    left behind); raises SweepError if that invocation is still running."""
    path = root / RUNNING
    if not path.exists():
        return
    try:
        record = json.loads(path.read_text())
        wall = float(record["last_seen_unix"]) - float(record["started_unix"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        print(f"sweep: {path} is unreadable ({e}); an earlier invocation's time is lost", file=sys.stderr)
        path.unlink(missing_ok=True)
        return
    if _alive(record):
        raise SweepError(
            f"{root} is being swept by process {record.get('pid')} on {record.get('host')} (started "
            f"{record.get('started')}); wait for it, or stop it with `kill -TERM {record.get('pid')}` there "
            "(its runs save a checkpoint) and re-run"
        )
    skip = ("host", "pid", "pid_start", "last_seen_unix")
    entry = {**{k: v for k, v in record.items() if k not in skip}, "wall_s": round(wall, 1), "killed": True}
    print(
        f"sweep: the invocation started {record.get('started')} was killed before it logged itself; "
        f"logging its {wall:.0f} s up to its last heartbeat and {len(record.get('runs', []))} ended run(s)",
        file=sys.stderr,
    )
    _log_invocation(root, entry)
    path.unlink()


def _run_all(config_path, root: Path, todo, slots, done: int, total: int, env, stop, heartbeat=None):
    """Runs `todo` on `slots`; once `stop` is non-empty, launches nothing more and passes SIGTERM
    on to the running runs, which checkpoint and exit. Returns [{name, status, s}] of the runs
    that ended, status ok, stopped or FAILED, s the time from launch to exit; `heartbeat` (a
    _Running) hears of them as they end."""
    from tqdm import tqdm

    queue, running, timings, failed = list(todo), {}, [], 0
    t0, signalled = time.time(), False
    # The bar is drawn on a terminal only; every run's end is also a line, for logs.
    bar = tqdm(total=total, initial=done, desc="sweep", unit="run", disable=not sys.stderr.isatty())
    while queue or running:
        if stop and not signalled:
            queue, signalled = [], True
            for _, proc, _ in running.values():
                proc.send_signal(signal.SIGTERM)
        for slot in slots:
            if slot not in running and queue:
                name, args = queue.pop(0)
                running[slot] = (name, launch(config_path, root / name, args, slot[0], env), time.time())
        time.sleep(0.5)
        if heartbeat is not None:
            heartbeat.beat(timings)
        for slot, (name, proc, launched) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[slot]
            code = proc.returncode
            # A run signalled before its first epoch dies of the signal itself (-15): stopped too.
            was_stopped = code == INTERRUPTED or (bool(stop) and code == -signal.SIGTERM)
            done += code == 0
            status = "ok" if code == 0 else "stopped" if was_stopped else "FAILED"
            failed += status == "FAILED"
            timings.append({"name": name, "status": status, "s": round(time.time() - launched, 1)})
            bar.update(code == 0)
            bar.set_postfix(failed=failed)
            bar.write(
                f"[{done}/{total} done, {failed} failed, {time.time() - t0:.0f}s] {name} {status}", file=sys.stdout
            )
            sys.stdout.flush()
    bar.close()
    return timings


def launch(config_path, workdir: Path, args, device, extra_env):
    """Starts `qresnet train` for one run in `workdir` (its output appended to log.txt) on `device`."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE="false", **extra_env)
    # Re-runs of a killed run skip recompilation.
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(workdir.parent / ".jax_cache"))
    if device is not None:
        env["CUDA_VISIBLE_DEVICES"] = device
    cmd = [sys.executable, "-m", "qresnet.cli", "train", "--config", str(config_path), "--workdir", str(workdir), *args]
    with open(workdir / "log.txt", "a") as log:  # The child keeps its own copy of the descriptor.
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
