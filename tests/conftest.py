"""Shared test helpers."""

import gzip

# Imported now, before any test: pytest imports it on the first unraisable exception (e.g. an
# object of a worker pool collected late), and if that happens while TFDS's lazy imports (etils)
# have patched `import` in another thread, it gets a lazy stand-in whose import then fails and
# turns the warning into a test error (seen once in CI).
import tracemalloc  # noqa: F401

import numpy as np
import pytest


@pytest.fixture
def write_idx():
    """Writes an array as a gzip IDX file (the Fashion-MNIST format)."""

    def write(path, arr):
        header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
        with gzip.open(path, "wb") as f:
            f.write(header + arr.astype(np.uint8).tobytes())

    return write


@pytest.fixture
def write_fashion(write_idx):
    """Writes random Fashion-MNIST IDX files (n_train, n_test examples) into a folder."""
    from qresnet import data

    def write(folder, n_train, n_test):
        rng = np.random.default_rng(0)
        for split, n in (("train", n_train), ("test", n_test)):
            img, lbl = data.FASHION_FILES[split]
            write_idx(folder / img, rng.integers(0, 256, (n, 28, 28)))
            write_idx(folder / lbl, rng.integers(0, 10, (n,)))

    return write
