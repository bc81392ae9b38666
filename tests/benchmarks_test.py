"""The other benchmarks (profiles, several models, records, ImageNet projection, ONNX on the CPU, sweep
backends, the mixed-precision experiment's driver), on tiny models on the CPU."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import train_step


def test_profile_sums_device_time_per_instruction(tmp_path):
    from benchmarks import profile_step

    hlo = (
        "  %fusion.3 = f32[2]{0} fusion(f32[2]{0} %p), kind=kLoop, calls=%fused\n"
        '  ROOT %cc = (f32[2]{0}) custom-call(%fusion.3), custom_call_target="__cudnn$convForward"\n'
        "  %add.1 = f32[2]{0} add(%a, %b)\n"
    )
    assert profile_step.instruction_kinds(hlo) == {
        "fusion.3": "fusion:kLoop",
        "cc": "custom-call:__cudnn$convForward",
        "add.1": "add",
    }
    rc = profile_step.main(
        [
            "--case",
            "resnet8:16:8:float32",
            "--rows",
            "qresnet:w8a8:qresnet",
            "--steps",
            "2",
            "--warmup",
            "1",
            "--out",
            str(tmp_path),
        ]
    )
    assert rc == 0
    (row,) = json.loads((tmp_path / "profile.json").read_text())
    assert row["device_ms"] > 0 and row["ops_ms"] and (tmp_path / f"{row['row']}.hlo.txt.gz").exists()
    assert sum(v for k, v in row["by_kind_ms"].items() if k.startswith("convolution")) > 0


def test_profile_of_the_integer_forward_passes(tmp_path, capsys):
    from benchmarks import profile_step

    args = ["--inference", "resnet20:32:4", "--steps", "2", "--warmup", "1", "--out", str(tmp_path)]
    assert profile_step.main([*args, "--rows", "bf16,int8"]) == 0
    rows = json.loads((tmp_path / "profile.json").read_text())
    assert [r["row"] for r in rows] == ["resnet20_32_4_bf16_forward", "resnet20_32_4_int8_forward"]
    assert all(r["device_ms"] > 0 and (tmp_path / f"{r['row']}.hlo.txt.gz").exists() for r in rows)
    # The integer program multiplies int8 codes: its HLO has s8 operands, the bf16 one none.
    import gzip

    texts = []
    for r in rows:
        with gzip.open(tmp_path / f"{r['row']}.hlo.txt.gz", "rt") as f:
            texts.append(f.read())
    assert "s8[" not in texts[0] and "s8[" in texts[1]
    assert profile_step.main([*args, "--rows", "int4"]) == 2
    assert "--rows ['int4'] with --inference" in capsys.readouterr().err


def test_vmapped_models_train_each_as_alone():
    """The vmapped multi-model epoch gives every model the state it gets trained alone (quantized: the
    same losses, and a rare weight code may round the other way)."""

    from benchmarks import multi_model

    case = train_step.Case("resnet8", 8, 2, "float32")
    for setting in ("w4a4_ends8",):
        run, states, images, labels, idx, keys = multi_model._setup(case, setting, 2, 2)
        epoch = multi_model._epoch_fn(run)
        vmapped = jax.jit(jax.vmap(epoch, in_axes=(0, None, None, 0, 0)))
        together, (losses, _) = vmapped(states, images, labels, idx, keys)
        for m in range(2):
            alone, (loss_m, _) = jax.jit(epoch)(
                jax.tree.map(lambda a, m=m: a[m], states), images, labels, idx[m], keys[m]
            )
            np.testing.assert_allclose(losses[m], loss_m, rtol=1e-5)
            close = np.isclose(together.params["stem"]["kernel"][m], alone.params["stem"]["kernel"], atol=1e-5)
            assert close.all() if setting == "float" else close.mean() > 0.99, setting
        assert not np.allclose(losses[0], losses[1])  # different seeds, different models


def test_multi_model_benchmark_times_vmap_and_processes(tmp_path, capsys):
    from benchmarks import multi_model

    out = tmp_path / "mm.jsonl"
    args = ["--case", "resnet8:8:2:float32:0.5", "--models", "2", "--steps", "1", "--calls", "1"]
    assert multi_model.main([*args, "--modes", "vmap,sequential", "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["mode"] for r in rows] == ["vmap", "sequential"] and all(r["images_per_s"] > 0 for r in rows)
    assert all(r["width"] == 0.5 for r in rows)
    assert multi_model.main([*args, "--modes", "threads"]) == 2
    assert "unknown modes ['threads']" in capsys.readouterr().err


def test_record_appends_so_a_second_run_keeps_the_first(tmp_path, capsys):
    from benchmarks import record

    out = tmp_path / "rows.jsonl"
    first, second = [], []
    record(first, {"run": 1}, out)
    record(second, {"run": 2}, out)  # a later invocation into the same file
    assert [json.loads(line)["run"] for line in out.read_text().splitlines()] == [1, 2]
    assert second == [{"run": 2}] and '{"run": 2}' in capsys.readouterr().out


def test_warm_up_calls_until_a_call_compiles_nothing():
    """The trainer's epoch program compiles twice when fed a state made outside its mesh (its
    output carries the mesh's sharding); timing from its second call timed a compilation."""
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    import benchmarks

    mesh = jax.sharding.Mesh(jax.devices()[:1], ("data",))
    for fn, calls in (
        (jax.jit(lambda x: jax.lax.with_sharding_constraint(x + 1, NamedSharding(mesh, P()))), 3),
        (jax.jit(lambda x: x + 1), 2),
    ):
        box = [jnp.ones(3)]

        def call(fn=fn, box=box):
            box[0] = fn(box[0])

        assert benchmarks.warm_up(fn, call) == calls  # the last of them compiled nothing
        programs = benchmarks.compiled_count(fn)
        call()
        benchmarks.check_compiled(fn, programs, "a timed call")
        fn(jnp.ones(4))  # a new shape compiles: the check must see it
        with pytest.raises(RuntimeError, match="a timed call included a compilation"):
            benchmarks.check_compiled(fn, programs, "a timed call")


