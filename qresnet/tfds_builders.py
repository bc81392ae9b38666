"""TFDS builders for the offline datasets, prepared without TensorFlow.

`cifar10_jpeg` (the JPEG pack) and `fashion_mnist_debian` (Debian's IDX files)
are ordinary TFDS datasets: `prepare` writes them as array_record under a TFDS
data dir, and `tfds.data_source(name, split=..., data_dir=...)` reads them, as
for any prepared TFDS dataset. Images are stored as uint8 tensors (TFDS's Image
feature would need TensorFlow to encode PNGs). The raw files are read by the
caller's `read` function (`qresnet.data` finds and reads them), so this module
depends on TFDS alone.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from qresnet import locks

# (train images, train labels, test images, test labels), uint8 images and int labels.
Splits = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
FASHION_CLASSES = (
    "t-shirt/top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle boot",
)
PREPARE_WAIT_S = 6 * 3600.0  # how long a process waits for another one preparing the same dataset
DEFAULT_TFDS_DIR = os.environ.get("TFDS_DATA_DIR", str(Path.home() / "tensorflow_datasets"))


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder):
    """Yields the uint8 images of the raw files that `read` returns."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    SHAPE: tuple[int, int, int] = (0, 0, 0)
    CLASSES: tuple[str, ...] = ()
    SOURCE = ""

    def __init__(self, *, read: Callable[[], Splits] | None = None, **kwargs):
        self._read = read
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=self.SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(names=list(self.CLASSES)),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # Keep the files' order; training shuffles anyway.
        )

    def _split_generators(self, dl_manager):
        if self._read is None:
            raise ValueError(f"{self.name} is not prepared and no raw files were given to build it from")
        train_images, train_labels, test_images, test_labels = self._read()
        return {
            "train": self._generate_examples(train_images, train_labels),
            "test": self._generate_examples(test_images, test_labels),
        }

    def _generate_examples(self, images, labels):
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}


class Cifar10Jpeg(_OfflineBuilder):
    """CIFAR-10 as JPEG q75 (shared/data/cifar10_jpeg.npz), 50,000 train / 10,000 test."""

    SHAPE, CLASSES = (32, 32, 3), CIFAR10_CLASSES


class FashionMnistDebian(_OfflineBuilder):
    """Fashion-MNIST from Debian's dataset-fashion-mnist IDX files, 60,000 / 10,000."""

    SHAPE, CLASSES = (28, 28, 1), FASHION_CLASSES


BUILDERS = {"cifar10_jpeg": Cifar10Jpeg, "fashion_mnist": FashionMnistDebian}


def prepare(
    name: str, read: Callable[[], Splits], tfds_dir: str = "", check: Callable[[], None] = lambda: None
) -> tfds.core.DatasetBuilder:
    """Builds (once) the array_record files of an offline dataset; returns its builder.

    Args:
      name: "cifar10_jpeg" or "fashion_mnist".
      read: returns the raw files' splits (called only to build).
      tfds_dir: the TFDS data dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets).
      check: raises a clear error if the raw files are missing (called before TFDS writes anything).

    Returns:
      The prepared builder (`builder.as_data_source(split)` reads it).
    """
    builder = BUILDERS[name](read=read, data_dir=tfds_dir or DEFAULT_TFDS_DIR, file_format="array_record")
    if not builder.is_prepared():
        check()
        with preparing(name, tfds_dir):
            if not builder.is_prepared():  # another process may have prepared it while this one waited
                builder.download_and_prepare()
    return builder


def preparing(name: str, tfds_dir: str = ""):
    """The lock that one process at a time holds while it prepares dataset `name` in `tfds_dir`;
    the others wait for it (a killed holder lets go)."""
    folder = Path(tfds_dir or DEFAULT_TFDS_DIR)
    folder.mkdir(parents=True, exist_ok=True)
    return locks.exclusive(
        folder / f".{name}.prepare.lock", f"the preparation of {name} in {folder}", wait_s=PREPARE_WAIT_S
    )


def load(name: str, read: Callable[[], Splits], tfds_dir: str = "", check: Callable[[], None] = lambda: None) -> Splits:
    """Prepares if needed (`prepare`), then reads both splits through `tfds.data_source`."""
    builder = prepare(name, read, tfds_dir, check)
    out = []
    for split in ("train", "test"):
        source = tfds.data_source(builder.name, split=split, data_dir=builder.data_dir_root)
        examples = source.__getitems__(range(len(source)))
        out += [np.stack([ex["image"] for ex in examples]), np.asarray([ex["label"] for ex in examples], np.int32)]
    return tuple(out)
