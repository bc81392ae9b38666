"""TFDS builders for the offline datasets, prepared without TensorFlow.

`cifar10_jpeg` (the JPEG pack) and `fashion_mnist_debian` (Debian's IDX files)
are ordinary TFDS datasets: `prepare` writes them as array_record under a TFDS
data dir, and `tfds.data_source(name, split=..., data_dir=...)` reads them, as
for any prepared TFDS dataset. Images are stored as uint8 tensors (TFDS's Image
feature would need TensorFlow to encode PNGs).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from qresnet import data

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
DEFAULT_TFDS_DIR = os.environ.get("TFDS_DATA_DIR", str(Path.home() / "tensorflow_datasets"))


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder):
    """Reads the raw files found by `qresnet.data` (raw_dir) and yields uint8 images."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    SHAPE: tuple[int, int, int] = (0, 0, 0)
    CLASSES: tuple[str, ...] = ()
    SOURCE = ""

    def __init__(self, *, raw_dir: str = "", **kwargs):
        self._raw_dir = raw_dir
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
        arrays = self._read()
        return {
            "train": self._generate_examples(arrays.train_images, arrays.train_labels),
            "test": self._generate_examples(arrays.test_images, arrays.test_labels),
        }

    def _generate_examples(self, images, labels):
        for i in range(len(labels)):
            yield i, {"image": images[i], "label": int(labels[i])}

    def _read(self) -> data.Arrays:
        raise NotImplementedError


class Cifar10Jpeg(_OfflineBuilder):
    """CIFAR-10 as JPEG q75 (shared/data/cifar10_jpeg.npz), 50,000 train / 10,000 test."""

    SHAPE, CLASSES = (32, 32, 3), CIFAR10_CLASSES

    def _read(self):
        return data.read_cifar10_jpeg(self._raw_dir)


class FashionMnistDebian(_OfflineBuilder):
    """Fashion-MNIST from Debian's dataset-fashion-mnist IDX files, 60,000 / 10,000."""

    SHAPE, CLASSES = (28, 28, 1), FASHION_CLASSES

    def _read(self):
        return data.read_fashion_idx(self._raw_dir)


BUILDERS = {"cifar10_jpeg": Cifar10Jpeg, "fashion_mnist": FashionMnistDebian}


def prepare(name: str, raw_dir: str = "", tfds_dir: str = "") -> tfds.core.DatasetBuilder:
    """Builds (once) the array_record files of an offline dataset; returns its builder.

    Args:
      name: "cifar10_jpeg" or "fashion_mnist".
      raw_dir: where to look first for the raw files (see `qresnet.data`).
      tfds_dir: the TFDS data dir ("" = $TFDS_DATA_DIR or ~/tensorflow_datasets).

    Returns:
      The prepared builder (`builder.as_data_source(split)` reads it).
    """
    builder = BUILDERS[name](raw_dir=raw_dir, data_dir=tfds_dir or DEFAULT_TFDS_DIR, file_format="array_record")
    if not builder.is_prepared():
        data.check_raw_files(name, raw_dir)  # A clear error before TFDS starts writing anything.
        builder.download_and_prepare()
    return builder


def load(name: str, raw_dir: str = "", tfds_dir: str = "") -> data.Arrays:
    """Prepares if needed, then reads both splits through `tfds.data_source`."""
    builder = prepare(name, raw_dir, tfds_dir)
    out = []
    for split in ("train", "test"):
        source = tfds.data_source(builder.name, split=split, data_dir=builder.data_dir_root)
        examples = source.__getitems__(range(len(source)))
        out += [np.stack([ex["image"] for ex in examples]), np.asarray([ex["label"] for ex in examples], np.int32)]
    return data.Arrays(*out)