_XSPACE = """
planes {
  id: 1
  name: "/device:GPU:0"
  lines {
    id: 1 name: "Stream #13(Compute)" timestamp_ns: 1000
    events { metadata_id: 1 offset_ps: 0 duration_ps: 4000000 stats { metadata_id: 1 str_value: "fusion.1" } }
    events { metadata_id: 1 offset_ps: 10000000 duration_ps: 2000000 stats { metadata_id: 1 str_value: "fusion.2" } }
  }
  lines {
    id: 2 name: "Stream #20" timestamp_ns: 1000
    events { metadata_id: 2 offset_ps: 3000000 duration_ps: 3000000 }
  }
  lines {
    id: 3 name: "Launch Stats" timestamp_ns: 1000
    events { metadata_id: 2 offset_ps: 0 duration_ps: 99000000 }
  }
  event_metadata { key: 1 value { id: 1 name: "xla_kernel" } }
  event_metadata { key: 2 value { id: 2 name: "torch_kernel" } }
  stat_metadata { key: 1 value { id: 1 name: "hlo_op" } }
}
"""


def test_stream_summary_splits_xla_and_other_kernels_and_counts_overlap_once(tmp_path):
    """Kernels of 4 and 2 us from XLA (hlo_op) on one stream, one of 3 us from another library on
    another stream overlapping the first by 1 us; the non-stream line is not counted."""
    from jax.profiler import ProfileData

    from benchmarks import profile_step

    path = tmp_path / "gpu.xplane.pb"
    path.write_bytes(ProfileData.text_proto_to_serialized_xspace(_XSPACE))
    got = profile_step.stream_summary(str(path))
    assert got == {"gpu": True, "xla_kernel_ns": 6000.0, "other_kernel_ns": 3000.0, "busy_ns": 8000.0}
    path.write_bytes(ProfileData.text_proto_to_serialized_xspace(_XSPACE.replace("/device:GPU:0", "/host:CPU")))
    assert profile_step.stream_summary(str(path)) == {"gpu": False}


def test_thread_sampler_finds_a_blocked_thread_on_its_line():
    """A thread waiting inside our code shows up under its pool's name, on the line that waits."""
    import threading
    import time

    from benchmarks.thread_sampler import ThreadSampler

    release = threading.Event()
    waiter = threading.Thread(target=lambda: release.wait(5), name="decode_7")
    waiter.start()
    try:
        with ThreadSampler(interval=0.002, ours=("tests",)) as sampler:
            time.sleep(0.2)
    finally:
        release.set()
        waiter.join()
    got = sampler.summary(top=1)["decode"]
    assert got["samples"] > 10
    ((where, share),) = got["top"]
    assert where.startswith("threading.py") and "benchmarks_test.py" in where and share > 0.9


