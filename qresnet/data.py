"""Datasets: metadata, loaders into memory, and on-device augmentation.

Small datasets (CIFAR, Fashion-MNIST) are loaded whole as uint8 arrays, put
on the accelerator once and augmented there inside jit, so input never stalls
the GPU and no TensorFlow is needed.

Sources, by `config.dataset.name`:
  cifar10_jpeg   the offline JPEG pack (`cifar10_jpeg.npz`, shared/data/README.md)
  fashion_mnist  Debian's `dataset-fashion-mnist` IDX files when present,
                 else TFDS `fashion_mnist` (needs internet or prepared data)
                 (these two offline sources are TFDS datasets too, built without
                 TensorFlow into array_record: `qresnet.tfds_builders`; where TFDS
                 is not installed, as on the GPU image, the raw files are read directly)
  cifar10, cifar100
                 TFDS (`tfds.data_source`; internet or prepared data)
  synthetic      learnable class templates plus noise, generated; for tests
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import hashlib
import io
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from qresnet import results


class DataError(RuntimeError):
    """Missing or corrupt dataset files; the message says what to install or where."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    num_train: int
    num_test: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @property
    def streaming(self) -> bool:
        """Too large to hold on the accelerator: streams through `qresnet.imagenet_input`."""
        return self.name == "imagenet2012"


