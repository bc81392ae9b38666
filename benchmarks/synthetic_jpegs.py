"""Synthetic ImageNet-like JPEGs for the input benchmarks and ImageNet dry runs: photo-like images of
ImageNet's typical sizes, written as one .npz (bytes + offsets + labels) and read back as a
random-access source of JPEG bytes, as `imagenet_input.open_source` hands examples to grain.
"""

from __future__ import annotations

import io
import threading
from pathlib import Path

import numpy as np

from qresnet import imagenet_input, results


def synthetic_jpeg(h: int, w: int, rng: np.random.Generator, grey: bool = False) -> bytes:
    """A photo-like h x w JPEG (smooth colour fields plus noise), quality 90."""
    from PIL import Image

    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    f = rng.uniform(5, 40, 6)
    img = np.stack([np.sin(x / f[c] + c) * 60 + np.cos(y / f[c + 3]) * 60 + 128 for c in range(3)], -1)
    img = (img + rng.normal(0, 12, img.shape)).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(img[..., 0] if grey else img).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def write_jpegs(path: Path, n: int, seed: int = 0, sizes=((300, 500), (350, 600))) -> None:
    """n synthetic photo-like JPEGs (`synthetic_jpeg`) as one .npz (bytes + offsets)."""
    rng = np.random.default_rng(seed)
    blobs = []
    for _ in range(n):
        h, w = (int(rng.integers(lo, hi + 1)) for lo, hi in sizes)
        blobs.append(np.frombuffer(synthetic_jpeg(h, w, rng), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    labels = rng.integers(0, 1000, n).astype(np.int32)
    results.atomic_write_npz(path, {"jpeg": np.concatenate(blobs), "offsets": offsets, "labels": labels})


def shrink_jpeg(data: bytes, max_side: int, quality: int = 90) -> bytes:
    """The JPEG re-encoded at `quality` with its longer side `max_side` (area-averaged, OpenCV's
    INTER_AREA); unchanged if it is no larger: what a copy of a dataset prepared at reduced resolution
    (FFCV's max_resolution) would hold, whose CPU decoding costs less. EXIF orientation is ignored,
    as by qresnet's decoders.

    Args:
      data: the JPEG file's bytes.
      max_side: the longest side kept, in pixels (> 0).
      quality: JPEG quality of the re-encoded file (1-100).

    Returns:
      JPEG bytes.
    """
    from PIL import Image

    if max_side <= 0 or not 1 <= quality <= 100:
        raise ValueError(f"max_side must be > 0 and quality 1-100, got max_side={max_side}, quality={quality}")
    width, height = Image.open(io.BytesIO(data)).size  # the header only
    if max(width, height) <= max_side:
        return data
    cv2 = imagenet_input._cv2()
    bgr = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise ValueError(f"OpenCV cannot decode this image ({len(data)} bytes)")
    r = max_side / max(width, height)
    size = (max(1, round(width * r)), max(1, round(height * r)))
    small = cv2.resize(bgr, size, interpolation=cv2.INTER_AREA)
    ok, out = cv2.imencode(".jpg", small, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("OpenCV could not encode the shrunk image")
    return out.tobytes()


def shrink_jpegs(src: Path, dst: Path, max_side: int, quality: int = 90) -> None:
    """The file's JPEGs as a copy prepared at reduced resolution would hold them (`shrink_jpeg`)."""
    with np.load(src) as z:
        jpeg, offsets, labels = z["jpeg"], z["offsets"], z["labels"]
    blobs = [
        np.frombuffer(shrink_jpeg(jpeg[a:b].tobytes(), max_side, quality), np.uint8)
        for a, b in zip(offsets[:-1], offsets[1:])
    ]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    results.atomic_write_npz(dst, {"jpeg": np.concatenate(blobs), "offsets": offsets, "labels": labels})


_LOAD_LOCK = threading.Lock()


class JpegSource:
    """Random access to the file's examples as JPEG bytes (as `imagenet_input.open_source` reads them).

    Holds only the path, so it pickles cheaply to grain's worker processes; each
    process maps the file on first use. `length` (default: the file's count) makes a longer
    source that cycles through the file's JPEGs: decoding costs the same whether or not an
    image was seen before, and making photo-sized JPEGs is slow.
    """

    def __init__(self, path: str | Path, length: int = 0):
        self.path = str(path)
        self._z = None
        with np.load(self.path) as z:
            self._distinct = len(z["labels"])
        self._n = length or self._distinct

    def _arrays(self):
        # grain's threads read items side by side: one of them loads the file. (Parsing .npy headers
        # in several threads at once can also trip CPython 3.11's AST recursion check.)
        if self._z is None:
            with _LOAD_LOCK:
                if self._z is None:
                    self._z = dict(np.load(self.path))
        return self._z

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, i):
        z = self._arrays()
        i = int(i) % self._distinct
        return {"image": z["jpeg"][z["offsets"][i] : z["offsets"][i + 1]].tobytes(), "label": z["labels"][i]}

    def __getstate__(self):
        return {"path": self.path, "_n": self._n, "_distinct": self._distinct, "_z": None}
