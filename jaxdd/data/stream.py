"""Streamed input pipeline for data larger than memory, on `grain`.

Sources (random access; labels of a whole split read without decoding a pixel):

- `open_source("imagenet2012", "train")`: a TFDS builder's ArrayRecord data source, read with
  the image feature left encoded (`tfds.decode.SkipDecoding`); images are decoded in the
  loader's workers (where a data source cannot skip decoding, as under
  `tfds.testing.mock_data`, records come decoded). `labels()` makes one pass over the split's records: it reads every
  record's bytes (the image bytes are read from disk but never decoded; ImageNet train is
  ~140 GB of reading) and parses only the label; it runs once per source object, in the
  main process, before workers start. A manual-download dataset that is not prepared
  (imagenet2012) is a one-line error naming the files and the TFDS manual_dir
  (`<data_dir>/downloads/manual`).
- `open_source("folder:PATH", "train")`: the `folder:` layout of `jaxdd.data.sources`, listed
  and labelled from the directory names only; images of any size are read and decoded in
  the workers.
- `memory_source(dataset, "train")`: the arrays of an in-memory `Dataset` (small data): the
  same loader interface, no decode.
- `split_validation_source(source)`: the seeded class-balanced validation split of
  `jaxdd.data.sources.split_validation`, from labels only; `class_index(source)`.

Loader (`make_loader`): a pure function of (seed, epoch, step).

- Order: epoch e is the permutation `grain.experimental.index_shuffle` with a seed derived
  from (seed, e) (O(1) memory, random access). Global batch s of the epoch is positions
  [s*B, (s+1)*B) of that order (B = global batch, the remainder of an epoch is dropped);
  process p of P reads only positions [s*B + p*B/P, s*B + (p+1)*B/P) of it, so processes
  read disjoint slices that together cover the epoch, and the global batch does not
  depend on P.
- Augmentation (train): random-resized-crop (area 0.08-1, aspect 3/4-4/3, torchvision's
  10 tries then a centre fallback) to `image_size`, then a horizontal flip with p = 1/2,
  drawn from `np.random.default_rng([seed, epoch, record index])`: the same record in the
  same epoch is augmented the same way whatever the process count, worker count or
  resume point. Eval: resize the shorter side to `resize_size` (default
  image_size * 256/224, i.e. 256 for 224) and centre-crop `image_size` (torchvision's
  Resize + CenterCrop). `image_size=None` keeps the stored size (fixed-size sources; train
  then only flips).
- Resume: `make_loader(..., start_step=k)` yields exactly batches k, k+1, ... of a run
  started at step 0 (the grain `MapDataset` is indexed by step; nothing depends on
  iterator state).
- Decoding and augmentation run in `worker_count` grain worker processes (0: threads of
  the main process); batches come out as `jax.Array`s placed with a `NamedSharding`
  (`jax.make_array_from_process_local_data`), `prefetch` batches ahead of the consumer.
  Eval covers the split once; its last batch is padded (mask False, index -1).

Every batch is {"image": (B,H,W,C) uint8 (float32 with `preprocess`), "label": (B,) int32,
"mask": (B,) bool, "index": (B,) int64 record index, -1 for padding}.

Corrupt or undecodable images: skipped and counted, not fatal (on_corrupt="skip", the
default): the slot keeps its place in the batch (shapes stay static) with mask False and a
zero image, the record is named in a warning on the `jaxdd.data.stream` logger
("skipped undecodable image (N so far): cannot read image PATH (reason) ..."), and
`Loader.corrupt` lists the name each time the record comes up (once per epoch). Weight the
loss by `mask` (and train with `Model.apply_train(v, x, mask)`, so BatchNorm skips the slot).
on_corrupt="error" raises a ValueError naming the file instead. (The in-memory
`load_dataset` path stays strict: it reads everything up front and an unreadable file is
an error there.)
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import logging
import math
import os
import sys
from typing import Any, Iterator, Protocol

import numpy as np

from jaxdd.data import sources

log = logging.getLogger(__name__)

TRAIN_SCALE = (0.08, 1.0)   # random-resized-crop area fraction (torchvision default)
TRAIN_RATIO = (3 / 4, 4 / 3)  # ... aspect ratio w/h, sampled log-uniformly
EVAL_RESIZE_RATIO = 256 / 224  # eval: shorter side = image_size * this, then centre crop
_CROP_TRIES = 10            # random-resized-crop attempts before the centre fallback


# ---------------------------------------------------------------------------------------
# Sources


class RecordSource(Protocol):
    """Random access to (encoded bytes or decoded HWC uint8 image, label) records."""

    name: str
    class_names: list[str]
    channels: int                                # 1 (grey) or 3 (RGB)
    image_shape: tuple[int, int, int] | None     # fixed (H, W, C), or None (variable)

    def __len__(self) -> int: ...
    def labels(self) -> np.ndarray: ...          # (N,) int32, no pixel decoded
    def read(self, index: int) -> tuple[bytes | np.ndarray, int]: ...
    def describe(self, index: int) -> str: ...   # the file / record, for messages


@dataclasses.dataclass(eq=False)
class TfdsSource:
    """A split of a TFDS builder, read through its ArrayRecord data source."""

    data_source: Any = dataclasses.field(repr=False)  # images left encoded (SkipDecoding)
    name: str
    split: str
    image_key: str
    label_key: str
    class_names: list[str]
    channels: int
    image_shape: tuple[int, int, int] | None
    _labels: np.ndarray | None = dataclasses.field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.data_source)

    def labels(self) -> np.ndarray:
        if self._labels is None:  # one pass over the records; images are not decoded
            y = np.empty(len(self), np.int32)
            for start, records in sources.iter_records(self.data_source, len(self)):
                y[start:start + len(records)] = [int(r[self.label_key]) for r in records]
            y.setflags(write=False)
            self._labels = y
        return self._labels

    def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
        record = self.data_source[int(index)]
        return record[self.image_key], int(record[self.label_key])

    def describe(self, index: int) -> str:
        return f"{self.name} {self.split} record {int(index)}"


@dataclasses.dataclass(eq=False)
class FolderSource:
    """Image files listed and labelled from a `folder:` layout; read lazily."""

    paths: list[str] = dataclasses.field(repr=False)
    labels_N: np.ndarray = dataclasses.field(repr=False)
    name: str
    class_names: list[str]
    channels: int
    image_shape: tuple[int, int, int] | None = None

    def __len__(self) -> int:
        return len(self.paths)

    def labels(self) -> np.ndarray:
        return self.labels_N

    def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
        with open(self.paths[int(index)], "rb") as f:
            return f.read(), int(self.labels_N[int(index)])

    def describe(self, index: int) -> str:
        return self.paths[int(index)]


@dataclasses.dataclass(eq=False)
class ArraySource:
    """In-memory uint8 NHWC arrays (a split of a `Dataset`)."""

    x_NHWC: np.ndarray = dataclasses.field(repr=False)
    y_N: np.ndarray = dataclasses.field(repr=False)
    name: str
    class_names: list[str]

    @property
    def channels(self) -> int:
        return int(self.x_NHWC.shape[-1])

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.x_NHWC.shape[1:])

    def __len__(self) -> int:
        return len(self.y_N)

    def labels(self) -> np.ndarray:
        return self.y_N

    def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
        return self.x_NHWC[int(index)], int(self.y_N[int(index)])

    def describe(self, index: int) -> str:
        return f"{self.name} image {int(index)}"


@dataclasses.dataclass(eq=False)
class SubsetSource:
    """The records `indices` of another source, in that order."""

    base: Any = dataclasses.field(repr=False)
    indices: np.ndarray = dataclasses.field(repr=False)

    name = property(lambda self: self.base.name)
    class_names = property(lambda self: self.base.class_names)
    channels = property(lambda self: self.base.channels)
    image_shape = property(lambda self: self.base.image_shape)

    def __len__(self) -> int:
        return len(self.indices)

    def labels(self) -> np.ndarray:
        return self.base.labels()[self.indices]

    def read(self, index: int) -> tuple[bytes | np.ndarray, int]:
        return self.base.read(self.indices[int(index)])

    def describe(self, index: int) -> str:
        return self.base.describe(self.indices[int(index)])


def open_source(name: str, split: str = "train", *, data_dir: str | None = None,
                download: bool = True) -> RecordSource:
    """A random-access source of `name` (TFDS name or `folder:PATH`); split train or test.

    `test` is the dataset's held-out split (`validation` for imagenet2012). `npz:PATH` is
    read into memory (it is a single array file).
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if name.startswith("folder:"):
        path = name[len("folder:"):]
        paths, labels, test_mask, class_names = sources.folder_listing(path)
        keep = test_mask if split == "test" else ~test_mask
        chosen = [p for p, k in zip(paths, keep) if k]
        channels = 1 if chosen and _is_grey(chosen[0]) else 3
        return FolderSource(chosen, labels[keep], name, class_names, channels)
    if name.startswith("npz:"):
        return memory_source(sources.load_dataset(name, val_per_class=0), split)
    import tensorflow_datasets as tfds
    data_dir = os.path.abspath(data_dir or sources.default_data_dir())
    builder = sources.tfds_builder(name, data_dir, download)
    info = builder.info
    image_key, label_key = sources.supervised_keys(info)
    label_feature = info.features[label_key]
    if not hasattr(label_feature, "names"):
        raise ValueError(f"{name}: label {label_key!r} is not a ClassLabel")
    shape = tuple(info.features[image_key].shape)
    tfds_split = sources.test_split_of(builder) if split == "test" else "train"
    data_source = sources.open_data_source(builder, name, tfds_split)
    if isinstance(info.features[image_key], tfds.features.Image) and len(data_source):
        try:  # images left encoded, decoded in the workers; else read decoded (see above)
            encoded = sources.open_data_source(
                builder, name, tfds_split, {image_key: tfds.decode.SkipDecoding()})
            encoded[0]
            data_source = encoded
        except Exception:  # e.g. tfds.testing.mock_data, whose SkipDecoding needs TF
            pass
    return TfdsSource(data_source, name, tfds_split, image_key, label_key,
                      list(label_feature.names), int(shape[-1]),
                      shape if None not in shape else None)


