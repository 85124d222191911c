"""Offline Fashion-MNIST as a TFDS dataset, built from the original idx files.

Debian's `dataset-fashion-mnist` package installs the four original files in
`/usr/share/datasets/fashion-mnist/`. `FashionMnistLocal` turns them into an ArrayRecord
TFDS dataset named `fashion_mnist_local` (distinct from the catalogue `fashion_mnist`, so
the two never clash in one data dir) with no network access, keeping the original order
(`disable_shuffling=True`) so that example i is image i of the idx file, bit-exact.
It is then read back through the same `tfds` data-source path as any catalogue dataset.

The image is a `Tensor(uint8, (28, 28, 1))` feature rather than `Image`: TFDS encodes
`Image` features with TensorFlow unless fed PNG bytes, and raw tensors also read back
faster (no PNG decode). Label names match the catalogue `fashion_mnist`.
"""

from __future__ import annotations

import contextlib
import gzip
import os
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

# Where Debian's dataset-fashion-mnist puts the original files; override with this env var.
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
SOURCE_DIR_ENV = "JAXDD_FASHION_MNIST_DIR"

BUILDER_NAME = "fashion_mnist_local"
CLASS_NAMES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
# split name -> idx file prefix
_FILES = {"train": "train", "test": "t10k"}


def source_dir() -> str:
    """The folder holding the original idx files (env override, else the Debian path)."""
    return os.environ.get(SOURCE_DIR_ENV, DEBIAN_DIR)


def source_files(src_dir: str | None = None) -> dict[str, tuple[str, str]]:
    """split -> (images path, labels path) of the original gzipped idx files."""
    src_dir = src_dir or source_dir()
    return {
        split: (os.path.join(src_dir, f"{p}-images-idx3-ubyte.gz"),
                os.path.join(src_dir, f"{p}-labels-idx1-ubyte.gz"))
        for split, p in _FILES.items()
    }


def local_files_available(src_dir: str | None = None) -> bool:
    """True when all four original Fashion-MNIST files are present."""
    return all(os.path.isfile(f) for pair in source_files(src_dir).values() for f in pair)


def read_idx(path: str) -> np.ndarray:
    """Read a (gzipped) idx file (the MNIST format) into a uint8 array of its stored shape.

    Header: 2 zero bytes, a dtype code (0x08 = uint8), the rank, then `rank` big-endian
    uint32 sizes; the data follow in C order.
    """
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if data[0:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 idx file (header {data[:4]!r})")
    rank = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(dims)


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
    """Fashion-MNIST (60,000 train + 10,000 test, 28x28 grey, 10 classes) from local files."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Built from the original idx files, original order."}
    MANUAL_DOWNLOAD_INSTRUCTIONS = (
        "Put train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, "
        "t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in the manual dir "
        f"(`apt-get install dataset-fashion-mnist` puts them in {DEBIAN_DIR})."
    )

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="Fashion-MNIST built offline from the original idx files.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            }),
            supervised_keys=("image", "label"),
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            disable_shuffling=True,  # keep the idx order: example i == image i
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        files = source_files(os.fspath(dl_manager.manual_dir))
        return {split: self._generate_examples(*files[split]) for split in _FILES}

    def _generate_examples(self, images_path: str, labels_path: str) -> Iterator:
        x_NHW = read_idx(images_path)
        y_N = read_idx(labels_path)
        if x_NHW.shape[0] != y_N.shape[0]:
            raise ValueError(f"{images_path} and {labels_path} differ in length")
        for i in range(y_N.shape[0]):
            yield i, {"image": x_NHW[i][..., None], "label": int(y_N[i])}


@contextlib.contextmanager
def _file_lock(path: str):
    """Exclusive inter-process lock, so two processes never build the same dataset at once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock (TFDS still writes through a temporary dir)
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(data_dir: str, src_dir: str | None = None) -> FashionMnistLocal:
    """Build `fashion_mnist_local` into `data_dir` once (no network); return its builder."""
    src_dir = src_dir or source_dir()
    if not local_files_available(src_dir):
        raise FileNotFoundError(
            f"Fashion-MNIST idx files not found in {src_dir}; install the Debian package "
            f"dataset-fashion-mnist or set ${SOURCE_DIR_ENV}")
    os.makedirs(data_dir, exist_ok=True)
    builder = FashionMnistLocal(data_dir=data_dir, file_format="array_record")
    if not builder.is_prepared():
        with _file_lock(os.path.join(data_dir, f".{BUILDER_NAME}.lock")):
            builder = FashionMnistLocal(data_dir=data_dir, file_format="array_record")
            if not builder.is_prepared():  # another process may have built it meanwhile
                builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
                    manual_dir=src_dir, try_download_gcs=False))
    return builder
