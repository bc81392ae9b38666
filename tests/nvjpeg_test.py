"""nvjpeg's host side: bookkeeping and the batched resize's taps (the GPU decoding itself needs
PyTorch with CUDA: not in CI; the Triton kernel runs in Triton's interpreter where installed)."""

import os
import threading

import cv2
import numpy as np
import pytest

from qresnet import nvjpeg


class _Copy:
    """A device copy that is ready when told; records waits."""

    def __init__(self):
        self.ready, self.waited = False, False

    def is_ready(self):
        return self.ready

    def block_until_ready(self):
        self.waited = self.waited or not self.ready
        self.ready = True
        return self


def _held():
    return [source for _, source in nvjpeg._local.__dict__.get("held", [])]


def test_a_decoded_batch_is_held_until_its_copy_is_ready_and_at_most_most_are_held():
    def body():
        copies = [_Copy() for _ in range(4)]
        nvjpeg._hold(copies[0], "b0", most=3)
        nvjpeg._hold(copies[1], "b1", most=3)
        assert _held() == ["b0", "b1"]  # neither copy done: torch must not reuse their memory
        copies[0].ready = True
        nvjpeg._hold(copies[2], "b2", most=3)
        assert _held() == ["b1", "b2"] and not copies[0].waited
        nvjpeg._hold(copies[3], "b3", most=2)  # over the bound: waits for the oldest copy
        assert _held() == ["b2", "b3"] and copies[1].waited

    errors = []

    def run():
        try:
            body()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(e)

    t = threading.Thread(target=run)  # a decoding thread's own list, as in the pipeline
    t.start()
    t.join()
    if errors:
        raise errors[0]
    assert _held() == []  # not this thread's


def _apply_taps(image, rows, row_w, cols, col_w):
    """resize_taps' formula in numpy, for one HWC image: float sums before rounding."""
    v = image[rows[:, None, :, None], cols[None, :, None, :]].astype(np.float64)  # (S, S, 4, 4, C)
    return np.einsum("ya,xb,yxabc->yxc", row_w, col_w, v)


def test_resize_taps_are_opencvs_bicubic_of_the_crop_and_flip_it():
    """The batched resize's taps give OpenCV's INTER_CUBIC of each crop (its fixed-point weights
    allow 1 grey level), downscaled and upscaled, and the flipped crop reversed."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (50, 70, 3), np.uint8)
    boxes = np.array([[3, 5, 41, 60], [10, 0, 12, 9], [0, 0, 50, 70]])
    taps = nvjpeg.resize_taps(boxes, np.array([False, False, True]), 24)
    assert [t.shape for t in taps] == [(3, 24, 4)] * 4 and taps[0].dtype == np.int32
    np.testing.assert_allclose(taps[1].sum(-1), 1, atol=1e-6)
    for n, (top, left, h, w) in enumerate(boxes):
        got = np.clip(np.round(_apply_taps(image, *(t[n] for t in taps))), 0, 255)
        want = cv2.resize(image[top : top + h, left : left + w], (24, 24), interpolation=cv2.INTER_CUBIC)
        want = want[:, ::-1] if n == 2 else want
        assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.9
        assert taps[0][n].min() >= top and taps[0][n].max() < top + h  # taps clamped inside the crop
        assert taps[2][n].min() >= left and taps[2][n].max() < left + w


def test_decode_batch_refuses_an_unknown_resize_before_needing_a_gpu():
    with pytest.raises(ValueError, match=r"resize='cuda' is not one of \('torch', 'triton'\)"):
        nvjpeg.decode_batch([b""], np.zeros((1, 4), int), np.zeros(1, bool), 8, resize="cuda")


def test_the_triton_resize_kernel_equals_pytorchs_per_image_resize():
    """In Triton's interpreter on the CPU (where PyTorch and Triton are installed; CI has neither):
    the one-kernel crop, resize and flip of a batch equals the per-image PyTorch path within 1
    grey level (float rounding), up- and downscaling."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("run with TRITON_INTERPRET=1 (Triton's interpreter) where torch and triton are installed")
    torch = pytest.importorskip("torch")
    pytest.importorskip("triton")
    rng = np.random.default_rng(1)
    images, boxes = [], []
    for _ in range(5):
        hh, ww = rng.integers(20, 50, 2)
        images.append(torch.from_numpy(rng.integers(0, 256, (3, hh, ww), np.uint8)))
        h, w = rng.integers(5, hh + 1), rng.integers(5, ww + 1)
        boxes.append((rng.integers(0, hh - h + 1), rng.integers(0, ww - w + 1), h, w))
    flips = np.array([True, False, True, False, False])
    want = nvjpeg._crop_resize_torch(torch, images, np.array(boxes), flips, 16).numpy().astype(int)
    got = nvjpeg._crop_resize_triton(torch, images, np.array(boxes), flips, 16).numpy().astype(int)
    assert got.shape == want.shape == (5, 16, 16, 3)
    assert np.abs(got - want).max() <= 1 and (got == want).mean() > 0.999