def memory_source(dataset: sources.Dataset, split: str = "train") -> ArraySource:
    """The `train`, `val` or `test` arrays of an in-memory `Dataset` as a source."""
    if split not in ("train", "val", "test"):
        raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
    return ArraySource(getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}"),
                       f"{dataset.name} {split}", dataset.class_names)


def split_validation_source(source: RecordSource, val_per_class: int | None = None,
                            seed: int = 0) -> tuple[SubsetSource, SubsetSource]:
    """(train, val) of `source` by `sources.split_validation`, from labels only."""
    train_idx, val_idx = sources.split_validation(
        source.labels(), len(source.class_names), val_per_class, seed, name=source.name)
    return SubsetSource(source, train_idx), SubsetSource(source, val_idx)


def class_index(source: RecordSource) -> list[np.ndarray]:
    """Record indices of each class (per-class random access), from labels only."""
    y = source.labels()
    return [np.flatnonzero(y == k) for k in range(len(source.class_names))]


def _is_grey(path: str) -> bool:
    """Whether an image file is greyscale, from its header (PIL opens lazily)."""
    from PIL import Image
    try:
        with Image.open(path) as im:
            return im.mode in ("1", "L", "I;16", "I")
    except Exception:  # an unreadable first file is reported when it is loaded
        return False


