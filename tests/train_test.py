"""End to end on the CPU: the smoke config writes a complete workdir and resumes."""

import dataclasses
import functools
import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import settings
from qresnet import checkpoints, config_lib, data, feeds, results, run_spec, steps, train

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "configs/smoke.py"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("smoke") / "run"
    result = train.train_and_evaluate(config_lib.load_config(SMOKE), workdir, quiet=True)
    return workdir, result


def test_smoke_run_writes_a_complete_workdir(smoke_run):
    workdir, result = smoke_run
    assert sorted(p.name for p in workdir.iterdir()) == [
        ".lock",
        "ckpt",
        "config.json",
        "metrics.jsonl",
        "result.json",
        "tb",
    ]
    on_disk = json.loads((workdir / "result.json").read_text())
    for key in (
        "model",
        "dataset",
        "setting",
        "width",
        "epochs",
        "top1",
        "top1_last",
        "train_top1_at_best",
        "cost",
        "images_per_s",
        "wall_s",
        "device",
        "versions",
        "commit",
    ):
        assert key in on_disk, key
    assert on_disk["setting"] == "w4a4_ends8" and on_disk["dataset"] == "synthetic"
    assert 0 <= on_disk["top1"] <= 1 and on_disk["images_per_s"] > 0
    assert on_disk["conv_impl"] == "xla"  # model.conv_impl "auto" off the GPU
    assert on_disk["setup_s"] > 0 and on_disk["first_epoch_s"] > 0
    # epoch 1 calibrates; the evaluation program, then the quantized phase's program compiled in
    # the background meanwhile
    assert list(on_disk["compile_s"]) == ["eval", "quantized"] and min(on_disk["compile_s"].values()) > 0
    assert set(on_disk["cost"]) == {"total", "ratio", "avg_bits"} and on_disk["cost"]["ratio"]["linear"] < 1
    assert 4 < on_disk["cost"]["avg_bits"]["w"] < 8  # w4a4_ends8, MAC-weighted: stem and head at 8
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    config = json.loads((workdir / "config.json").read_text())
    assert config["specs"]["stem"]["w_bits"] == 8 and config["specs"]["head"]["a_bits"] == 8
    assert config["specs"]["stage1/block0/conv2"]["a_bits"] == 4 and config["act_start_step"] == 4