def test_imagenet_projection_scales_with_speed_and_the_sweeps_macs(capsys):
    from benchmarks import imagenet_dry_run

    a, b = imagenet_dry_run.projection(6000.0), imagenet_dry_run.projection(3000.0)
    assert b["paper_run_gpu_hours"] == pytest.approx(2 * a["paper_run_gpu_hours"], rel=0.01)
    hours = 250 * 1_281_167 / 6000 / 3600
    assert a["paper_run_gpu_hours"] == pytest.approx(hours, abs=0.05)
    assert a["paper_run_hours_on_8_gpus"] == pytest.approx(hours / 8, abs=0.01)
    # 36 runs: 4 settings at 9 widths, the wider ones costing more than width 1, the narrower less.
    assert 36 * hours * 0.5 < a["sweep_gpu_hours"] < 36 * hours * 4
    assert imagenet_dry_run.main(["--project", "6000"]) == 0
    assert json.loads(capsys.readouterr().out)["images_per_s"] == 6000
    with pytest.raises(SystemExit):
        imagenet_dry_run.main(["--root", "x", "--act-start-epoch", "5", "--epochs", "4"])


def test_onnx_cpu_benchmark_times_the_qdq_and_float32_models(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from benchmarks import onnx_cpu

    out = tmp_path / "onnx.jsonl"
    assert (
        onnx_cpu.main(["--case", "resnet8:16:4", "--setting", "w8a8_deploy", "--rounds", "1", "--out", str(out)]) == 0
    )
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert row["model"] == "resnet8" and row["setting"] == "w8a8_deploy" and row["weights"] == "random"
    for key in ("qdq", "qdq_integer_kernels", "float32"):
        assert row[f"{key}_images_per_s"] > 0
    assert row["qdq_vs_float32"] == pytest.approx(row["qdq_images_per_s"] / row["float32_images_per_s"])
    assert {"device", "date", "commit", "cpu", "threads", "onnx_runtime"} <= set(row)


def test_sweep_backends_benchmark_reports_both_backends_side_by_side(tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from benchmarks import sweep_backends
    from qresnet import sweep

    calls = []
    monkeypatch.setattr(sweep, "run_sweep", lambda config, root, backend="local": calls.append(backend) or 0)
    out = tmp_path / "b.jsonl"
    assert sweep_backends.main(["--repeats", "2", "--out", str(out)]) == 0
    assert calls == ["local", "ray", "local", "ray"]  # alternated
    (row,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(row["local_s"]) == len(row["ray_s"]) == 2 and row["ray_vs_local"] > 0 and row["runs"] == 2


def test_mixed_precision_budgets_are_the_uniform_settings_costs(tmp_path):
    """The experiment's 4 budgets at a width: uniform w2a2_ends8, w3a3_ends8, w4a4_ends8 and the w3/w4 midpoint."""
    from benchmarks import mixed_precision
    from configs import settings
    from qresnet import config_lib, run_spec

    cfg = config_lib.load_config("configs/cifar10/sweep_mixed_float.py", ["--config.model.width=0.5"])
    sens = tmp_path / "s.json"
    sens.write_text(json.dumps({"config": config_lib.to_json(cfg)}))
    labels = mixed_precision.budgets(sens, "memory").split(",")
    assert labels[0::3] == ["w2a2_ends8", "w4a4_ends8"] and labels[1] == "w3a3_ends8"

    def cost(s):
        cfg.quant.rules = settings.SETTINGS[s]
        return run_spec.config_cost(cfg)["ratio"]["memory"]

    assert float(labels[2]) == pytest.approx((cost("w3a3_ends8") + cost("w4a4_ends8")) / 2, rel=1e-4)


def test_mixed_precision_trains_the_first_runs_of_every_seed_before_the_rest(tmp_path, monkeypatch):
    """Floats, then (search files already in configs/cifar10/mixed/) each seed's --first runs, then each
    seed's whole sweep (its finished runs skipped), then one Pareto report over the seeds."""
    from benchmarks import mixed_precision

    assert any(mixed_precision.MIXED.glob("*.py"))  # the searches are committed, so none is recomputed
    calls = []
    monkeypatch.setattr(mixed_precision, "qresnet", lambda *args: calls.append(args))
    assert mixed_precision.main(["--root", str(tmp_path), "--seeds", "0,1", "--first", "width1$", "--jobs", "3"]) == 0
    roots = [(c[4], c[c.index("--only") + 1] if "--only" in c else None) for c in calls[1:-1]]
    assert [Path(r).name for r, _ in roots] == ["mixed_seed0", "mixed_seed1"] * 2
    assert [only for _, only in roots] == ["width1$", "width1$", None, None]
    assert calls[0][:2] == ("sweep", "--config") and calls[0][-2:] == ("--jobs", "3")
    assert calls[-1][0] == "pareto" and calls[-1].count("--root") == 2
