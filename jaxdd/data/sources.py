"""Real image-classification datasets as uint8 numpy arrays, with a seeded validation split.

Every source ends in the same `Dataset`:

- TFDS catalogue names (`cifar10`, `cifar100`, `mnist`, `fashion_mnist`, `svhn_cropped`,
  `imagenet_resized/64x64`, ...) are read through `tfds` ArrayRecord data sources, the
  TensorFlow-free path. If the dataset is not prepared in `data_dir`, it is downloaded and
  prepared as ArrayRecord first (on a machine with network access).
- `fashion_mnist` uses the original idx files of Debian's `dataset-fashion-mnist` when
  present (built once into `data_dir` as the TFDS dataset `fashion_mnist_local`, no
  download), else the catalogue dataset. `$JAXDD_FASHION_MNIST_SOURCE=local|tfds|auto`
  forces a path; so do the names `fashion_mnist_local` and `tfds:fashion_mnist`.
- `tfds:NAME` always reads the catalogue dataset NAME.
- `folder:PATH`: PATH/train/<class>/*.png and optional PATH/test/<class>/*.png, or
  PATH/<class>/*.png (no train/ folder). Classes are the sorted subfolder names; all
  images must share one size; greyscale stays 1 channel, anything else becomes RGB.
  Without a test folder, a fixed 20 % of each class (seed 0, independent of `seed`) is
  held out as the test split. An unreadable image file, or a class folder without images,
  is an error that names it (nothing is skipped silently).
- `npz:PATH`: arrays `x_train` (N,H,W,C) or (N,H,W), `y_train` (N,), `x_test`, `y_test`,
  optional `class_names` (K,) strings. Images uint8, or finite float in [0, 1] (rounded to
  uint8). Labels are 0..K-1 and every class has training images.

Every dataset needs at least 2 classes.

Decoded-array cache: TFDS records are parsed one by one in Python (Fashion-MNIST: ~8 s,
CIFAR: PNG decoding on top), so the first full read of a prepared ArrayRecord dataset is
saved as one uncompressed `.npz` under `$JAXDD_DATA_CACHE` (default
`~/.cache/jaxdd/arrays`; `off` disables it) and later reads load that file. The cache file
is keyed by the builder's folder and the names, sizes and modification times of its files
(a re-prepared dataset is read afresh), written atomically, and never required: an
unwritable or unreadable cache only means reading the records again. Datasets over
`$JAXDD_DATA_CACHE_MAX_GB` (default 2) decoded are not cached.

The validation split is carved from the training split: `val_per_class` images of each
class, drawn with `np.random.default_rng(seed)`; the default is ~1,000 images in total
(`round(1000 / K)` per class, capped at 10 % of the smallest class), e.g. 100 per class on
CIFAR-10 / Fashion-MNIST, 10 per class on CIFAR-100. `val_per_class=0` keeps the full
training set. The remaining training images keep their stored order.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import os
import struct
from typing import Any

import numpy as np

DEFAULT_VAL_TOTAL = 1000      # images in the default validation split (all classes)
DEFAULT_VAL_MAX_FRACTION = 0.1  # ... at most this fraction of the smallest class
FOLDER_TEST_FRACTION = 0.2    # folder: datasets without a test/ folder hold this out
FASHION_SOURCE_ENV = "JAXDD_FASHION_MNIST_SOURCE"  # auto | local | tfds
_READ_CHUNK = 4096            # records per data-source read
DATA_CACHE_ENV = "JAXDD_DATA_CACHE"  # folder of the decoded-array cache, or "off"
DATA_CACHE_MAX_ENV = "JAXDD_DATA_CACHE_MAX_GB"
_ARRAY_CACHE_FORMAT = 1
_ARRAY_CACHE_KEYS = ("x_train", "y_train", "x_test", "y_test")
_IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Catalogue datasets whose held-out split is not called "test".
_TEST_SPLIT = {"imagenet_resized": "validation", "imagenet2012": "validation",
               "imagenette": "validation", "imagewang": "validation"}
# Manual-download datasets: the files a user puts in the TFDS manual_dir.
_MANUAL_FILES = {"imagenet2012": "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar "
                                 "(from https://image-net.org/download)"}
_EXAMPLES = ("cifar10, cifar100, mnist, fashion_mnist, svhn_cropped, imagenet_resized/64x64"
             " (any TFDS image-classification name), folder:PATH, npz:PATH or tfds_dir:PATH")


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """A labelled image dataset in memory; arrays are read-only uint8 NHWC / int32."""

    x_train: np.ndarray = dataclasses.field(repr=False)  # (N, H, W, C) uint8
    y_train: np.ndarray = dataclasses.field(repr=False)  # (N,) int32
    x_val: np.ndarray = dataclasses.field(repr=False)    # (V, H, W, C) uint8
    y_val: np.ndarray = dataclasses.field(repr=False)    # (V,) int32
    x_test: np.ndarray = dataclasses.field(repr=False)   # (T, H, W, C) uint8
    y_test: np.ndarray = dataclasses.field(repr=False)   # (T,) int32
    num_classes: int
    name: str                  # as given to load_dataset (used in messages and artefacts)
    class_names: list[str]
    class_indices: list[np.ndarray] = dataclasses.field(repr=False)  # train indices of class k
    source: str = ""           # where the arrays came from (provenance)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C)."""
        return tuple(self.x_train.shape[1:])

    def __repr__(self) -> str:
        return (f"Dataset({self.name!r}, train={len(self.y_train)}, val={len(self.y_val)}, "
                f"test={len(self.y_test)}, image_shape={self.image_shape}, "
                f"num_classes={self.num_classes}, source={self.source!r})")