def _tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of the event files in `folder`, read as TensorBoard reads them."""
    import struct

    from tensorboardX.proto import event_pb2

    out: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        raw, i = path.read_bytes(), 0
        while i < len(raw):
            (n,) = struct.unpack("<Q", raw[i : i + 8])
            event = event_pb2.Event.FromString(raw[i + 12 : i + 12 + n])  # length, its CRC, data, data's CRC
            i += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append((event.step, v.simple_value))
    return out


def test_tensorboard_events_hold_every_metric_at_each_epoch(smoke_run):
    workdir, _ = smoke_run
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    scalars = _tensorboard_scalars(workdir / "tb")
    assert set(scalars) == set(rows[0]) - {"epoch", "step"}
    assert [step for step, _ in scalars["eval_top1"]] == [r["step"] for r in rows]
    assert [v for _, v in scalars["eval_top1"]] == pytest.approx([r["eval_top1"] for r in rows])


def test_rerun_of_a_finished_run_returns_its_result(smoke_run):
    workdir, result = smoke_run
    before = (workdir / "result.json").stat().st_mtime_ns
    again = train.train_and_evaluate(config_lib.load_config(SMOKE), workdir, quiet=True)
    assert again["top1"] == result["top1"] and (workdir / "result.json").stat().st_mtime_ns == before


def test_interrupted_run_resumes_from_its_checkpoint(smoke_run, tmp_path):
    """Lose the last epoch (as a kill would): the re-run restores epoch 1 and ends where the
    uninterrupted run ended."""
    workdir, result = smoke_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    (copy / "result.json").unlink()
    shutil.rmtree(copy / "ckpt" / "2")
    lines = (copy / "metrics.jsonl").read_text().splitlines()
    (copy / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:20])  # a half-written line
    resumed = train.train_and_evaluate(config_lib.load_config(SMOKE), copy, quiet=True)
    assert resumed["resumed_from_epoch"] == 1 and result["resumed_from_epoch"] == 0
    for key in ("top1", "top1_last", "train_top1_at_best"):
        assert resumed[key] == pytest.approx(result[key], abs=1e-6), key
    assert len((copy / "metrics.jsonl").read_text().splitlines()) == 2


def test_compiling_the_float_program_first_changes_nothing_trained(smoke_run, tmp_path):
    workdir, result = smoke_run
    config = config_lib.load_config(SMOKE, ["--config.compile_float_first=True"])
    other = train.train_and_evaluate(config, tmp_path / "run", quiet=True)
    assert other["float_first_compile_s"] > 0 and "float_first_compile_s" not in result
    losses = lambda d: [r["train_loss"] for r in map(json.loads, (d / "metrics.jsonl").read_text().splitlines())]  # noqa: E731
    assert losses(tmp_path / "run") == losses(workdir)


def _sigterm_after_first_epoch(monkeypatch):
    """Makes the next run send itself SIGTERM at the end of its first epoch (as a preemption
    would); returns the original `_check_finite`, to put back before the re-run."""
    import os
    import signal

    check = train._check_finite

    def check_and_signal(losses, epoch, run):
        if epoch == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return check(losses, epoch, run)

    monkeypatch.setattr(train, "_check_finite", check_and_signal)
    return check


def test_sigterm_stops_after_the_epoch_with_a_checkpoint_and_resumes(smoke_run, tmp_path, monkeypatch):
    """A preempted run (SIGTERM during epoch 1, no checkpoint due until epoch 5) saves epoch 1,
    stops with a message, and its re-run ends where the uninterrupted run ended."""
    import signal

    _, result = smoke_run
    cfg = config_lib.load_config(SMOKE, ["--config.checkpoint_every_epochs=5"])
    check = _sigterm_after_first_epoch(monkeypatch)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(train.Interrupted, match=r"stopped by SIGTERM after epoch 1 of 2; checkpoint saved"):
        train.train_and_evaluate(cfg, tmp_path / "run", quiet=True)
    assert signal.getsignal(signal.SIGTERM) == before
    assert sorted(p.name for p in (tmp_path / "run" / "ckpt").iterdir()) == ["1"]
    assert not (tmp_path / "run" / "result.json").exists()
    monkeypatch.setattr(train, "_check_finite", check)
    resumed = train.train_and_evaluate(cfg, tmp_path / "run", quiet=True)
    assert resumed["resumed_from_epoch"] == 1
    assert resumed["top1"] == pytest.approx(result["top1"], abs=1e-6)


def test_init_from_starts_from_another_runs_weights(smoke_run, tmp_path):
    """Fine-tuning: a run with init_from starts from the source's final weights and BN statistics;
    what the source lacks (learned LSQ offsets) and the quantizers' state start fresh; a source of
    another width, or a path that is not a run, is refused."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    source, _ = smoke_run
    lsq = settings.SETTINGS["w4a4_ends8_lsq"]
    cfg = config_lib.load_config(
        SMOKE, [f"--config.init_from={source}", f"--config.quant.rules={lsq!r}", "--config.optim.num_epochs=1"]
    )
    run = run_spec.make_run_spec(cfg, cfg.dataset.synthetic_train)
    fresh = steps.create_train_state(run, jax.random.key(1), jnp.ones((run.batch_size, *run.info.image_shape)))
    started = checkpoints.warm_start(fresh, source, run)
    trained = checkpoints.restore_final(run_spec.finished_run_spec(checkpoints.run_config(source)), source)
    leaves = lambda tree: dict(jax.tree_util.tree_leaves_with_path(tree))  # noqa: E731
    theirs, mine, before = leaves(trained.params), leaves(started.params), leaves(fresh.params)
    offsets = [k for k in mine if "act_bound_offset" in jax.tree_util.keystr(k)]
    assert offsets and all(k not in theirs for k in offsets)  # LSQ offsets: only in the new run
    for k, v in mine.items():
        np.testing.assert_array_equal(v, theirs[k] if k in theirs else before[k])
    assert any(not np.array_equal(before[k], theirs[k]) for k in theirs)  # the copy changed the weights
    for a, b in zip(jax.tree.leaves(started.batch_stats), jax.tree.leaves(trained.batch_stats), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(jax.tree.leaves(started.quant_stats), jax.tree.leaves(fresh.quant_stats), strict=True):
        np.testing.assert_array_equal(a, b)
    wide = config_lib.load_config(SMOKE, [f"--config.init_from={source}", "--config.model.width=0.5"])
    with pytest.raises(train.TrainError, match=r"model.width=0.25, this run has 0.5"):
        checkpoints.warm_start(fresh, source, run_spec.make_run_spec(wide, wide.dataset.synthetic_train))
    # The trainer calls it for a fresh run (this fails before the first epoch compiles).
    nowhere = config_lib.load_config(SMOKE, [f"--config.init_from={tmp_path / 'none'}"])
    with pytest.raises(train.TrainError, match="is not a run's workdir"):
        train.train_and_evaluate(nowhere, tmp_path / "nowhere", quiet=True)
    assert not (tmp_path / "nowhere").exists()  # refused before anything is written


def test_distill_loss_named_cases():
    import jax
    import jax.numpy as jnp
    import numpy as np
    import optax

    student = jnp.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    teacher = jnp.array([[1.0, 1.0, -2.0], [0.0, 2.0, 1.0]])
    labels = jnp.array([0, 2])
    ce = optax.softmax_cross_entropy_with_integer_labels(student, labels).mean()
    # weight 0: plain cross-entropy, whatever the teacher says
    assert float(steps.distill_loss(student, teacher, labels, 0.0, 4.0)) == pytest.approx(float(ce))
    # a student that equals its teacher has nothing to learn from it
    assert float(steps.distill_loss(teacher, teacher, labels, 1.0, 2.0)) == pytest.approx(0.0, abs=1e-6)
    # weight 1, T = 2: T^2 * KL(softmax(t/2) || softmax(s/2)), by hand
    t, s = np.asarray(teacher) / 2, np.asarray(student) / 2
    p = np.exp(t) / np.exp(t).sum(-1, keepdims=True)
    q = np.exp(s) / np.exp(s).sum(-1, keepdims=True)
    kl = (p * (np.log(p) - np.log(q))).sum(-1).mean()
    assert float(steps.distill_loss(student, teacher, labels, 1.0, 2.0)) == pytest.approx(4 * kl, rel=1e-5)
    half = steps.distill_loss(student, teacher, labels, 0.5, 2.0)
    assert float(half) == pytest.approx(0.5 * float(ce) + 0.5 * 4 * kl, rel=1e-5)
    # no gradient reaches the teacher's logits
    g = jax.grad(lambda t: steps.distill_loss(student, t, labels, 1.0, 1.0))(teacher)
    np.testing.assert_array_equal(g, np.zeros_like(g))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["--config.distill.weight=0.5"], r"distill.weight=0.5 needs a teacher: .*--config.init_from=RUN"),
        (["--config.distill.weight=1.5", "--config.init_from=x"], r"distill.weight=1.5 is out of range: .*\[0, 1\]"),
        (
            ["--config.distill.temperature=0.0", "--config.init_from=x"],
            r"temperature=0.0 is out of range: .*\(0, inf\)",
        ),
    ],
)
def test_distill_settings_are_checked(overrides, message):
    with pytest.raises((train.TrainError, config_lib.ConfigError), match=message):
        cfg = config_lib.load_config(SMOKE, overrides)
        run_spec.make_run_spec(cfg, cfg.dataset.synthetic_train)


