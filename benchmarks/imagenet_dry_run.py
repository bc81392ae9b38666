"""A dry run of the paper's ImageNet recipe on this machine, and what a full run would take.

    python -m benchmarks.imagenet_dry_run --root DIR [--train 12800 --val 1280] [--batch 256] [--out F.json]
        [--config.KEY=VALUE ...]     # passed on to qresnet train
    python -m benchmarks.imagenet_dry_run --project IMAGES_PER_S   # the projection alone

1. Makes a TFDS dataset with imagenet2012's features (`synthetic_imagenet`: photo-like JPEGs of
   ImageNet's sizes, as `benchmarks.input_pipeline` makes them) in DIR/tfds, once.
2. Trains `configs/imagenet/resnet50_w4a4_ends8.py` on it through the streaming pipeline with a
   short schedule whose activation-quantization start falls inside it, evaluating and checkpointing
   every epoch; kills the training (SIGKILL) once it has passed the start, then runs the same
   command again, which resumes.
3. From the steady-state images/s of the resumed process, projects the wall time and GPU-hours
   of one paper run (250 epochs of ImageNet's 1,281,167 images) and of the paper's 36-run sweep
   (4 settings x 9 widths; each run's time taken as proportional to its MACs per image, the cost
   model's, which is an assumption), on one GPU and on 8 with linear data-parallel scaling
   (another assumption: not measured here).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from benchmarks.synthetic_jpegs import synthetic_jpeg

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "configs/imagenet/resnet50_w4a4_ends8.py"
NAME = "synthetic_imagenet"
IMAGENET_TRAIN = 1_281_167
PAPER_EPOCHS = 250
SWEEP_WIDTHS = (0.5, 0.62, 0.75, 0.87, 1.0, 1.25, 1.5, 1.75, 2.0)
SWEEP_SETTINGS = 4
POOL = 512  # distinct JPEGs per split


def make_dataset(tfds_dir: Path, n_train: int, n_val: int) -> None:
    """The synthetic dataset as a prepared TFDS array_record dataset (skipped if there)."""
    import tensorflow_datasets as tfds

    class SyntheticImagenet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        """imagenet2012's features on photo-like synthetic JPEGs of ImageNet's sizes."""

        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            features = tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(encoding_format="jpeg"),
                    "label": tfds.features.ClassLabel(num_classes=1000),
                }
            )
            return tfds.core.DatasetInfo(builder=self, features=features, supervised_keys=("image", "label"))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(0, n_train), "validation": self._generate_examples(1, n_val)}

        def _generate_examples(self, seed, n):
            # Encoding is the slow part of making the dataset, decoding is what training measures: a pool
            # of distinct JPEGs, each stored several times, keeps the decode cost of n distinct images.
            rng = np.random.default_rng(seed)
            pool = [
                synthetic_jpeg(int(rng.integers(300, 501)), int(rng.integers(350, 601)), rng)
                for _ in range(min(n, POOL))
            ]
            for i in range(n):
                yield i, {"image": pool[i % len(pool)], "label": int(rng.integers(1000))}

    builder = SyntheticImagenet(data_dir=str(tfds_dir), file_format="array_record")
    if not builder.is_prepared():
        builder.download_and_prepare()


def train_command(root: Path, batch: int, epochs: int, start_epoch: float, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "qresnet.cli",
        "train",
        "--config",
        str(CONFIG),
        "--workdir",
        str(root / "run"),
        f"--config.dataset.tfds_name={NAME}",
        f"--config.dataset.tfds_dir={root / 'tfds'}",
        f"--config.optim.batch_size={batch}",
        f"--config.optim.num_epochs={epochs}",
        "--config.optim.warmup_epochs=1.0",
        "--config.optim.cooldown_epochs=1.0",
        f"--config.quant.act_start_epoch={start_epoch}",
        "--config.checkpoint_every_epochs=1",
        f"--config.eval_batch_size={batch}",
        *extra,
    ]


def _epochs_done(workdir: Path) -> int:
    try:
        return len((workdir / "metrics.jsonl").read_text().splitlines())
    except OSError:
        return 0


def dry_run(root: Path, batch: int, epochs: int, start_epoch: float, kill_after: int, extra: list[str]) -> dict:
    """Trains, kills after `kill_after` epochs, resumes; returns the record (see module doc)."""
    cmd = train_command(root, batch, epochs, start_epoch, extra)
    workdir = root / "run"
    t0 = time.time()
    first = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True)
    while first.poll() is None and _epochs_done(workdir) < kill_after:
        time.sleep(0.5)
    killed_at = _epochs_done(workdir)
    if first.poll() is None:
        os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    t1 = time.time()
    subprocess.run(cmd, cwd=ROOT, check=True)
    t2 = time.time()
    result = json.loads((workdir / "result.json").read_text())
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((workdir / "config.json").read_text())
    # Steady state: the resumed process's epochs after its first (which compiles).
    resumed = [r["images_per_s"] for r in rows if r["epoch"] > result["resumed_from_epoch"] + 1]
    ips = statistics.median(resumed) if resumed else result["images_per_s"]
    return {
        "model": result["model"],
        "width": result["width"],
        "setting": result["setting"],
        "batch": batch,
        "epochs": epochs,
        "steps_per_epoch": config["steps_per_epoch"],
        "act_start_step": config["act_start_step"],
        "killed_after_epoch": killed_at,
        "resumed_from_epoch": result["resumed_from_epoch"],
        "epochs_in_metrics": [r["epoch"] for r in rows],
        "eval_top1": [r["eval_top1"] for r in rows],
        "images_per_s": ips,
        "first_run_s": round(t1 - t0, 1),
        "resumed_run_s": round(t2 - t1, 1),
        **projection(ips),
        "device": result["device"],
        "date": result["date"],
        "commit": result["commit"],
        "command": " ".join(["python -m benchmarks.imagenet_dry_run", *sys.argv[1:]]),
    }


def projection(images_per_s: float) -> dict:
    """Wall time and GPU-hours of one paper run and of the 36-run sweep at `images_per_s` a GPU."""
    from qresnet import cost

    one_gpu_s = PAPER_EPOCHS * IMAGENET_TRAIN / images_per_s
    macs = {
        w: cost.model_cost("resnet50", width=w, num_classes=1000, input_shape=(224, 224, 3))["total"]["macs"]
        for w in SWEEP_WIDTHS
    }
    sweep_gpu_s = SWEEP_SETTINGS * sum(one_gpu_s * m / macs[1.0] for m in macs.values())
    return {
        "paper_run_gpu_hours": round(one_gpu_s / 3600, 1),
        "paper_run_hours_on_8_gpus": round(one_gpu_s / 8 / 3600, 2),
        "sweep_gpu_hours": round(sweep_gpu_s / 3600, 1),
        "sweep_days_on_8_gpus": round(sweep_gpu_s / 8 / 86400, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.imagenet_dry_run", description=__doc__.split("\n")[0])
    p.add_argument("--root", help="folder for the dataset (tfds/) and the run (run/)")
    p.add_argument("--train", type=int, default=12800, help="synthetic train images")
    p.add_argument("--val", type=int, default=1280, help="synthetic validation images")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--act-start-epoch", type=float, default=1.5, help="inside the schedule")
    p.add_argument("--kill-after", type=int, default=3, help="epochs done before the first process is killed")
    p.add_argument("--project", type=float, help="only print the projection for this many images/s a GPU")
    p.add_argument("--out", help="write the record here (JSON)")
    args, extra = p.parse_known_args(argv)
    if args.project:
        print(json.dumps({"images_per_s": args.project, **projection(args.project)}))
        return 0
    if not args.root:
        p.error("--root is needed (or --project IMAGES_PER_S alone)")
    if not (0 < args.act_start_epoch < args.kill_after < args.epochs) or min(args.train, args.val, args.batch) < 1:
        p.error("need 0 < --act-start-epoch < --kill-after < --epochs, and positive sizes")
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    make_dataset(root / "tfds", args.train, args.val)
    print(f"dataset ready in {time.time() - t0:.0f} s", flush=True)
    record = dry_run(root, args.batch, args.epochs, args.act_start_epoch, args.kill_after, extra)
    print(json.dumps(record), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