def default_data_dir() -> str:
    """TFDS data dir: `$TFDS_DATA_DIR` or `~/tensorflow_datasets` (the TFDS default)."""
    return os.path.expanduser(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets"))


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    val_per_class: int | None = None,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
    download: bool = True,
) -> Dataset:
    """Load `name` (see module docstring) with a class-balanced validation split.

    Args:
      name: TFDS name, `tfds:NAME`, `fashion_mnist_local`, `folder:PATH` or `npz:PATH`.
      data_dir: TFDS data dir (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`).
      val_per_class: validation images per class taken out of train; None = ~1000 total.
      seed: seed of the validation draw (same seed, same split).
      max_train / max_test: keep only the first N stored examples (fast small runs);
        applied before the validation split.
      download: allow TFDS to download and prepare a catalogue dataset that is missing.

    Results are cached in-process (see `clear_cache`); the arrays are read-only.
    """
    if fashion := _fashion_route(name):
        name_key = f"{name}|{fashion}"
    else:
        name_key = name
    return _load_cached(name, name_key, os.path.abspath(data_dir or default_data_dir()),
                        val_per_class, int(seed), max_train, max_test, download)


def clear_cache() -> None:
    """Forget the in-process cache of `load_dataset`."""
    _load_cached.cache_clear()


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, name_key: str, data_dir: str, val_per_class: int | None,
                 seed: int, max_train: int | None, max_test: int | None,
                 download: bool) -> Dataset:
    del name_key  # only part of the cache key (resolved fashion_mnist route)
    x_tr, y_tr, x_te, y_te, class_names, source = _load_raw(
        name, data_dir, max_train, max_test, download)
    num_classes = len(class_names)
    if num_classes < 2:
        raise ValueError(f"{name} has {num_classes} class(es); jaxdd needs at least 2 "
                         f"classes")
    _check_labels(name, y_tr, num_classes, "train")
    _check_labels(name, y_te, num_classes, "test")
    train_idx, val_idx = split_validation(y_tr, num_classes, val_per_class, seed, name=name)
    x_train, y_train = x_tr[train_idx], y_tr[train_idx]
    class_indices = [np.flatnonzero(y_train == k) for k in range(num_classes)]
    arrays = [x_train, y_train, x_tr[val_idx], y_tr[val_idx], x_te, y_te, *class_indices]
    for a in arrays:
        a.setflags(write=False)  # the cached object is shared: nobody may mutate it
    return Dataset(
        x_train=x_train, y_train=y_train, x_val=arrays[2], y_val=arrays[3],
        x_test=x_te, y_test=y_te, num_classes=num_classes, name=name,
        class_names=list(class_names), class_indices=class_indices, source=source)