def test_distillation_from_a_float_teacher(smoke_run, tmp_path, monkeypatch):
    """A quantized run learns from a float run's outputs: the teacher changes its gradients, the
    run stops, resumes and trains to the end with the teacher loaded, and a quantized run trained from
    scratch is refused as a teacher. A run started from the (learned-bound) student, as the next stage of
    a progressive fine-tune, learns from the same float teacher and restarts the student's learned bounds."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    float_rules = "[('.*', None, None)]"
    teacher_dir = tmp_path / "float"
    train.train_and_evaluate(
        config_lib.load_config(
            SMOKE, ["--config.setting=bf16", f"--config.quant.rules={float_rules}", "--config.optim.num_epochs=1"]
        ),
        teacher_dir,
        quiet=True,
    )
    lsq = settings.SETTINGS["w4a4_ends8_lsq"]
    distill = ["--config.distill.weight=1.0", "--config.distill.temperature=2.0", f"--config.quant.rules={lsq!r}"]
    cfg = config_lib.load_config(SMOKE, [f"--config.init_from={teacher_dir}", *distill])
    run = run_spec.make_run_spec(cfg, cfg.dataset.synthetic_train)
    assert (run.distill_weight, run.distill_temperature) == (1.0, 2.0)
    with pytest.raises(train.TrainError, match=r"quantized run trained from scratch"):
        checkpoints.load_teacher(smoke_run[0], run)
    from_quantized = [f"--config.init_from={smoke_run[0]}", "--config.distill.weight=1.0"]
    with pytest.raises(train.TrainError, match=r"distillation needs a float teacher"):
        train.train_and_evaluate(config_lib.load_config(SMOKE, from_quantized), tmp_path / "refused", quiet=True)
    assert not (tmp_path / "refused").exists()
    teacher = checkpoints.load_teacher(teacher_dir, run)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(8, *run.info.image_shape)), jnp.float32)
    labels = jnp.arange(8) % 10
    state = checkpoints.warm_start(steps.create_train_state(run, jax.random.key(0), x), teacher_dir, run)
    model = steps.create_model(run)
    plain = dataclasses.replace(run, distill_weight=0.0)
    # act_quant False: the activation bounds are not calibrated yet (as in a run's first epochs)
    g_plain, _ = jax.jit(lambda s: steps.gradients(plain, model, s, x, labels, False))(state)
    with_teacher = state.replace(teacher=teacher)
    g_kd, (_, _, ce) = jax.jit(lambda s: steps.gradients(run, model, s, x, labels, False))(with_teacher)
    assert np.isfinite(float(ce))
    # Every weight's gradient changes (learned input bounds get none while their quantization is off).
    weights = lambda g: [v for k, v in jax.tree_util.tree_leaves_with_path(g) if "bound_offset" not in str(k)]  # noqa: E731
    differ = [not np.allclose(a, b) for a, b in zip(weights(g_plain), weights(g_kd), strict=True)]
    assert differ and all(differ)
    with pytest.raises(train.TrainError, match="carries no teacher"):
        steps.gradients(run, model, state, x, labels, False)
    # Stopped after epoch 1 and resumed: the teacher, not checkpointed, is loaded again.
    check = _sigterm_after_first_epoch(monkeypatch)
    with pytest.raises(train.Interrupted, match="after epoch 1 of 2"):
        train.train_and_evaluate(cfg, tmp_path / "student", quiet=True)
    monkeypatch.setattr(train, "_check_finite", check)
    result = train.train_and_evaluate(cfg, tmp_path / "student", quiet=True)
    assert result["resumed_from_epoch"] == 1 and result["epochs"] == 2 and 0 <= result["top1"] <= 1
    recorded = json.loads((tmp_path / "student" / "config.json").read_text())["config"]
    assert recorded["distill"] == {"weight": 1.0, "temperature": 2.0}
    assert result["init_from"] == str(teacher_dir) and result["distill_weight"] == 1.0
    # The next stage, from the student: the same teacher; the student's weights, not its learned offsets.
    student = tmp_path / "student"
    next_stage = config_lib.load_config(SMOKE, [f"--config.init_from={student}", *distill])
    run2 = run_spec.make_run_spec(next_stage, next_stage.dataset.synthetic_train)
    assert checkpoints.teacher_source(student, run2) == teacher_dir
    trained = checkpoints.restore_final(run, student).params
    fresh = steps.create_train_state(run2, jax.random.key(1), x)
    started = checkpoints.warm_start(fresh, student, run2).params
    flat = lambda t: {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(t)}  # noqa: E731
    offsets = [k for k in flat(trained) if k.endswith("_bound_offset']")]
    assert offsets and any(np.any(flat(trained)[k] != 0) for k in offsets)
    for k, v in flat(started).items():
        np.testing.assert_array_equal(v, flat(fresh.params)[k] if k in offsets else flat(trained)[k])


def test_workdir_of_another_config_is_refused(smoke_run):
    workdir, _ = smoke_run
    other = config_lib.load_config(SMOKE, ["--config.seed=1"])
    with pytest.raises(train.TrainError, match="different config.*seed.*another --workdir"):
        train.train_and_evaluate(other, workdir, quiet=True)


def test_non_finite_loss_stops_the_run_naming_the_step(tmp_path):
    cfg = config_lib.load_config(SMOKE, ["--config.optim.base_lr=1e30", "--config.optim.num_epochs=1"])
    with pytest.raises(train.TrainError, match=r"loss became \w+ at step \d+"):
        train.train_and_evaluate(cfg, tmp_path / "nan", quiet=True)
    assert not (tmp_path / "nan" / "result.json").exists()


def test_smoothing_and_report():
    assert results.smooth([0.0, 1.0, 0.0], 3) == pytest.approx([1 / 3, 0.5, 1 / 3])
    history = [
        {"epoch": e, "step": 10 * e, "eval_top1": acc, "train_top1": acc + 0.1}
        for e, acc in enumerate([0.9, 0.5, 0.6, 0.7, 0.65], start=1)
    ]
    rep = results.report(history, act_start_step=20, window=1)
    assert rep["top1"] == 0.7 and rep["best_epoch"] == 4 and rep["train_top1_at_best"] == pytest.approx(0.8)
    assert rep["top1_last"] == 0.65  # epoch 1's 0.9 is before activation quantization started


def test_two_devices_shard_the_batch_and_agree_with_one(smoke_run, tmp_path):
    """Data parallel over 2 (CPU) devices: statistics are over the global batch, so the run
    matches the single-device one."""
    import os
    import subprocess
    import sys

    workdir = tmp_path / "run2"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    cmd = [sys.executable, "-m", "qresnet.cli", "train", "--config", str(SMOKE), "--workdir", str(workdir)]
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, capture_output=True)
    result = json.loads((workdir / "result.json").read_text())
    assert result["device"].startswith("2x")
    for key in ("top1", "top1_last", "train_top1_at_best"):
        assert result[key] == pytest.approx(smoke_run[1][key], abs=0.07), key  # within 2 of 32 examples
    losses = [
        [json.loads(line)["train_loss"] for line in (w / "metrics.jsonl").read_text().splitlines()]
        for w in (workdir, smoke_run[0])
    ]
    assert losses[0] == pytest.approx(losses[1], rel=1e-3)


def test_act_quant_phase_splits_at_the_start_step():
    config = config_lib.load_config(SMOKE)  # 4 steps an epoch, activation quantization from step 4
    run = run_spec.make_run_spec(config, 64)
    assert [steps.act_quant_phase(run, e * 4, 4) for e in range(2)] == [False, True]
    assert steps.act_quant_phase(run, 2, 4) is None  # the start falls inside: traced switch
    assert steps.act_quant_phase(run, 3, 1) is False and steps.act_quant_phase(run, 4, 1) is True
    config.quant.rules = [(".*", None, None)]
    assert steps.act_quant_phase(run_spec.make_run_spec(config, 64), 0, 4) is True  # float: one program


def test_phase_programs_compile_in_the_order_given():
    """Later phases compile one after another on one thread, in the order `prepare` is given
    (the trainer's: the order the epochs need them), whatever their hash order."""
    import jax

    order = []

    def make(phase):
        order.append(phase)
        return jax.jit(lambda x: x + 1)

    programs = feeds.PhasePrograms(make)
    programs.prepare([True, None, False], (jax.numpy.zeros(3),))
    assert [programs.get(p)(jax.numpy.zeros(3)).tolist() for p in (False, None, True)] == [[1.0] * 3] * 3
    assert order == [True, None, False] and set(programs.compile_s) == {"quantized", "switch", "calibrate"}


def test_a_run_compiles_its_later_phases_in_the_order_its_epochs_need_them(tmp_path):
    """Activation quantization starting inside epoch 2 (step 6 of 4-step epochs): epoch 1
    calibrates, epoch 2 runs the traced switch, epoch 3 is quantized; the switch program, needed
    first, compiles first (in set order the quantized one came first and epoch 2 waited for both)."""
    overrides = ["--config.optim.num_epochs=3", "--config.quant.act_start_step=6", "--config.checkpoint_every_epochs=3"]
    config = config_lib.load_config(SMOKE, overrides)
    result = train.train_and_evaluate(config, tmp_path / "run", quiet=True)
    assert list(result["compile_s"]) == ["eval", "switch", "quantized"]  # evaluation first: epoch 1 ends with it


def test_phase_programs_train_as_the_traced_switch_does():
    """Compiling each phase with act_quant fixed changes the program, not the math: two epochs
    around the start step give the same state as the one program with the traced switch."""
    import jax
    import numpy as np

    config = config_lib.load_config(SMOKE)
    run = run_spec.make_run_spec(config, 64)
    mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ("data",))
    rng = np.random.default_rng(0)
    images = jax.numpy.asarray(rng.integers(0, 256, (64, *run.info.image_shape), dtype=np.uint8))
    labels = jax.numpy.asarray(rng.integers(0, 10, 64, dtype=np.int32))
    sample = data.normalize(images[:4], run.info)
    key = jax.random.key(0)
    finals = []
    for phases in ([None, None], [False, True]):
        state = steps.create_train_state(run, key, sample)
        for epoch, phase in enumerate(phases):
            idx = jax.numpy.asarray(feeds.epoch_indices(0, epoch, 64, run))
            fn = jax.jit(lambda s, i, k, p=phase: steps.train_epoch(run, mesh, s, images, labels, i, k, act_quant=p))
            state, (losses, _) = fn(state, idx, jax.random.fold_in(key, epoch))
        finals.append((state, losses))
    (a, la), (b, lb) = finals
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    for x, y in zip(jax.tree.leaves(a.quant_stats), jax.tree.leaves(b.quant_stats)):
        np.testing.assert_allclose(x, y, rtol=1e-6)
    assert any(float(np.max(x)) > 0 for x in jax.tree.leaves(b.quant_stats))  # the bounds calibrated