# ---------------------------------------------------------------------------------------
# Per-record transform (runs in the grain workers)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale=TRAIN_SCALE, ratio=TRAIN_RATIO) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of torchvision's RandomResizedCrop.get_params."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(_CROP_TRIES):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return left, top, left + w, top + h
    in_ratio = width / height  # fallback: the largest centre crop within the ratio range
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    top, left = (height - h) // 2, (width - w) // 2
    return left, top, left + w, top + h


def resize_centre_crop(im, resize_size: int, image_size: int):
    """torchvision Resize(resize_size) (shorter side) + CenterCrop(image_size) of a PIL image."""
    from PIL import Image
    w, h = im.size
    if w <= h:
        size = (resize_size, int(resize_size * h / w))
    else:
        size = (int(resize_size * w / h), resize_size)
    im = im.resize(size, Image.BILINEAR)
    top = int(round((size[1] - image_size) / 2.0))
    left = int(round((size[0] - image_size) / 2.0))
    return im.crop((left, top, left + image_size, top + image_size))


@functools.lru_cache(maxsize=64)
def _epoch_seed(seed: int, epoch: int) -> int:
    """32-bit shuffle seed of (seed, epoch); distinct pairs give independent orders."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0])


@dataclasses.dataclass(frozen=True, eq=False)
class _Plan:
    """Flat local position -> one transformed record; pickled into every grain worker."""

    source: Any
    seed: int
    train: bool
    local_batch: int
    global_batch: int
    process_index: int
    steps_per_epoch: int
    image_size: int | None
    resize_size: int | None
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip: bool
    image_shape: tuple[int, int, int]  # output (H, W, C)

    def locate(self, position: int) -> tuple[int, int]:
        """(record index or -1 for padding, epoch) of local flat position `position`."""
        step, slot = divmod(position, self.local_batch)
        epoch, s = divmod(step, self.steps_per_epoch)
        g = s * self.global_batch + self.process_index * self.local_batch + slot
        n = len(self.source)
        if not self.train:
            return (g if g < n else -1), epoch
        return grain_index_shuffle(g, n, _epoch_seed(self.seed, epoch)), epoch

    def __call__(self, position: int) -> dict[str, Any]:
        index, epoch = self.locate(int(position))
        out = {"image": np.zeros(self.image_shape, np.uint8), "label": np.int32(0),
               "mask": np.bool_(False), "index": np.int64(index)}
        if index < 0:
            return out
        data, label = self.source.read(index)
        out["label"] = np.int32(label)
        try:
            out["image"] = self.transform(data, index, epoch)
        except ValueError:  # undecodable: the main process names and counts it
            return out
        out["mask"] = np.bool_(True)
        return out

    def transform(self, data: bytes | np.ndarray, index: int, epoch: int) -> np.ndarray:
        """Decode (bytes) and augment (train) or resize + centre-crop (eval) one record."""
        rng = np.random.default_rng([self.seed, epoch, index]) if self.train else None
        if self.image_size is None:  # stored size kept: train only flips
            x = np.asarray(data) if isinstance(data, np.ndarray) else np.asarray(
                self._decode(data, index))
            x = x.reshape(x.shape[0], x.shape[1], -1)
            if x.shape != self.image_shape:
                raise ValueError(f"{self.source.describe(index)} is {x.shape}, not "
                                 f"{self.image_shape}")
            return x[:, ::-1] if self.train and self.flip and rng.random() < 0.5 else x
        from PIL import Image
        if isinstance(data, np.ndarray):
            im = Image.fromarray(data[..., 0] if data.shape[-1] == 1 else data)
            im = im.convert(self._mode)
        else:
            im = self._decode(data, index)
        size = self.image_size
        if self.train:
            box = random_resized_crop_box(im.width, im.height, rng, self.scale, self.ratio)
            im = im.resize((size, size), Image.BILINEAR, box=box)
            if self.flip and rng.random() < 0.5:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
        else:
            im = resize_centre_crop(im, self.resize_size, size)
        return np.asarray(im).reshape(self.image_shape)

    @property
    def _mode(self) -> str:
        return "L" if self.image_shape[-1] == 1 else "RGB"

    def _decode(self, data: bytes, index: int):
        return sources.decode_image(data, self.source.describe(index), self._mode)


def grain_index_shuffle(position: int, n: int, seed: int) -> int:
    """Record at `position` of grain's random-access permutation of range(n)."""
    if n == 1:
        return 0
    import grain
    return int(grain.experimental.index_shuffle(position, max_index=n - 1, seed=seed,
                                                rounds=4))