def split_validation(y_N: np.ndarray, num_classes: int, val_per_class: int | None,
                     seed: int, *, name: str = "dataset") -> tuple[np.ndarray, np.ndarray]:
    """(train indices in stored order, val indices class-major) of a seeded balanced split."""
    counts = np.bincount(y_N, minlength=num_classes)
    if val_per_class is None:
        per_class = max(1, round(DEFAULT_VAL_TOTAL / num_classes))
        val_per_class = min(per_class, int(DEFAULT_VAL_MAX_FRACTION * counts.min()))
    elif val_per_class < 0:
        raise ValueError(f"val_per_class must be >= 0, got {val_per_class}")
    elif val_per_class > 0 and val_per_class >= counts.min():
        k = int(counts.argmin())
        raise ValueError(
            f"val_per_class {val_per_class} would empty class {k} of {name}, which has "
            f"{counts[k]} training images; use val_per_class < {counts[k]}")
    rng = np.random.default_rng(seed)
    val = [np.flatnonzero(y_N == k)[rng.permutation(counts[k])[:val_per_class]]
           for k in range(num_classes)]
    val_idx = np.concatenate(val).astype(np.int64) if val else np.zeros(0, np.int64)
    train_mask = np.ones(len(y_N), bool)
    train_mask[val_idx] = False
    return np.flatnonzero(train_mask), val_idx


def check_ipc(dataset: Dataset, ipc: int) -> None:
    """Clear error when a class has fewer than `ipc` training images."""
    counts = np.array([len(ix) for ix in dataset.class_indices])
    if ipc < 1:
        raise ValueError(f"IPC must be >= 1, got {ipc}")
    if counts.min() == 0:
        k = int(counts.argmin())
        raise ValueError(
            f"class {k} ({dataset.class_names[k]!r}) of {dataset.name} has no training "
            f"images; every class needs at least {ipc} (give it images or drop the class)")
    if ipc > counts.min():
        k = int(np.flatnonzero(counts < ipc)[0])
        raise ValueError(
            f"IPC {ipc} is larger than class {k} of {dataset.name}, which has {counts[k]} "
            f"training images; use --ipc <= {counts.min()}")


def sample_indices_per_class(key_or_seed: Any, dataset: Dataset, ipc: int) -> np.ndarray:
    """Indices of `ipc` distinct random training images of every class, class-major."""
    check_ipc(dataset, ipc)
    return sample_from_classes(key_or_seed, dataset.class_indices, ipc)


def sample_from_classes(key_or_seed: Any, class_indices: list[np.ndarray], n: int
                        ) -> np.ndarray:
    """`n` distinct random entries of each class's index array, class-major (the draw of
    `sample_indices_per_class`, for any per-class index lists: streamed sources too)."""
    rng = np.random.default_rng(_seed_of(key_or_seed))
    return np.concatenate([rng.choice(ix, size=n, replace=False) for ix in class_indices])