_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
INFOS = {
    "cifar10_jpeg": DatasetInfo("cifar10_jpeg", (32, 32, 3), 10, 50000, 10000, _CIFAR_MEAN, _CIFAR_STD),
    "cifar10": DatasetInfo("cifar10", (32, 32, 3), 10, 50000, 10000, _CIFAR_MEAN, _CIFAR_STD),
    "cifar100": DatasetInfo(
        "cifar100", (32, 32, 3), 100, 50000, 10000, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
    ),
    "fashion_mnist": DatasetInfo("fashion_mnist", (28, 28, 1), 10, 60000, 10000, (0.2860,), (0.3530,)),
    "imagenet2012": DatasetInfo(
        "imagenet2012", (224, 224, 3), 1000, 1281167, 50000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    ),
    "synthetic": DatasetInfo("synthetic", (16, 16, 3), 10, 512, 256, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
}
CIFAR10_JPEG_SHA256 = "90d42d6d1b832af411d409250b691c1e95a0a4127234a6d5499c6a85b6a666d1"
FASHION_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_DEFAULT_DIRS = (".data", "../shared/data", "/usr/share/datasets/fashion-mnist")


def dataset_info(name: str) -> DatasetInfo:
    """Shape, classes and sizes of a dataset, without loading it."""
    if name not in INFOS:
        raise DataError(f"unknown dataset {name!r}; choose one of {sorted(INFOS)}")
    return INFOS[name]


@dataclasses.dataclass(frozen=True)
class Arrays:
    """A whole dataset in memory: uint8 NHWC images and int32 labels."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def subset(arrays: Arrays, n_train: int, n_test: int) -> Arrays:
    """n_train / n_test examples (0 = all) drawn at random with a fixed seed, in their stored order.

    Random rather than the first n: a dataset stored by class (cifar10_jpeg is) would
    otherwise give a subset of one class. The draw does not depend on the run's seed,
    so every run of a sweep, and `qresnet eval --compare`, sees the same examples.

    Args:
      arrays: the whole dataset.
      n_train: training examples to keep (0 = all).
      n_test: test examples to keep (0 = all).

    Returns:
      The subset, as Arrays.
    """

    def pick(images, labels, n):
        if not n or n >= len(labels):
            return images, labels
        idx = np.sort(np.random.default_rng(0).permutation(len(labels))[:n])
        return images[idx], labels[idx]

    return Arrays(
        *pick(arrays.train_images, arrays.train_labels, n_train),
        *pick(arrays.test_images, arrays.test_labels, n_test),
    )


def _search_dirs(data_dir: str) -> list[Path]:
    dirs = [Path(data_dir)] if data_dir else []
    if os.environ.get("QRESNET_DATA"):
        dirs.append(Path(os.environ["QRESNET_DATA"]))
    return dirs + [Path(d) for d in _DEFAULT_DIRS]


def _find(filename: str, data_dir: str) -> Path | None:
    for d in _search_dirs(data_dir):
        if (d / filename).is_file():
            return d / filename
    return None


def _has_tfds() -> bool:
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        return False
    return True


def load(
    name: str,
    data_dir: str = "",
    synthetic_size: tuple[int, int] | None = None,
    *,
    via_tfds: bool = False,
    tfds_dir: str = "",
) -> Arrays:
    """Loads a whole small dataset into memory.

    Args:
      name: dataset name (see module doc).
      data_dir: where to look first for offline files ("" = defaults:
        $QRESNET_DATA, ./.data, ../shared/data, Debian's dataset folder).
      synthetic_size: (train, test) example counts for "synthetic".

    Returns:
      Arrays with uint8 images (N, H, W, C) and int32 labels.
    """
    info = dataset_info(name)
    if name == "synthetic":
        return synthetic(info, *(synthetic_size or (info.num_train, info.num_test)))
    offline = name == "cifar10_jpeg" or (name == "fashion_mnist" and _find(FASHION_FILES["train"][0], data_dir))
    if offline:
        if via_tfds and _has_tfds():
            from qresnet import tfds_builders

            reader = read_cifar10_jpeg if name == "cifar10_jpeg" else read_fashion_idx

            def read():
                a = reader(data_dir)
                return a.train_images, a.train_labels, a.test_images, a.test_labels

            return Arrays(*tfds_builders.load(name, read, tfds_dir, lambda: check_raw_files(name, data_dir)))
        return read_cifar10_jpeg(data_dir) if name == "cifar10_jpeg" else read_fashion_idx(data_dir)
    if name == "imagenet2012":
        raise DataError("imagenet2012 streams through TFDS and is not loaded into memory")
    return _load_tfds(name, data_dir)


def synthetic(info: DatasetInfo, n_train: int, n_test: int, seed: int = 0) -> Arrays:
    """Learnable data: a fixed random template per class plus noise."""
    rng = np.random.default_rng(seed)
    templates = rng.uniform(40, 215, size=(info.num_classes, *info.image_shape))

    def make(n):
        labels = rng.integers(0, info.num_classes, size=n).astype(np.int32)
        images = templates[labels] + rng.normal(0, 40, size=(n, *info.image_shape))
        return np.clip(images, 0, 255).astype(np.uint8), labels

    tr, te = make(n_train), make(n_test)
    return Arrays(*tr, *te)


def check_raw_files(name: str, data_dir: str) -> None:
    """Raises DataError, saying where to put what, if an offline dataset's files are missing."""
    if name == "cifar10_jpeg" and _find("cifar10_jpeg.npz", data_dir) is None:
        raise DataError(
            "cifar10_jpeg.npz not found in "
            + ", ".join(str(d) for d in _search_dirs(data_dir))
            + "; copy shared/data/cifar10_jpeg.npz there or set --config.dataset.data_dir"
        )
    if name == "fashion_mnist":
        missing = [f for split in FASHION_FILES.values() for f in split if _find(f, data_dir) is None]
        if missing:
            raise DataError(
                f"Fashion-MNIST files {missing} missing; install them with: apt-get install dataset-fashion-mnist"
            )


def read_cifar10_jpeg(data_dir: str) -> Arrays:
    """Decodes the JPEG pack (cached as decoded arrays beside it)."""
    check_raw_files("cifar10_jpeg", data_dir)
    path = _find("cifar10_jpeg.npz", data_dir)
    cache = path.with_name("cifar10_jpeg.decoded.npz")
    if cache.is_file():
        try:
            with np.load(cache) as z:
                return Arrays(*(z[k] for k in ("train_images", "train_labels", "test_images", "test_labels")))
        except Exception:  # A broken cache is rebuilt from the pack.
            pass
    try:
        with np.load(path) as z:
            parts = {k: z[k] for k in z.files}
    except Exception as e:
        raise DataError(
            f"{path} is not a readable npz ({e}); copy it again from shared/data (sha256 {CIFAR10_JPEG_SHA256})"
        ) from e
    arrays = Arrays(
        _decode_jpegs(parts["train_jpeg"], parts["train_offsets"]),
        parts["train_labels"].astype(np.int32),
        _decode_jpegs(parts["test_jpeg"], parts["test_offsets"]),
        parts["test_labels"].astype(np.int32),
    )
    with contextlib.suppress(OSError):  # A read-only data folder just means no cache.
        results.atomic_write_npz(cache, dataclasses.asdict(arrays))
    return arrays


def _decode_jpegs(blob: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(offsets) - 1, 32, 32, 3), np.uint8)
    raw = blob.tobytes()
    for i in range(len(offsets) - 1):
        img = Image.open(io.BytesIO(raw[offsets[i] : offsets[i + 1]]))
        out[i] = np.asarray(img.convert("RGB"))
    return out


def _read_idx(path: Path) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(
            f"{path} is corrupt ({e}); reinstall with: apt-get install --reinstall dataset-fashion-mnist"
        ) from e
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{path} holds {arr.size} values, its header says {dims}; reinstall dataset-fashion-mnist")
    return arr.reshape(dims)


def read_fashion_idx(data_dir: str) -> Arrays:
    """Reads Debian's four gzip IDX files."""
    out = []
    for split in ("train", "test"):
        img_file, lbl_file = FASHION_FILES[split]
        img_path, lbl_path = _find(img_file, data_dir), _find(lbl_file, data_dir)
        if img_path is None or lbl_path is None:
            raise DataError(
                f"Fashion-MNIST {split} files missing; install them with: apt-get install dataset-fashion-mnist"
            )
        out += [_read_idx(img_path)[..., None], _read_idx(lbl_path).astype(np.int32)]
    return Arrays(*out)


def _load_tfds(name: str, data_dir: str) -> Arrays:
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DataError(f"dataset {name!r} comes from TFDS: pip install tensorflow-datasets") from e
    from qresnet import tfds_builders

    out = []
    for split in ("train", "test"):
        try:
            with tfds_builders.preparing(name, data_dir):  # TFDS prepares a dataset at its first use
                source = tfds.data_source(name, split=split, data_dir=data_dir or None)
        except Exception as e:
            raise DataError(
                f"TFDS could not provide {name}/{split} ({type(e).__name__}: {e}); it needs internet "
                f"or data prepared under --config.dataset.data_dir (offline here: use cifar10_jpeg or fashion_mnist)"
            ) from e
        examples = [source[i] for i in range(len(source))]
        out += [
            np.stack([np.asarray(ex["image"]) for ex in examples]).astype(np.uint8),
            np.asarray([ex["label"] for ex in examples], np.int32),
        ]
    return Arrays(*out)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# On-device preprocessing (inside jit).


def normalize(images: jax.Array, info: DatasetInfo, dtype=jnp.float32) -> jax.Array:
    """uint8 -> (x/255 - mean)/std."""
    mean = jnp.asarray(info.mean, jnp.float32) * 255.0
    std = jnp.asarray(info.std, jnp.float32) * 255.0
    return ((images.astype(jnp.float32) - mean) / std).astype(dtype)


def augment(key: jax.Array, images: jax.Array, pad: int, flip: bool) -> jax.Array:
    """Random crop after zero padding by `pad` pixels, and random horizontal flip."""
    n, h, w, _ = images.shape
    k_crop, k_flip = jax.random.split(key)
    if pad:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1)
        images = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, im.shape[-1])))(
            padded, offsets
        )
    if flip:
        mirror = jax.random.bernoulli(k_flip, 0.5, (n, 1, 1, 1))
        images = jnp.where(mirror, images[:, :, ::-1], images)
    return images


