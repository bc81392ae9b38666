"""Shared test helpers."""

import gzip

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