def sample_per_class(key_or_seed: Any, dataset: Dataset, ipc: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """`ipc` distinct random training images of every class, class-major.

    Used for real-image initialisation of a distilled set. `key_or_seed` is an int seed or
    a JAX PRNG key; the draw depends on nothing else. Returns (x (K*ipc,H,W,C) uint8,
    y (K*ipc,) int32) with y = [0]*ipc + [1]*ipc + ...
    """
    idx = sample_indices_per_class(key_or_seed, dataset, ipc)
    y = np.repeat(np.arange(dataset.num_classes, dtype=np.int32), ipc)
    return dataset.x_train[idx], y


def _seed_of(key_or_seed: Any) -> list[int] | int:
    """An int seed as is, or the raw words of a JAX key (typed or legacy uint32)."""
    if isinstance(key_or_seed, (int, np.integer)):
        return int(key_or_seed)
    import jax
    key = key_or_seed
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return [int(w) for w in np.asarray(key, np.uint32).ravel()]


# ---------------------------------------------------------------------------------------
# Routing


def _fashion_route(name: str) -> str | None:
    """'local' or 'tfds' for the fashion_mnist names, None for any other name."""
    if name == "fashion_mnist_local":
        return "local"
    if name != "fashion_mnist":
        return None
    choice = os.environ.get(FASHION_SOURCE_ENV, "auto").lower()
    if choice not in ("auto", "local", "tfds"):
        raise ValueError(f"${FASHION_SOURCE_ENV} must be auto, local or tfds, got {choice!r}")
    if choice == "auto":
        from jaxdd.data import fashion_mnist_local
        choice = "local" if fashion_mnist_local.local_files_available() else "tfds"
    return choice


def _load_raw(name: str, data_dir: str, max_train: int | None, max_test: int | None,
              download: bool):
    """(x_train, y_train, x_test, y_test, class_names, source) before the val split."""
    if name.startswith("folder:"):
        out = _load_folder(name[len("folder:"):])
    elif name.startswith("npz:"):
        out = _load_npz(name[len("npz:"):])
    else:
        return _read_builder(tfds_builder(name, data_dir, download), name, max_train,
                             max_test)
    x_tr, y_tr, x_te, y_te, class_names, source = out
    return (x_tr[:max_train], y_tr[:max_train], x_te[:max_test], y_te[:max_test],
            class_names, source)


def tfds_builder(name: str, data_dir: str, download: bool):
    """The prepared ArrayRecord TFDS builder of a TFDS name (`tfds:NAME`, fashion_mnist...),
    or of `tfds_dir:PATH`: a TFDS dataset already prepared in PATH (the version folder that
    holds `dataset_info.json`, e.g. built on another host or by a custom builder; read with
    `tfds.builder_from_directory`, nothing downloaded)."""
    if name.startswith("tfds_dir:"):
        return _directory_builder(name[len("tfds_dir:"):])
    if _fashion_route(name) == "local":
        from jaxdd.data import fashion_mnist_local
        return fashion_mnist_local.prepare(data_dir)
    tfds_name = name[len("tfds:"):] if name.startswith("tfds:") else name
    return _catalogue_builder(tfds_name, data_dir, download)


def test_split_of(builder) -> str:
    """The held-out split of a TFDS builder: `test`, or `validation` where that is its name."""
    info = builder.info
    test_split = _TEST_SPLIT.get(builder.name, "test")
    if info.splits and test_split not in info.splits:
        test_split = "validation" if "validation" in info.splits else test_split
    return test_split


def _catalogue_builder(tfds_name: str, data_dir: str, download: bool):
    """A prepared ArrayRecord builder of a catalogue dataset (downloads it if allowed)."""
    import tensorflow_datasets as tfds
    try:
        builder = tfds.builder(tfds_name, data_dir=data_dir, file_format="array_record")
    except tfds.core.registered.DatasetNotFoundError:
        raise ValueError(f"unknown dataset {tfds_name!r}; use one of {_EXAMPLES}") from None
    except (ValueError, AssertionError) as e:  # e.g. unknown config or version
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"cannot open TFDS dataset {tfds_name!r}: {first}") from None
    if download:
        # No-op when already prepared; on a user's machine this downloads and builds.
        try:
            builder.download_and_prepare()
        except (AssertionError, FileNotFoundError):
            if builder.MANUAL_DOWNLOAD_INSTRUCTIONS is None:
                raise
            raise ValueError(manual_files_message(tfds_name, data_dir)) from None
    return builder


def _directory_builder(path: str):
    """The builder of a TFDS dataset prepared in `path` (its version folder)."""
    import tensorflow_datasets as tfds
    if not os.path.isfile(os.path.join(path, "dataset_info.json")):
        raise ValueError(f"tfds_dir:{path} is not a prepared TFDS dataset (no dataset_info.json "
                         f"there); give the version folder, e.g. <data_dir>/NAME/CONFIG/1.0.0")
    return tfds.builder_from_directory(path)


