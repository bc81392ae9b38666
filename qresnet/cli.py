"""`qresnet` command line: parses arguments and calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

USAGE = """qresnet <command> [options]

commands:
  cost    per-layer MACs, weights and costs of a config   qresnet cost --config FILE [--format table|json]
  train   train one config into a workdir (resumes)       qresnet train --config FILE --workdir DIR
  sweep   train every run of a config's get_sweep()       qresnet sweep --config FILE --root DIR [--backend ray]
  pareto  frontier, figures and report from results       qresnet pareto (--root DIR | --points CSV) --out DIR
  export  a finished run as integer weights and scales    qresnet export --workdir DIR --out FILE [--format onnx]
  eval    integer inference of an export on its test set  qresnet eval (--export FILE | --onnx FILE) [--compare WORKDIR]
  runs    one CSV row per finished run under a folder      qresnet runs --root DIR --out runs.csv
  sensitivity  per-layer damage of quantizing each layer    qresnet sensitivity --workdir DIR --out S.json
  search  per-layer bits under cost budgets -> a sweep    qresnet search --sensitivity S.json --budgets B,.. --out F.py

Any command that takes --config also takes --config.key=value overrides.
"""


def _parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"qresnet {command}")
    if command in ("cost", "train", "sweep"):
        p.add_argument("--config", required=True, help="a configs/*.py file")
    if command == "cost":
        p.add_argument("--format", choices=("table", "json"), default="table")
    if command == "train":
        p.add_argument("--workdir", required=True)
        p.add_argument(
            "--coordinator",
            help="HOST:PORT of process 0 of a multi-process job (default $QRESNET_COORDINATOR; SLURM and Open MPI "
            "jobs are detected without it)",
        )
        p.add_argument("--num-processes", type=int, help="processes in the job (with --coordinator)")
        p.add_argument("--process-id", type=int, help="this process's index, 0..N-1 (with --coordinator)")
    if command == "sweep":
        p.add_argument("--root", required=True, help="folder that holds one workdir per run")
        p.add_argument("--dry-run", action="store_true", help="list the runs and their costs, train nothing")
        p.add_argument("--jobs", type=int, default=0, help="concurrent runs per device (0 = automatic)")
        p.add_argument("--mps", action="store_true", help="share each GPU through a CUDA MPS daemon")
        p.add_argument("--only", metavar="REGEX", help="run only the runs whose name matches REGEX")
        p.add_argument(
            "--backend",
            choices=("local", "ray"),
            default="local",
            help="local: this host's GPUs; ray: one Ray task per run on a Ray cluster (--jobs N: 1/N GPU a run; "
            "the root must be on a filesystem every node mounts)",
        )
        p.add_argument("--address", help="--backend ray: the cluster to join (default: $RAY_ADDRESS, else a local one)")
        p.add_argument(
            "--command-buffers",
            action="store_true",
            help="run each training epoch as CUDA graphs (XLA command buffers, loops included)",
        )
    if command == "export":
        p.add_argument("--workdir", required=True, help="a finished qresnet train workdir")
        p.add_argument("--out", required=True, help="the export file to write")
        p.add_argument(
            "--format",
            choices=("qrx", "onnx"),
            help="qrx: qresnet's integer format (qresnet eval --export); onnx: QDQ ONNX for ONNX Runtime and "
            "TensorRT (qresnet eval --onnx). Default: onnx if --out ends in .onnx, else qrx",
        )
        p.add_argument(
            "--int8-weights",
            action="store_true",
            help="onnx: store kernels of 4 bits or fewer as int8 codes instead of INT4 (for runtimes without INT4)",
        )
        p.add_argument(
            "--integer-kernels",
            action="store_true",
            help="onnx: let runtimes run the convs that allow it on integer kernels (faster; their int32 bias "
            "rounding moves some codes: docs/deployment.md)",
        )
    if command == "eval":
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument("--export", help="a .qrx file written by qresnet export: run with qresnet's integer layers")
        src.add_argument("--onnx", help="an .onnx file written by qresnet export --format onnx: run in ONNX Runtime")
        p.add_argument("--compare", help="the run's workdir: also report agreement with its fake-quant model")
        p.add_argument(
            "--dtype",
            default="float32",
            choices=("float32", "bfloat16"),
            help="dtype of the integer model between its integer products (BN, residuals); bfloat16 is faster",
        )
        p.add_argument(
            "--rounding",
            default="auto",
            choices=("auto", "cudnn", "explicit"),
            help="BN-folded exports: round each conv's int8 output in cuDNN's fused conv (auto on GPUs: fast) or "
            "in the graph (explicit: the fake-quant model's float order, exact for every setting)",
        )
        p.add_argument(
            "--data-dir", default="", help="where the dataset's files are (the TFDS data dir for imagenet2012)"
        )
        p.add_argument(
            "--as-written",
            action="store_true",
            help="--onnx: run the graph as written, without ONNX Runtime's optimizations (no integer kernels, "
            "no int32 bias rounding): the export's own arithmetic",
        )
    if command == "sensitivity":
        p.add_argument("--workdir", required=True, help="a finished run (usually float) of an in-memory dataset")
        p.add_argument("--bits", default="2,3,4,8", help="candidate bit widths, comma-separated (1-8)")
        p.add_argument("--batches", type=int, default=4, help="training batches the sensitivities average over")
        p.add_argument("--batch-size", type=int, default=256)
        p.add_argument("--probes", type=int, default=4, help="Hutchinson probes per batch")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument(
            "--quantizer",
            choices=("lsq", "lsq_full", "max_abs"),
            default="lsq",
            help="the quantizer the searched runs train with: learned step sizes (lsq; lsq_full: on the full "
            "kernel grid, started at the paper's bounds from 3 bits) or the paper's max-abs bounds",
        )
        p.add_argument(
            "--measure-bits",
            default="",
            help="also measure each layer's test top-1 drop with its weights alone at these widths, and the "
            "Spearman correlation with the predicted damage (e.g. 2)",
        )
        p.add_argument("--out", required=True, help="the JSON file to write")
    if command == "search":
        p.add_argument("--sensitivity", required=True, help="a file written by qresnet sensitivity")
        p.add_argument("--cost", choices=("linear", "quadratic", "memory"), default="quadratic")
        p.add_argument(
            "--budgets",
            required=True,
            help="cost ratios to the bf16 reference, or setting names (that setting's cost for this model), "
            "comma-separated: 0.02,w3a3_ends8",
        )
        p.add_argument("--bits", help="candidate bit widths (default: the sensitivity file's)")
        p.add_argument(
            "--random",
            type=int,
            default=0,
            help="instead: N allocations a budget that spend it as the search does but by random per-layer "
            "sensitivities (the baseline that says whether the sensitivities matter)",
        )
        p.add_argument("--seed", type=int, default=0, help="--random's seed")
        p.add_argument("--out", required=True, help="the sweep config (.py) to write")
    if command == "runs":
        p.add_argument("--root", required=True, help="a folder of runs (a sweep root, or any folder of workdirs)")
        p.add_argument("--out", required=True, help="the CSV to write; rows of other groups already in it are kept")
        p.add_argument("--group", default="", help="the group column of these rows (default: the root's folder name)")
    if command == "pareto":
        src = p.add_mutually_exclusive_group(required=True)
        src.add_argument(
            "--root",
            action="append",
            help="a sweep root (reads every result.json under it); repeat it for replicates of one sweep "
            "(each run's mean over the roots)",
        )
        src.add_argument("--points", help="CSV with columns name,setting,cost,accuracy[,train_accuracy]")
        p.add_argument("--cost", choices=("linear", "quadratic", "memory"), default="linear")
        p.add_argument("--out", required=True)
    return p


def _split(argv):
    args, overrides = [], []
    for a in argv:
        (overrides if a.startswith("--config.") else args).append(a)
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "bench-int":
        print("qresnet: bench-int is now `python -m benchmarks.inference` (same options)", file=sys.stderr)
        return 2
    if command not in ("cost", "train", "sweep", "pareto", "export", "eval", "runs", "sensitivity", "search"):
        print(f"qresnet: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    args, overrides = _split(rest)
    ns = _parser(command).parse_args(args)
    from qresnet import config_lib, data, imagenet_input, locks, results
    from qresnet.quant import specs

    # Every error a user can cause, and the OS's (a path that is a file, read-only or missing): a message
    # naming the value and the fix, exit code 1, never a traceback.
    errors = (config_lib.ConfigError, specs.SpecError, data.DataError, results.RecordError, ValueError)
    errors += (imagenet_input.InputError, locks.LockError, OSError)
    try:
        if command == "cost":
            return _cost(ns, overrides)
        if command == "train":
            from qresnet import distributed

            errors += (distributed.DistributedError,)
            joined = distributed.initialize(ns.coordinator, ns.num_processes, ns.process_id)
            if joined:
                print(f"qresnet train: {joined}", file=sys.stderr, flush=True)
            from qresnet import train

            errors += (train.TrainError,)
            try:
                result = train.train_and_evaluate(config_lib.load_config(ns.config, overrides), ns.workdir)
            except train.Interrupted as e:
                from qresnet.sweep import INTERRUPTED

                print(f"qresnet train: {e}", file=sys.stderr)
                return INTERRUPTED
            print(json.dumps({k: result[k] for k in ("top1", "top1_last", "train_top1_at_best", "images_per_s")}))
            return 0
        if command == "sweep":
            from qresnet import sweep

            errors += (sweep.SweepError,)
            return sweep.run_sweep(
                ns.config,
                ns.root,
                overrides,
                dry_run=ns.dry_run,
                jobs=ns.jobs,
                mps=ns.mps,
                command_buffers=ns.command_buffers,
                only=ns.only,
                backend=ns.backend,
                address=ns.address,
            )
        if command == "runs":
            from qresnet import index

            path, n = index.write_runs_table(ns.root, ns.out, group=ns.group)
            print(f"wrote {path}: {n} run(s) from {ns.root}")
            return 0
        if command in ("export", "eval"):
            from qresnet import export, onnx_export, run_spec

            errors += (export.ExportError, onnx_export.OnnxError, run_spec.TrainError)
            return _export(ns) if command == "export" else _eval(ns)
        if command in ("sensitivity", "search"):
            from qresnet import search, train

            errors += (search.SearchError, train.TrainError)
            return _sensitivity(ns) if command == "sensitivity" else _search(ns)
        if command == "pareto":
            from qresnet import pareto

            pareto.write_report(root=ns.root, points=ns.points, cost_key=ns.cost, out=ns.out, all_axes=True)
            return 0
    except errors as e:
        print(f"qresnet {command}: error: {e}", file=sys.stderr)
        return 1
    return 0


def _export(ns) -> int:
    from qresnet import export, onnx_export

    if (ns.format or ("onnx" if ns.out.endswith(".onnx") else "qrx")) == "onnx":
        path = onnx_export.export_run(
            ns.workdir, ns.out, int4_weights=not ns.int8_weights, integer_kernels=ns.integer_kernels
        )
        print(f"wrote {path} ({path.stat().st_size:,} bytes; QDQ, opset {onnx_export.OPSET}, checked by onnx.checker)")
        return 0
    if ns.int8_weights or ns.integer_kernels:
        raise export.ExportError("--int8-weights and --integer-kernels apply to --format onnx only")
    path = export.export_run(ns.workdir, ns.out)
    print(f"wrote {path} ({path.stat().st_size:,} bytes)")
    header, _ = export.read(path)
    if header.get("fold_bn") and not export.exact_on_cudnn(header):
        print(
            "note: on cuDNN's fused int8 convs (GPUs) this model's logits can differ from the fake-quant model's "
            "where float32 rounding meets a code boundary; train with a *_fused_pow2 setting to deploy it bit-exact, "
            "or evaluate with qresnet eval --rounding explicit",
            file=sys.stderr,
        )
    return 0


def _eval(ns) -> int:
    from qresnet import export, onnx_eval, onnx_export

    if ns.onnx:
        if ns.dtype != "float32" or ns.rounding != "auto":
            raise onnx_export.OnnxError(
                "--dtype and --rounding apply to --export (qresnet's integer layers), not --onnx"
            )
        print(json.dumps(onnx_eval.evaluate(ns.onnx, ns.data_dir, compare=ns.compare, optimize=not ns.as_written)))
        return 0
    if ns.compare:
        result = export.equivalence(ns.compare, ns.export, ns.data_dir, dtype=ns.dtype, rounding=ns.rounding)
        print(json.dumps(result))
        return 0
    header, variables = export.read(ns.export)
    print(json.dumps(export.evaluate(header, variables, ns.data_dir, dtype=ns.dtype, rounding=ns.rounding)))
    return 0


def _bits(text: str) -> list[int]:
    from qresnet import search

    try:
        return [int(b) for b in text.split(",")]
    except ValueError:
        raise search.SearchError(
            f"--bits {text!r}: give bit widths from 1 to 8, comma-separated, e.g. 2,3,4,8"
        ) from None


def _sensitivity(ns) -> int:
    from qresnet import results, sensitivity

    if Path(ns.out).exists():  # before minutes of work, not after
        raise OSError(f"--out {ns.out} exists; qresnet never overwrites a file: choose another path")
    kw = dict(batches=ns.batches, batch_size=ns.batch_size, probes=ns.probes, seed=ns.seed, quantizer=ns.quantizer)
    kw["measure_bits"] = _bits(ns.measure_bits) if ns.measure_bits else ()
    obj = sensitivity.run_sensitivity(ns.workdir, _bits(ns.bits), **kw)
    try:
        results.atomic_write_bytes(ns.out, (json.dumps(obj, indent=1) + "\n").encode(), overwrite=False)
    except FileExistsError:
        raise OSError(f"--out {ns.out} exists; qresnet never overwrites a file: choose another path") from None
    print(f"wrote {ns.out}: {len(obj['layers'])} layers, bits {obj['bits']}, {obj['seconds']} s")
    return 0


def _search(ns) -> int:
    import ml_collections

    from qresnet import results, search

    sens = results.read_json(ns.sensitivity)
    if "layers" not in sens or "config" not in sens:
        raise search.SearchError(
            f"{ns.sensitivity} is not a qresnet sensitivity file; write one with qresnet sensitivity"
        )
    bits = _bits(ns.bits) if ns.bits else sens["bits"]
    config = ml_collections.ConfigDict(sens["config"])
    from configs import settings

    budgets = search.parse_budgets(ns.budgets, config, ns.cost, settings.SETTINGS)
    found = search.search(sens, config, ns.cost, budgets, bits, random_draws=ns.random, seed=ns.seed)
    path = search.write_sweep(ns.out, config, ns.cost, found, ns.sensitivity)
    for f in found:
        print(f"{f['name']}: {ns.cost} {f['cost']:.4f} (budget {f['budget']:g}), predicted damage {f['damage']:.4g}")
    print(f"wrote {path}: qresnet sweep --config {path} --root R")
    return 0


def _cost(ns, overrides) -> int:
    from qresnet import config_lib, run_spec

    config = config_lib.load_config(ns.config, overrides)
    obj = run_spec.config_cost(config)
    if ns.format == "json":
        print(json.dumps(obj))
        return 0
    cols = ("name", "macs", "weights", "w_bits", "a_bits", "linear", "quadratic", "memory")
    rows = [[str(layer[c] if layer[c] is not None else "float") for c in cols] for layer in obj["layers"]]
    rows.append(
        [
            "total",
            *(str(obj["total"][c]) for c in ("macs", "weights")),
            "",
            "",
            *(str(obj["total"][c]) for c in ("linear", "quadratic", "memory")),
        ]
    )
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    fmt = lambda r: "  ".join(v.ljust(w) if i == 0 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    print(fmt(cols))
    for r in rows:
        print(fmt(r))
    ref = obj["reference"]
    print(
        f"ratio to bf16 {ref['model']} (width {ref['width']}): "
        + ", ".join(f"{k} {v:.4f}" for k, v in obj["ratio"].items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