class _Device:
    def __init__(self, platform, compute_capability=None):
        self.platform, self.compute_capability = platform, compute_capability


@pytest.mark.parametrize(
    "devices, impl",
    [
        ([_Device("gpu", "9.0")], "pallas"),
        ([_Device("gpu", "8.0")], "pallas"),
        ([_Device("gpu", "7.5")], "xla"),  # Turing: no bf16 dots for Triton
        ([_Device("gpu", "gfx90a")], "xla"),  # ROCm
        ([_Device("gpu", "9.0"), _Device("gpu", "9.0")], "xla"),  # a sharded batch
        ([_Device("cpu")], "xla"),
    ],
    ids=["hopper", "ampere", "turing", "rocm", "two_gpus", "cpu"],
)
def test_conv_impl_auto_means_pallas_only_on_one_recent_cuda_gpu(monkeypatch, devices, impl):
    monkeypatch.setattr(jax, "devices", lambda: devices)
    assert run_spec.conv_backend("auto").impl == impl


def test_conv_impl_values():
    assert run_spec.conv_backend("auto").impl == "xla"  # this CPU
    assert (run_spec.conv_backend("xla").impl, run_spec.conv_backend("pallas").impl) == ("xla", "pallas")
    cfg = config_lib.load_config(SMOKE, ["--config.model.conv_impl=cudnn"])
    with pytest.raises(train.TrainError, match="model.conv_impl='cudnn' must be auto, xla or pallas"):
        run_spec.make_run_spec(cfg, cfg.dataset.synthetic_train)