def manual_files_message(tfds_name: str, data_dir: str) -> str:
    """One line: which files a manual-download dataset needs and where they go."""
    manual_dir = os.path.join(data_dir, "downloads", "manual")
    files = _MANUAL_FILES.get(tfds_name.split("/")[0], "the files its TFDS catalogue page lists")
    return (f"{tfds_name} is not prepared in {data_dir} and cannot be downloaded: put "
            f"{files} in {manual_dir} (the TFDS manual_dir), then run again")


def _read_builder(builder, name: str, max_train: int | None, max_test: int | None):
    """Read the train and test splits of a TFDS builder's ArrayRecord data source."""
    info = builder.info
    image_key, label_key = supervised_keys(info)
    image_feature, label_feature = info.features[image_key], info.features[label_key]
    shape = tuple(image_feature.shape)
    if len(shape) != 3 or None in shape:
        raise ValueError(
            f"{name} has images of shape {shape}; jaxdd needs one fixed (H, W, C) size "
            f"(use a resized variant, e.g. imagenet_resized/64x64)")
    if not hasattr(label_feature, "names"):
        raise ValueError(f"{name}: label {label_key!r} is not a ClassLabel")
    splits = ("train", test_split_of(builder))
    data = [open_data_source(builder, name, split) for split in splits]
    cache = _array_cache_path(builder, data)
    out = _read_array_cache(cache, shape)
    if out is None:
        full = max_train is None and max_test is None
        out = []
        for source, limit in zip(data, (max_train, max_test)):
            out += _read_source(source, image_key, label_key, shape, limit)
        if full and cache:
            _write_array_cache(cache, out)
    x_tr, y_tr, x_te, y_te = out
    out = [x_tr[:max_train], y_tr[:max_train], x_te[:max_test], y_te[:max_test]]
    version = f"{builder.name}/{builder.info.version}"
    return (*out, list(label_feature.names), f"tfds:{version}@{builder.data_dir}")


def _array_cache_path(builder, data_sources: list) -> str | None:
    """The cache file of a prepared ArrayRecord builder's decoded arrays (module docstring),
    or None: cache off, not a local folder of ArrayRecord files, or not real ArrayRecord
    data sources (e.g. under `tfds.testing.mock_data`)."""
    root = os.environ.get(DATA_CACHE_ENV, "")
    if root.lower() in ("off", "0", "none", "false"):
        return None
    if not all(type(d).__name__ == "ArrayRecordDataSource" for d in data_sources):
        return None
    folder = os.fspath(builder.data_dir)
    try:
        files = sorted((f, st.st_size, st.st_mtime_ns) for f in os.listdir(folder)
                       for st in [os.stat(os.path.join(folder, f))])
    except (OSError, TypeError):  # remote (gs://) or vanished folder: no cache
        return None
    if not any(".array_record" in f for f, _, _ in files):
        return None
    from jaxdd import safeio
    key = safeio.fingerprint([_ARRAY_CACHE_FORMAT, os.path.abspath(folder), files])
    root = os.path.expanduser(root or os.path.join("~", ".cache", "jaxdd", "arrays"))
    return os.path.join(root, f"{builder.name}-{key}.npz")


def _read_array_cache(path: str | None, shape: tuple[int, ...]) -> list[np.ndarray] | None:
    """[x_train, y_train, x_test, y_test] from a cache file; None if absent or unusable."""
    if not path or not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            out = [f[k] for k in _ARRAY_CACHE_KEYS]
    except Exception:  # truncated or foreign file: read the records again (and rewrite it)
        return None
    ok = all(x.dtype == np.uint8 and x.shape[1:] == tuple(shape) and y.shape == x.shape[:1]
             for x, y in (out[:2], out[2:]))
    return out if ok else None


def _write_array_cache(path: str, arrays: list[np.ndarray]) -> None:
    """Save the decoded arrays atomically; any failure only skips the cache."""
    from jaxdd import safeio
    raw = os.environ.get(DATA_CACHE_MAX_ENV, "2")
    try:
        limit = float(raw) * 2**30
    except ValueError:
        raise ValueError(f"${DATA_CACHE_MAX_ENV} must be a number of GB, got {raw!r}") from None
    if sum(a.nbytes for a in arrays) > limit:
        return
    try:
        safeio.makedirs(os.path.dirname(path))
        safeio.savez(path, **dict(zip(_ARRAY_CACHE_KEYS, arrays)))
    except (OSError, ValueError):
        pass