# ---------------------------------------------------------------------------------------
# Loader


class Loader:
    """Batches of a `make_loader` pipeline: iterate for device arrays, `host_batches()` for
    this process's numpy slices. `corrupt` lists the records skipped as undecodable."""

    def __init__(self, plan: _Plan, *, start_step: int, stop_step: int, worker_count: int,
                 read_threads: int, on_corrupt: str, sharding, preprocess, prefetch: int):
        self.plan, self.start_step, self.stop_step = plan, start_step, stop_step
        self.worker_count, self.read_threads = worker_count, read_threads
        self.on_corrupt, self.sharding, self.prefetch = on_corrupt, sharding, prefetch
        self.preprocess = preprocess
        self.corrupt: list[str] = []

    steps_per_epoch = property(lambda self: self.plan.steps_per_epoch)
    global_batch = property(lambda self: self.plan.global_batch)
    local_batch = property(lambda self: self.plan.local_batch)

    def __len__(self) -> int:
        return self.stop_step - self.start_step

    def _dataset(self):
        import grain
        lb = self.plan.local_batch
        ds = grain.MapDataset.range(self.start_step * lb, self.stop_step * lb)
        ds = ds.map(self.plan).batch(lb, drop_remainder=True)
        it = ds.to_iter_dataset(grain.ReadOptions(num_threads=self.read_threads,
                                                  prefetch_buffer_size=2 * self.read_threads))
        if self.worker_count > 0:
            from absl import flags
            if not flags.FLAGS.is_parsed():  # grain's workers read absl flags
                flags.FLAGS.mark_as_parsed()
            it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=self.worker_count))
        return it

    def host_batches(self) -> Iterator[dict[str, np.ndarray]]:
        """This process's slice of each global batch, as numpy (decoded in the workers)."""
        it = iter(self._dataset())
        try:
            for batch in it:
                self._check_corrupt(batch)
                yield batch
        finally:
            if hasattr(it, "close"):
                it.close()

    def _check_corrupt(self, batch: dict[str, np.ndarray]) -> None:
        for index in batch["index"][(batch["index"] >= 0) & ~batch["mask"]]:
            name = self.plan.source.describe(index)
            try:  # decode again here for the reason (rare)
                self.plan.transform(self.plan.source.read(index)[0], int(index), 0)
                reason = f"{name} cannot be decoded"
            except ValueError as e:
                reason = str(e) if name in str(e) else f"{name}: {e}"
            if self.on_corrupt == "error":
                raise ValueError(reason)
            self.corrupt.append(name)
            log.warning("skipped undecodable image (%d so far): %s", len(self.corrupt), reason)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        """Global `jax.Array` batches, `prefetch` transfers ahead of the consumer."""
        queue = collections.deque()
        for batch in self.host_batches():
            queue.append(self._place(batch))
            if len(queue) > self.prefetch:
                yield queue.popleft()
        while queue:
            yield queue.popleft()

    def _place(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        import jax
        from jax.sharding import NamedSharding, PartitionSpec
        row = NamedSharding(self.sharding.mesh, PartitionSpec(self.sharding.spec[0]))
        out = {k: jax.make_array_from_process_local_data(
            self.sharding if v.ndim == 4 else row, v) for k, v in batch.items()}
        if self.preprocess is not None:
            out["image"] = _jitted_apply(self.preprocess)(out["image"])
        return out


@functools.lru_cache(maxsize=8)
def _jitted_apply(preprocess):
    import jax
    from jaxdd.data import preprocess as pre
    return jax.jit(functools.partial(pre.apply, preprocess))


def output_shape(source: RecordSource, image_size: int | None) -> tuple[int, int, int]:
    """(H, W, C) of what the loader gives for `source`: image_size square, or the one
    stored size (None; an error for variable-size sources)."""
    if image_size is None:
        if source.image_shape is None:
            raise ValueError(f"{source.name} has images of different sizes; set image_size "
                             f"(e.g. --set image_size=224) to decode them to one size")
        return tuple(source.image_shape)
    if int(image_size) < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    return (int(image_size), int(image_size), int(source.channels))


def make_loader(source: RecordSource, *, batch_size: int, seed: int = 0, train: bool = True,
                start_step: int = 0, num_epochs: int | None = None,
                image_size: int | None = 224, resize_size: int | None = None,
                scale: tuple[float, float] = TRAIN_SCALE,
                ratio: tuple[float, float] = TRAIN_RATIO, flip: bool = True,
                process_index: int | None = None, process_count: int | None = None,
                worker_count: int = 0, read_threads: int = 2, sharding=None,
                preprocess=None, on_corrupt: str = "skip", prefetch: int = 2) -> Loader:
    """A grain pipeline over `source` (see the module docstring for its guarantees).

    Args:
      batch_size: global batch (all processes); divisible by process_count.
      seed / start_step: order and augmentation are a function of (seed, epoch, step);
        start_step k resumes at global step k (epoch = k // steps_per_epoch).
      train: shuffle + random-resized-crop + flip, epochs of full batches; else one pass
        in stored order, resize + centre-crop, the last batch padded (mask False).
      num_epochs: train epochs (None: endless); eval always makes one pass.
      image_size / resize_size: output side; eval's shorter side before the centre crop
        (default image_size * 256 / 224); image_size None keeps a fixed stored size.
      scale / ratio / flip: random-resized-crop area and aspect ranges, horizontal flip.
      process_index / process_count: this host's slice (default: jax's).
      worker_count: grain worker processes decoding and augmenting (0: in-process
        threads, `read_threads` of them).
      sharding: `NamedSharding` of the (B, H, W, C) images (batch on its first mesh axis;
        1-D fields use that axis); default: all devices on one "data" axis.
      preprocess: a fitted `Preprocess` applied on the device (uint8 -> float32).
      on_corrupt: "skip" (mask False, named in a warning, counted) or "error".
    """
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec
    process_index = jax.process_index() if process_index is None else int(process_index)
    process_count = jax.process_count() if process_count is None else int(process_count)
    if batch_size % process_count:
        raise ValueError(f"batch_size {batch_size} is not divisible by {process_count} "
                         f"processes")
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index {process_index} not in [0, {process_count})")
    if on_corrupt not in ("skip", "error"):
        raise ValueError(f"on_corrupt must be 'skip' or 'error', got {on_corrupt!r}")
    n = len(source)
    image_shape = output_shape(source, image_size)
    if train:
        steps = n // batch_size
        if steps == 0:
            raise ValueError(f"{source.name} has {n} images, fewer than one batch of "
                             f"{batch_size}")
        stop = sys.maxsize // batch_size if num_epochs is None else steps * int(num_epochs)
    else:
        steps = stop = -(-n // batch_size)
    if not 0 <= start_step <= stop:
        raise ValueError(f"start_step {start_step} not in [0, {stop}]")
    plan = _Plan(source, int(seed), bool(train), batch_size // process_count, batch_size,
                 process_index, steps, image_size,
                 resize_size or (round(image_size * EVAL_RESIZE_RATIO) if image_size else None),
                 tuple(scale), tuple(ratio), bool(flip), image_shape)
    if sharding is None:
        sharding = NamedSharding(Mesh(np.array(jax.devices()), ("data",)),
                                 PartitionSpec("data"))
    return Loader(plan, start_step=int(start_step), stop_step=stop,
                  worker_count=int(worker_count), read_threads=int(read_threads),
                  on_corrupt=on_corrupt, sharding=sharding, preprocess=preprocess,
                  prefetch=int(prefetch))


# ---------------------------------------------------------------------------------------
# A streamed dataset: the splits as sources (what the stages use instead of `Dataset`)


@dataclasses.dataclass(eq=False)
class StreamedDataset:
    """A dataset read through the loader: sources of its splits, no pixels in memory.

    The stages take it where they take an in-memory `Dataset`: `train` has the seeded
    class-balanced validation split (`val`) held out, as `load_dataset` does (built from
    the labels on first use: opening a dataset reads no record); `test` is the held-out
    split (imagenet2012: `validation`). `image_shape` is the model input: every image is
    decoded and resized to it (train: random-resized-crop + flip; eval and `read_images`:
    resize + centre-crop)."""

    name: str
    full: Any = dataclasses.field(repr=False)     # the whole train split
    test: Any = dataclasses.field(repr=False)
    image_shape: tuple[int, int, int]
    class_names: list[str] = dataclasses.field(repr=False)
    image_size: int | None = None   # None: the sources' one stored size
    workers: int = 0                # grain worker processes (0: threads of this process)
    seed: int = 0                   # of the validation split
    val_per_class: int | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @functools.cached_property
    def _split(self) -> tuple[Any, Any]:
        if self.val_per_class == 0:
            return self.full, None
        return split_validation_source(self.full, self.val_per_class, self.seed)

    train = property(lambda self: self._split[0])
    val = property(lambda self: self._split[1])

    def loader(self, split: str, *, batch_size: int, train: bool = False,
               indices: np.ndarray | None = None, **kw) -> Loader:
        """`make_loader` over `split` (train | val | test) at this dataset's image size;
        `indices`: only these records of the split, in this order (an eval pass in a
        chosen order, e.g. the conv targets' permutation)."""
        source = getattr(self, split)
        if indices is not None:
            source = SubsetSource(source, np.asarray(indices, np.int64))
        return make_loader(source, batch_size=batch_size, train=train,
                           image_size=self.image_size, worker_count=self.workers, **kw)


def open_streamed(name: str, image_size: int | None, *, seed: int = 0,
                  val_per_class: int | None = None, data_dir: str | None = None,
                  workers: int = 0) -> StreamedDataset:
    """`name`'s splits as sources (nothing read yet); see `StreamedDataset`."""
    full = open_source(name, "train", data_dir=data_dir)
    test = open_source(name, "test", data_dir=data_dir)
    if len(full.class_names) < 2:
        raise ValueError(f"{name} has {len(full.class_names)} class(es); jaxdd needs at least 2")
    shape = output_shape(full, image_size)
    return StreamedDataset(name, full, test, shape, list(full.class_names),
                           None if image_size is None else int(image_size), int(workers),
                           int(seed), val_per_class)


def read_images(source: RecordSource, indices: np.ndarray, image_shape: tuple[int, int, int],
                threads: int = 0) -> np.ndarray:
    """Records `indices` of `source` decoded and resized (+ centre-crop) to `image_shape`,
    as (len(indices), H, W, C) uint8 in this process (a few images: real init, samples,
    one step's RDED pools), decoded by `threads` threads (0: one per CPU; PIL releases the
    GIL while it decodes; each image depends only on its record, so the result does not
    depend on the thread count).
    An undecodable image is an error here (the caller picked it)."""
    plan = _Plan(source, 0, False, 1, 1, 0, 1, int(image_shape[0]),
                 round(int(image_shape[0]) * EVAL_RESIZE_RATIO), TRAIN_SCALE, TRAIN_RATIO,
                 False, tuple(image_shape))
    if source.image_shape is not None and tuple(source.image_shape) == tuple(image_shape):
        plan = dataclasses.replace(plan, image_size=None)
    flat = [int(i) for i in np.asarray(indices).reshape(-1)]
    out = np.empty((len(flat), *image_shape), np.uint8)

    def one(j: int) -> None:
        out[j] = plan.transform(source.read(flat[j])[0], flat[j], 0)

    threads = min(len(flat), threads or os.cpu_count() or 1)
    if threads <= 1:
        for j in range(len(flat)):
            one(j)
    else:
        with concurrent.futures.ThreadPoolExecutor(threads) as pool:
            list(pool.map(one, range(len(flat))))   # list(): re-raises a worker's error
    return out


def sample_class_indices(labels: np.ndarray, num_classes: int, per_class: int, seed: int
                         ) -> np.ndarray:
    """(num_classes, per_class) record indices drawn without replacement per class, seeded;
    a class with fewer records is a clear error."""
    rng = np.random.default_rng(seed)
    out = np.empty((num_classes, per_class), np.int64)
    for k in range(num_classes):
        idx = np.flatnonzero(labels == k)
        if len(idx) < per_class:
            raise ValueError(f"class {k} has {len(idx)} training images, fewer than the "
                             f"{per_class} needed; lower ipc")
        out[k] = idx[rng.permutation(len(idx))[:per_class]]
    return out


def fit_streamed_preprocess(kind: str, data: StreamedDataset, seed: int = 0,
                            max_images: int = 2048):
    """A `Preprocess` for a streamed dataset: `normalize` with the dataset's known constants
    (imagenet2012: torchvision's), else fitted on a seeded sample of <= `max_images`
    training images (centre crops at the model size); `none` as it is. ZCA needs every
    image in memory and is refused."""
    from jaxdd.data import preprocess as pre
    if kind not in ("normalize", "none"):
        raise ValueError(f"preprocess {kind!r} needs the whole training set in memory; a "
                         f"streamed dataset uses normalize or none")
    sample = np.zeros((1, *data.image_shape), np.uint8)
    if kind == "normalize" and pre.known_stats(data.name) is None:
        n = len(data.train)
        idx = np.random.default_rng(seed).permutation(n)[:min(n, max_images)]
        sample = read_images(data.train, np.sort(idx), data.image_shape, threads=data.workers)
    return pre.fit_preprocess(kind, sample, dataset_name=data.name)


def loader_accuracy(apply_fn, variables, loader: Loader) -> np.ndarray:
    """Top-1 accuracy over one eval pass of `loader`: `apply_fn(variables, x_NHWC)` returns
    (..., B, K) logits (a leading axis for vmapped networks); padding and skipped images are
    not counted. The images stay sharded as the loader placed them."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def correct(v, x, y, mask):
        pred = apply_fn(v, x).argmax(-1)  # (..., B): explicit broadcasts of y and mask
        hit = (pred == jnp.broadcast_to(y, pred.shape)) & jnp.broadcast_to(mask, pred.shape)
        return hit.sum(-1, dtype=jnp.int32), mask.sum(dtype=jnp.int32)

    total, count = 0, 0
    for b in loader:
        c, m = correct(variables, b["image"], b["label"], b["mask"])
        total, count = total + np.asarray(c, np.int64), count + int(m)
    if count == 0:
        raise ValueError("no decodable image in the evaluation split")
    return np.asarray(total, np.float64) / count