def test_triton_convs_train_as_xlas_do(tmp_path):
    """model.conv_impl=pallas through the whole trainer (epoch scans, the background compilations,
    evaluation, checkpoints; Pallas's interpreter here): the same losses as XLA's convs, epoch by
    epoch, to bf16 summation order."""
    losses = {}
    for impl in ("pallas", "xla"):
        # The smallest ResNet: Pallas's interpreter is slow, and every block still has Pallas's convs.
        overrides = ["--config.model.name=resnet8", "--config.model.dtype=bfloat16", f"--config.model.conv_impl={impl}"]
        config = config_lib.load_config(SMOKE, overrides)
        result = train.train_and_evaluate(config, tmp_path / impl, quiet=True)
        assert result["conv_impl"] == impl
        rows = [json.loads(line) for line in (tmp_path / impl / "metrics.jsonl").read_text().splitlines()]
        losses[impl] = [(r["train_loss"], r["eval_loss"]) for r in rows]
    assert len(losses["pallas"]) == len(losses["xla"]) == 2
    for mine, theirs in zip(losses["pallas"], losses["xla"]):
        assert mine == pytest.approx(theirs, rel=1e-2)


def test_accumulated_micro_batches_give_the_update_of_the_whole_batch():
    """With replica statistics, 4 micro-batches of 4 make the step one batch of 16 makes."""
    overrides = ["--config.model.replica_size=4", "--config.optim.num_epochs=1", "--config.quant.act_start_step=0"]
    overrides.append("--config.model.name=resnet8")  # the smallest ResNet: four compilations
    base = config_lib.load_config(SMOKE, overrides)
    one = run_spec.make_run_spec(base, 64)
    four = dataclasses.replace(one, grad_accum_steps=4)
    images = jax.random.randint(jax.random.key(0), (16, 16, 16, 3), 0, 256, dtype=jnp.int32).astype(jnp.uint8)
    labels = jax.random.randint(jax.random.key(1), (16,), 0, 10)
    sample = data.normalize(images[:4], one.info)
    state = steps.create_train_state(one, jax.random.key(2), sample)
    for act_quant in (False, True):  # bounds calibrating (EMA of the replicas' maxima), then quantized
        step_a, step_b = (jax.jit(functools.partial(steps.train_step, r, act_quant=act_quant)) for r in (one, four))
        a, (loss_a, correct_a) = step_a(state, images, labels, jax.random.key(3))
        b, (loss_b, correct_b) = step_b(state, images, labels, jax.random.key(3))
        assert float(loss_a) == pytest.approx(float(loss_b), rel=1e-5) and int(correct_a) == int(correct_b)
        for x, y in zip(jax.tree.leaves(a.variables()), jax.tree.leaves(b.variables())):
            np.testing.assert_allclose(x, y, rtol=2e-5, atol=2e-6)
    cfg = config_lib.load_config(SMOKE, ["--config.model.replica_size=3"])
    with pytest.raises(train.TrainError, match="replica_size=3"):
        run_spec.make_run_spec(cfg, 64)


@pytest.mark.parametrize("batch", [256, 1024, 8192])
def test_activation_quantization_starts_on_the_papers_epoch_at_any_batch(batch):
    config = config_lib.load_config(
        ROOT / "configs/imagenet/resnet50_w4a4_ends8.py", [f"--config.optim.batch_size={batch}"]
    )
    run = run_spec.make_run_spec(config, data.dataset_info("imagenet2012").num_train)
    assert run.act_start_step / run.steps_per_epoch == pytest.approx(48.0)
    assert run.replica_size == 64