def open_data_source(builder, name: str, split: str, decoders=None):
    """`builder.as_data_source(split)`; a dataset prepared as tfrecord is a clear error."""
    try:
        return builder.as_data_source(split=split, decoders=decoders)
    except Exception as e:  # typically: prepared as tfrecord by a TensorFlow install
        raise RuntimeError(
            f"cannot read {name} split {split!r} as ArrayRecord from {builder.data_dir} "
            f"({e}); re-prepare it with tfds.builder({builder.name!r}).download_and_prepare("
            f"file_format='array_record')") from e


def supervised_keys(info) -> tuple[str, str]:
    keys = info.supervised_keys
    if isinstance(keys, (tuple, list)) and len(keys) == 2 and all(
            isinstance(k, str) for k in keys):
        return keys[0], keys[1]
    return "image", "label"


def _read_source(source, image_key: str, label_key: str, shape: tuple[int, ...],
                 limit: int | None) -> list[np.ndarray]:
    """All (or the first `limit`) records of a data source into (x uint8, y int32)."""
    n = len(source) if limit is None else min(limit, len(source))
    x = np.empty((n, *shape), np.uint8)
    y = np.empty((n,), np.int32)
    for start, records in iter_records(source, n):
        x[start:start + len(records)] = np.stack([r[image_key] for r in records])
        y[start:start + len(records)] = [int(r[label_key]) for r in records]
    return [x, y]


def iter_records(source, n: int):
    """(start, records) for the first n records of a data source, `_READ_CHUNK` at a time."""
    batched = hasattr(source, "__getitems__")
    for start in range(0, n, _READ_CHUNK):
        keys = list(range(start, min(start + _READ_CHUNK, n)))
        records = None
        if batched:
            try:
                records = source.__getitems__(keys)
            except TypeError:  # tfds.testing.mock_data's __getitems__ is broken
                batched = False
        if records is None:
            records = [source[i] for i in keys]
        yield start, records


# ---------------------------------------------------------------------------------------
# User data


def _load_npz(path: str):
    if not os.path.isfile(path):
        raise ValueError(f"npz:{path}: no such file")
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in f]
        if missing:
            raise ValueError(f"npz:{path} lacks {missing}; it needs x_train, y_train, "
                             f"x_test, y_test (and optionally class_names)")
        arrays = {k: f[k] for k in f.files}
    x_tr = _as_uint8_nhwc(arrays["x_train"], f"npz:{path} x_train")
    x_te = _as_uint8_nhwc(arrays["x_test"], f"npz:{path} x_test")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(f"npz:{path}: x_train images are {x_tr.shape[1:]} but x_test "
                         f"images are {x_te.shape[1:]}")
    y_tr = _as_labels(arrays["y_train"], len(x_tr), f"npz:{path} y_train")
    y_te = _as_labels(arrays["y_test"], len(x_te), f"npz:{path} y_test")
    if "class_names" in arrays:
        class_names = [str(c) for c in arrays["class_names"]]
    else:
        class_names = [str(k) for k in range(int(max(y_tr.max(initial=0),
                                                     y_te.max(initial=0))) + 1)]
    _check_npz_classes(f"npz:{path}", y_tr, y_te, class_names)
    return x_tr, y_tr, x_te, y_te, class_names, f"npz:{os.path.abspath(path)}"


