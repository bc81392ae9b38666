"""`qresnet sweep --backend ray`: a sweep's runs as Ray tasks, spread over a Ray cluster.

Each run is one task that starts `qresnet train` in the run's workdir under the sweep root and
asks for 1/jobs of a GPU (Ray sets its CUDA_VISIBLE_DEVICES; runs sharing a GPU see the same one),
or one CPU on a cluster without GPUs. The root must be on a filesystem every node mounts at the
same path: `check_shared_root` asks every alive node to read a token written there and fails
before anything is launched otherwise.

A task whose training process dies (node lost, out of memory, preempted, killed) raises, and Ray
runs it again, up to `RETRIES` times, on any node: `qresnet train` resumes from the run's last
checkpoint, and its workdir lock keeps a second process off a run still training. A task finds a
run that already has its result.json and returns without training, so a run is trained to
completion once and its result written once. The driver (the `qresnet sweep` process) keeps the
root's lock, the sweep log, the index and the Pareto report exactly as the local backend does.
"""

from __future__ import annotations

import os
import signal
import sys
import time
import uuid
from pathlib import Path

from qresnet import results

RETRIES = 3  # more attempts of a run whose training process died


class RayBackendError(ValueError):
    """A Ray sweep that cannot start; the message names the fix."""


class RunDied(RuntimeError):
    """A run's training process ended with an error; Ray retries the task."""


def _ray():
    try:
        import ray
    except ImportError:
        raise RayBackendError('--backend ray needs Ray: pip install -e ".[ray]" (or pip install "ray>=2.40")') from None
    return ray


def check_options(backend: str, address: str | None, mps: bool) -> None:
    """Raises RayBackendError for a backend that does not exist or options that do not go with it."""
    if backend not in ("local", "ray"):
        raise RayBackendError(f"--backend {backend!r}: choose local or ray")
    if backend == "local" and address:
        raise RayBackendError(f"--address {address} is a Ray cluster's: add --backend ray, or drop --address")
    if backend == "ray" and mps:
        raise RayBackendError(
            "--mps starts an MPS daemon on this host only: on a Ray cluster start one on each node, and drop --mps"
        )


def connect(address: str | None):
    """ray.init(address) unless this process is connected already; returns the ray module."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=address, log_to_driver=False)
    return ray


def join(address: str | None, root: Path) -> None:
    """`connect`, then `check_shared_root`: what a Ray sweep does before it launches anything."""
    connect(address)
    check_shared_root(root)


def _sees(path: str) -> bool:
    return Path(path).is_file()


def check_shared_root(root: Path) -> None:
    """Raises RayBackendError unless every alive Ray node sees `root` (a token file written there)."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    ray = _ray()
    token = root / f".ray_fs_check_{uuid.uuid4().hex}"
    token.write_text("qresnet\n")
    try:
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        sees = ray.remote(num_cpus=0)(_sees)
        refs = [
            sees.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(str(token))
            for n in nodes
        ]
        blind = [n["NodeManagerAddress"] for n, ok in zip(nodes, ray.get(refs)) if not ok]
    finally:
        token.unlink(missing_ok=True)
    if blind:
        raise RayBackendError(
            f"--root {root} is not visible from Ray node(s) {', '.join(blind)}: put the sweep root on a filesystem "
            "every node mounts at the same path (NFS, Lustre, a shared volume) and give that path"
        )


def _train_task(config_path: str, workdir: str, args: list[str], extra_env: dict, launch, interrupted: int) -> dict:
    """Body of one run's Ray task: trains the run (`launch`: the sweep's, starting `qresnet train`)
    unless it is finished; raises RunDied to be retried. `interrupted`: train's exit code when stopped."""
    workdir_path = Path(workdir)
    # What the run saw, and when it ran (wall clock, for the sweep log).
    seen = {"devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "start": time.time()}
    if results.read_result(workdir_path) is not None:
        return {"status": "ok", "trained": False, **seen, "end": time.time()}
    proc = launch(config_path, workdir_path, args, None, extra_env)
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # ray.cancel: the run checkpoints and stops, as under the local backend
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        code = interrupted
    if code in (0, interrupted):
        return {"status": "ok" if code == 0 else "stopped", "trained": True, **seen, "end": time.time()}
    raise RunDied(f"{workdir_path.name}: qresnet train exited with {code} (see {workdir_path / 'log.txt'})")


def run_all(
    config_path,
    root: Path,
    todo,
    slots,
    done,
    total,
    env,
    stop,
    heartbeat=None,
    *,
    jobs,
    launch,
    interrupted,
):
    """Runs `todo` [(name, args)] as Ray tasks (module doc): the local scheduler's `_run_all` with
    Ray in place of this host's `slots`; `jobs` runs share a GPU (0: 3, as locally); returns
    [{name, status, s, devices, start, end}] of the runs that ended."""
    del slots  # Ray places the runs
    ray = _ray()
    gpus = ray.cluster_resources().get("GPU", 0)
    share = {"num_gpus": 1.0 / (jobs or 3), "num_cpus": 0} if gpus else {"num_cpus": 1}
    task = ray.remote(max_retries=RETRIES, retry_exceptions=[RunDied], **share)(_train_task)
    launched = {
        task.remote(str(config_path), str(root / name), list(args), dict(env), launch, interrupted): name
        for name, args in todo
    }
    timings, t0, cancelled = [], time.time(), False
    print(f"sweep: {len(todo)} run(s) submitted to Ray ({gpus:g} GPU(s) in the cluster)", flush=True)
    while launched:
        if stop and not cancelled:
            cancelled = True
            for ref in launched:
                ray.cancel(ref, force=False)
        ready, _ = ray.wait(list(launched), num_returns=1, timeout=0.5)
        if heartbeat is not None:
            heartbeat.beat(timings)
        for ref in ready:
            name = launched.pop(ref)
            try:
                out = ray.get(ref)
            except (
                ray.exceptions.RayTaskError,
                ray.exceptions.TaskCancelledError,
                ray.exceptions.WorkerCrashedError,
            ) as e:
                out = {"status": "stopped" if cancelled else "FAILED", "devices": "", "start": t0, "end": time.time()}
                if not cancelled:
                    print(
                        f"{name}: failed after {RETRIES + 1} attempt(s): {str(e).splitlines()[-1][:300]}",
                        file=sys.stderr,
                    )
            # s: the last attempt's wall time; start/end: wall-clock seconds, for concurrency.
            timing = {"name": name, "status": out["status"], "s": round(out["end"] - out["start"], 1)}
            timings.append(timing | {k: out[k] for k in ("devices", "start", "end")})
            done += out["status"] == "ok"
            print(f"[{done}/{total} done, {time.time() - t0:.0f}s] {name} {out['status']}", flush=True)
    return timings
