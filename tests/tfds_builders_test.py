"""The offline TFDS builders prepare array_record files without TensorFlow."""

import numpy as np
import pytest

tfds = pytest.importorskip("tensorflow_datasets")

from qresnet import data  # noqa: E402


def test_fashion_builder_round_trip_through_data_source(tmp_path, write_fashion):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_fashion(raw, 7, 3)
    direct = data.load("fashion_mnist", str(raw))
    via = data.load("fashion_mnist", str(raw), via_tfds=True, tfds_dir=str(tmp_path / "tfds"))
    for field in ("train_images", "train_labels", "test_images", "test_labels"):
        np.testing.assert_array_equal(getattr(via, field), getattr(direct, field))
    assert list((tmp_path / "tfds").rglob("*.array_record*"))
    source = tfds.data_source("fashion_mnist_debian", split="test", data_dir=str(tmp_path / "tfds"))
    assert len(source) == 3 and source[0]["image"].shape == (28, 28, 1)