def _check_npz_classes(what: str, y_tr: np.ndarray, y_te: np.ndarray,
                       class_names: list[str]) -> None:
    """At least 2 classes, labels 0..K-1 (not 1..K), and training images of every class."""
    present = np.unique(y_tr)
    if len(present) < 2:
        raise ValueError(f"{what}: found {len(present)} class(es) in y_train (labels "
                         f"{present.tolist()}); jaxdd needs at least 2 classes")
    lo = int(min(y_tr.min(), y_te.min(initial=y_tr.min())))
    hi = int(max(y_tr.max(), y_te.max(initial=y_tr.max())))
    k, default = len(class_names), _names_are_indices(class_names)
    if lo < 0 or hi >= k or (lo > 0 and default):
        fix = f": subtract {lo}" if lo > 0 and (default or hi - lo < k) else ""
        names = "" if default else f" but class_names has {k} entries"
        raise ValueError(f"{what}: labels run {lo}..{hi}{names}; jaxdd needs 0..K-1{fix}")
    counts = np.bincount(y_tr, minlength=k)[:k]
    if (empty := np.flatnonzero(counts == 0)).size:
        c = int(empty[0])
        raise ValueError(f"{what}: class {c} ({class_names[c]!r}) has no images in y_train "
                         f"({empty.size} empty class(es)); labels must be 0..K-1 with every "
                         f"class present: relabel without gaps")


def _names_are_indices(class_names: list[str]) -> bool:
    """True for the default names '0', '1', ... (no class_names array in the npz)."""
    return class_names == [str(i) for i in range(len(class_names))]


def _as_uint8_nhwc(x: np.ndarray, what: str) -> np.ndarray:
    """Accept (N,H,W) or (N,H,W,C) uint8 or float-in-[0,1] images; return uint8 NHWC."""
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4:
        raise ValueError(f"{what} has shape {x.shape}; expected (N, H, W, C) or (N, H, W)")
    if x.shape[1] in (1, 3) and x.shape[3] not in (1, 3, 4) and x.shape[1] < x.shape[2]:
        raise ValueError(f"{what} has shape {x.shape}, which looks like NCHW; jaxdd needs "
                         f"NHWC (np.transpose(x, (0, 2, 3, 1)))")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        bad = ~np.isfinite(x)
        if bad.any():
            images = np.flatnonzero(bad.reshape(len(x), -1).any(axis=1))
            raise ValueError(f"{what} has {int(bad.sum())} non-finite values (NaN/inf) in "
                             f"{images.size} image(s), first index {int(images[0])}; "
                             f"replace or drop them")
        if x.size and (x.min() < 0 or x.max() > 1):
            raise ValueError(f"{what} is float with values outside [0, 1]; give uint8 or [0, 1]")
        return np.round(x * 255).astype(np.uint8)
    if np.issubdtype(x.dtype, np.integer) and (not x.size or (x.min() >= 0 and x.max() <= 255)):
        return x.astype(np.uint8)
    raise ValueError(f"{what} has dtype {x.dtype}; expected uint8 or float in [0, 1]")


def _as_labels(y: np.ndarray, n: int, what: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{what} must be {n} integer labels, got {y.dtype} {y.shape}")
    return y.astype(np.int32)


def _check_labels(name: str, y: np.ndarray, num_classes: int, split: str) -> None:
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"{name} {split} labels must lie in [0, {num_classes}), "
                         f"got [{y.min()}, {y.max()}]")


def _list_classes(root: str) -> dict[str, list[str]]:
    """class name -> sorted image paths, for the sorted subfolders of root."""
    classes = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    return {c: sorted(os.path.join(root, c, f) for f in os.listdir(os.path.join(root, c))
                      if f.lower().endswith(_IMAGE_EXTS)) for c in classes}


def _read_image(path: str) -> np.ndarray:
    """One image file as (H, W) grey or (H, W, 3) RGB uint8; a bad file is a ValueError.

    A truncated, corrupt or non-image file is an error naming it, never skipped: a silently
    smaller class would change the dataset without a word.
    """
    return np.asarray(decode_image(path, path))


def decode_image(src: str | bytes, name: str, mode: str | None = None):
    """A PIL image of a file path or encoded bytes, converted to `mode` (default: L for
    grey images, RGB for anything else); a bad image is a ValueError naming `name`."""
    from PIL import Image
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            if mode is None:
                mode = "L" if im.mode in ("1", "L", "I;16", "I") else "RGB"
            return im.convert(mode)
    except (OSError, SyntaxError, ValueError, EOFError, struct.error) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if isinstance(e, Image.UnidentifiedImageError):
            reason = "not an image PIL can read"
        raise ValueError(f"cannot read image {name} ({reason}); fix or remove the "
                         f"file") from None