def test_batches(
    dataset: str,
    *,
    data_dir: str = "",
    tfds_name: str = "",
    image_size: int = 0,
    image_backend: str = "opencv",
    limit: int = 0,
    synthetic: tuple[int, int] = (512, 256),
    batch: int = 1000,
):
    """Yields (uint8 images, int labels) of a dataset's test split, in order.

    Args:
      dataset: a `data.INFOS` name.
      data_dir: the raw files (in-memory datasets) or the TFDS data dir (streaming ones).
      tfds_name: streaming only: the TFDS dataset to read ("" = `dataset`).
      image_size: streaming only: the eval crop size (0 = the dataset's).
      image_backend: streaming only: the library that decodes and resizes (as the run trained with).
      limit: in-memory only: N examples, the draw training evaluated on (`data.subset`; 0 = all).
      synthetic: train/test sizes of the "synthetic" dataset.
      batch: examples per batch.
    """
    info = dataset_info(dataset)
    if info.streaming:
        from qresnet import imagenet_input  # grain and its decoders, only for streaming datasets

        spec = imagenet_input.StreamSpec(
            tfds_name or dataset,
            data_dir,
            image_size or info.image_shape[0],
            batch,
            batch,
            workers=0,
            image_backend=image_backend,
        )
        imagenet_input.check_backend(image_backend)
        for b in imagenet_input.eval_batches(spec, imagenet_input.open_source(spec, spec.eval_split)):
            n = int(b["mask"].sum())
            yield b["image"][:n], b["label"][:n]
        return
    arrays = subset(load(dataset, data_dir, synthetic), 0, limit)
    images, labels = arrays.test_images, arrays.test_labels
    for i in range(0, len(labels), batch):
        yield images[i : i + batch], labels[i : i + batch]