def _read_images(paths: list[str], what: str) -> np.ndarray:
    images = [_read_image(p) for p in paths]
    grey = all(im.ndim == 2 for im in images)
    images = [im[..., None] if grey else (np.stack([im] * 3, -1) if im.ndim == 2 else im)
              for im in images]
    sizes = sorted({im.shape for im in images})
    if len(sizes) > 1:
        raise ValueError(f"{what}: images have different sizes {sizes[:4]}; resize them to "
                         f"one size first")
    return np.stack(images)


def _check_class_folders(root: str, class_names: list[str],
                         train: dict[str, list[str]]) -> None:
    """At least 2 class folders, each with images; the error names the offending folder."""
    if len(class_names) < 2:
        raise ValueError(f"{root}: found 1 class folder ({class_names[0]!r}); jaxdd needs "
                         f"at least 2 classes: add a folder of images per class")
    if empty := [c for c in class_names if not train[c]]:
        raise ValueError(f"class folder {os.path.join(root, empty[0])} has no images "
                         f"({', '.join(_IMAGE_EXTS)}); remove it or add images")


def folder_listing(path: str) -> tuple[list[str], np.ndarray, np.ndarray, list[str]]:
    """(image paths, labels int32, test mask, class names) of `folder:PATH`; no pixels read.

    Paths are train images class-major then, with a test/ folder, its images class-major;
    without one, `test_mask` marks the fixed 20 % held-out images (seed 0).
    """
    if not os.path.isdir(path):
        raise ValueError(f"folder:{path}: no such directory")
    train_root = os.path.join(path, "train")
    has_split = os.path.isdir(train_root)
    train = _list_classes(train_root if has_split else path)
    class_names = [c for c in train if c != "test"]
    if not class_names or not any(train[c] for c in class_names):
        raise ValueError(f"folder:{path}: expected class subfolders of images "
                         f"(PATH/<class>/*.png or PATH/train/<class>/*.png)")
    _check_class_folders(train_root if has_split else path, class_names, train)
    paths = [p for c in class_names for p in train[c]]
    labels = np.array([k for k, c in enumerate(class_names) for _ in train[c]], np.int32)
    test_root = os.path.join(path, "test")
    if os.path.isdir(test_root):
        test = _list_classes(test_root)
        unknown = sorted(set(test) - set(class_names))
        if unknown:
            raise ValueError(f"folder:{path}: test classes {unknown} are not in train")
        test_paths = [p for c in class_names for p in test.get(c, [])]
        y_te = np.array([k for k, c in enumerate(class_names) for _ in test.get(c, [])],
                        np.int32)
        test_mask = np.r_[np.zeros(len(paths), bool), np.ones(len(test_paths), bool)]
        return paths + test_paths, np.r_[labels, y_te].astype(np.int32), test_mask, class_names
    # hold out a fixed 20 % of each class as the test split
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(labels), bool)
    for k in range(len(class_names)):
        ix = np.flatnonzero(labels == k)
        test_mask[rng.permutation(ix)[:int(FOLDER_TEST_FRACTION * len(ix))]] = True
    return paths, labels, test_mask, class_names


def _load_folder(path: str):
    paths, labels, test_mask, class_names = folder_listing(path)
    if os.path.isdir(os.path.join(path, "test")):
        n_tr = int((~test_mask).sum())
        x_tr, y_tr = _read_images(paths[:n_tr], f"folder:{path}"), labels[:n_tr]
        test_paths, y_te = paths[n_tr:], labels[n_tr:]
        x_te = _read_images(test_paths, f"folder:{path}/test") if test_paths else (
            np.zeros((0, *x_tr.shape[1:]), np.uint8))
        if x_te.shape[1:] != x_tr.shape[1:]:
            raise ValueError(f"folder:{path}: test images are {x_te.shape[1:]}, train "
                             f"images are {x_tr.shape[1:]}")
    else:
        x = _read_images(paths, f"folder:{path}")
        x_tr, y_tr, x_te, y_te = x[~test_mask], labels[~test_mask], x[test_mask], labels[
            test_mask]
    return x_tr, y_tr, x_te, y_te, class_names, f"folder:{os.path.abspath(path)}"
