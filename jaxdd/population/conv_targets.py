"""G-VBSM conv-statistics targets as a versioned on-disk artefact (computed once per teacher).

`jaxdd.methods.statistics.targets.compute_conv_targets` makes one pass over the real
training set; on CIFAR-100 with a ResNet-18 that is an epoch of inference, so the result is
cached next to the teacher and reused by every recover run on it. A streamed dataset
(`jaxdd.data.stream.StreamedDataset`, e.g. ImageNet at `image_size`) makes the same pass
through its eval loader (resize + centre-crop to the model size, batches split over the
mesh, padding and undecodable records masked out): `streamed_conv_targets`, equal to the
in-memory targets of the same images. A cache entry is a directory::

    DIR/targets.npz     l{i}_mean, l{i}_var, l{i}_patch_mean, l{i}_patch_var per conv layer
    DIR/targets.json    format, format_version, key (below), layer paths and shapes,
                        sha256 of targets.npz; written last, so its presence = complete

The key names everything the targets depend on: the teacher's variables (sha256 of every
leaf), model name, dataset name and fingerprint, preprocessing hash, augmentation (crop
padding, flip, batch size, seed), cell size and per-channel mode, and the format version;
a streamed dataset adds `streamed` (its decoded image size) and is fingerprinted by its
labels.
`load` refuses an entry whose key differs (naming the fields) or whose npz does not match
its recorded hash; nothing mismatched or corrupt is ever used silently. `load_or_compute`
computes a missing entry, and replaces a bad one only when asked (`recompute=True`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jax.sharding import NamedSharding, PartitionSpec

from jaxdd import data as jdata
from jaxdd import safeio
from jaxdd.data.stream import StreamedDataset
from jaxdd.safeio import sha256_file
from jaxdd.methods.statistics.capture import ConvStat, conv_layer_paths
from jaxdd.methods.statistics.recover import pixel_bounds, stack_teachers
from jaxdd.methods.statistics.targets import (compute_conv_targets, streamed_conv_targets,
                                              target_order)
from jaxdd.population import train as population
from jaxdd.run.mesh import make_mesh, put_replicated

FORMAT = "jaxdd.conv_targets"
FORMAT_VERSION = 2  # 2: maps shorter than a cell are upsampled to one cell (reference)
NPZ, JSON = "targets.npz", "targets.json"
_FIELDS = ("mean", "var", "patch_mean", "patch_var")

__all__ = ["ConvTargetsError", "variables_fingerprint", "make_key", "key_hash", "save", "load",
           "load_or_compute", "teacher_targets"]


class ConvTargetsError(ValueError):
    """A conv-target cache entry that is absent, corrupt or built for something else."""


def variables_fingerprint(variables: Any) -> str:
    """sha256 over every leaf of a variables pytree (path, dtype, shape, bytes): the
    teacher's identity, independent of where its directory lives."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        a = np.asarray(leaf)
        h.update(jax.tree_util.keystr(path).encode())
        h.update(repr((str(a.dtype), a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def make_key(*, teacher_sha256: str, model: str, dataset: str, dataset_fingerprint: str,
             preprocess_sha256: str, patch_size: int, per_channel: bool, batch_size: int,
             pad: int, flip: bool, seed: int, streamed: dict[str, Any] | None = None
             ) -> dict[str, Any]:
    """The identity of one targets entry (every input of `compute_conv_targets`);
    `streamed` ({"image_size": ...}) marks targets of a streamed dataset."""
    key = {"format_version": FORMAT_VERSION, "teacher_sha256": teacher_sha256, "model": model,
           "dataset": dataset, "dataset_fingerprint": dataset_fingerprint,
           "preprocess_sha256": preprocess_sha256, "patch_size": int(patch_size),
           "per_channel": bool(per_channel),
           "augmentation": {"pad_crop": int(pad), "flip": bool(flip),
                            "batch_size": int(batch_size), "seed": int(seed)}}
    if streamed is not None:
        key["streamed"] = dict(streamed)
    return key


def key_hash(key: dict[str, Any]) -> str:
    """Short stable hash of a key (directory name of its entry)."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def save(path: str, targets: Sequence[ConvStat], key: dict[str, Any],
         layer_paths: Sequence[str] | None = None) -> None:
    """Write an entry atomically (npz first, then the json that marks it complete)."""
    os.makedirs(path, exist_ok=True)
    arrays = {f"l{i}_{f}": np.asarray(a, np.float32)
              for i, t in enumerate(targets) for f, a in zip(_FIELDS, t)}
    npz = os.path.join(path, NPZ)
    safeio.savez(npz, **arrays)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "key": key,
            "num_layers": len(targets), "layer_paths": list(layer_paths or []),
            "shapes": [[list(np.shape(a)) for a in t] for t in targets],
            "npz_sha256": sha256_file(npz)}
    safeio.write_json(os.path.join(path, JSON), meta)


def _diff(stored: Any, wanted: Any, prefix: str = "") -> list[str]:
    if isinstance(stored, dict) and isinstance(wanted, dict):
        out = []
        for k in sorted(set(stored) | set(wanted)):
            out += _diff(stored.get(k), wanted.get(k), f"{prefix}{k}.")
        return out
    return [] if stored == wanted else [f"{prefix[:-1]} (stored {stored!r}, wanted {wanted!r})"]


def load(path: str, key: dict[str, Any]) -> list[ConvStat]:
    """The targets of an entry whose key equals `key`; ConvTargetsError otherwise."""
    js, npz = os.path.join(path, JSON), os.path.join(path, NPZ)
    if not os.path.exists(js):
        raise ConvTargetsError(f"no conv targets at {path} ({JSON} missing)")
    try:
        with open(js) as fh:
            meta = json.load(fh)
    except (OSError, ValueError) as e:
        raise ConvTargetsError(f"corrupt conv targets {js}: {e}; delete {path} to "
                               f"recompute") from None
    if meta.get("format") != FORMAT:
        raise ConvTargetsError(f"{js} is not a {FORMAT} file")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ConvTargetsError(f"{path} has format version {meta.get('format_version')}, this "
                               f"jaxdd reads {FORMAT_VERSION}; delete it to recompute")
    diff = _diff(meta.get("key"), key)
    if diff:
        raise ConvTargetsError(f"conv targets at {path} were computed for something else: "
                               f"{'; '.join(diff)}; use another directory or delete it")
    if not os.path.exists(npz) or sha256_file(npz) != meta.get("npz_sha256"):
        raise ConvTargetsError(f"corrupt conv targets at {path} ({NPZ} missing or not the file "
                               f"{JSON} describes); delete {path} to recompute")
    try:
        with np.load(npz) as z:
            out = [ConvStat(*(jnp.asarray(z[f"l{i}_{f}"]) for f in _FIELDS))
                   for i in range(int(meta["num_layers"]))]
    except (OSError, KeyError, ValueError) as e:
        raise ConvTargetsError(f"corrupt conv targets at {path}: {e}; delete it to "
                               f"recompute") from None
    shapes = [[list(a.shape) for a in t] for t in out]
    if shapes != meta["shapes"]:
        raise ConvTargetsError(f"corrupt conv targets at {path}: array shapes differ from {JSON}")
    return out


def load_or_compute(path: str, key: dict[str, Any],
                    compute: Callable[[], tuple[Sequence[ConvStat], Sequence[str]]],
                    recompute: bool = False) -> tuple[list[ConvStat], bool]:
    """(targets, computed now): load the entry, or compute and save it when absent.

    A mismatched or corrupt entry raises ConvTargetsError, unless `recompute` (then it is
    deleted and rebuilt). With several processes (`jax.distributed`), process 0 decides
    whether to load or compute and tells the others (a streamed `compute` is collective, so
    every process must make the same choice); every process computes, only process 0
    deletes and writes the entry, and all read it back after a barrier."""
    multi = jax.process_count() > 1
    lead = jax.process_index() == 0
    present = os.path.exists(os.path.join(path, JSON)) or os.path.exists(os.path.join(path, NPZ))
    if multi:
        from jax.experimental import multihost_utils
        present = bool(multihost_utils.broadcast_one_to_all(np.int32(present)))
    if present:
        try:
            return load(path, key), False
        except ConvTargetsError:
            if not recompute:
                raise
            if multi:  # every process has read the bad entry before process 0 deletes it
                multihost_utils.sync_global_devices("jaxdd conv targets: bad entry seen")
            if lead:
                shutil.rmtree(path, ignore_errors=True)
    targets, layer_paths = compute()
    if lead:
        save(path, targets, key, layer_paths)
    if multi:
        multihost_utils.sync_global_devices("jaxdd conv targets: entry written")
    return load(path, key), True  # what is used is what is on disk


def teacher_targets(cache_root: str, model: Any, variables_list: Sequence[Any], model_name: str,
                    dataset: Any, preprocess: Any, config: Any, *, seed: int = 0,
                    stacked: bool = False, progress: Callable[[int, int], None] | None = None,
                    mesh: jax.sharding.Mesh | None = None) -> tuple[Any, list[str]]:
    """Targets of each teacher (cached under cache_root/<key hash>/), stacked along a
    leading axis when `stacked`; returns (targets, entry directories).

    `config` is a RecoverConfig (patch_size, patch_per_channel, conv_target_*); targets use
    the training split, the preprocessing of the teacher, and RandomCrop padding with a
    black pixel (the reference pads the raw image, then normalises). A `StreamedDataset`
    is read in one pass of its eval loader, each batch split over `mesh`'s first axis
    (default: every device), so the batch size must divide by that axis.
    """

    bounds = pixel_bounds(preprocess)
    fill = None if bounds is None else bounds[0]
    streamed = isinstance(dataset, StreamedDataset)
    if streamed:
        x, y = None, dataset.train.labels()
        shape = tuple(dataset.image_shape)
    else:
        x, y = dataset.x_train, dataset.y_train
        shape = tuple(x.shape[1:])
    opts = dict(patch_size=config.patch_size, per_channel=config.patch_per_channel,
                pad=config.conv_target_pad, flip=config.conv_target_flip, fill_C=fill,
                progress=progress)
    per_teacher, dirs = [], []
    for v in variables_list:
        key = make_key(teacher_sha256=variables_fingerprint(v), model=model_name,
                       dataset=dataset.name,
                       dataset_fingerprint=population.dataset_fingerprint(x, y),
                       preprocess_sha256=population.preprocess_sha(preprocess),
                       patch_size=config.patch_size, per_channel=config.patch_per_channel,
                       batch_size=config.conv_target_batch, pad=config.conv_target_pad,
                       flip=config.conv_target_flip, seed=seed,
                       streamed={"image_size": dataset.image_size} if streamed else None)
        path = os.path.join(cache_root, key_hash(key))

        def compute(v=v):
            if streamed:
                t = _streamed_targets(model, v, dataset, preprocess, config, seed, mesh, opts)
            else:
                t = compute_conv_targets(
                    model, v, x, jax.random.key(seed), batch_size=config.conv_target_batch,
                    transform=lambda xb: jdata.apply(preprocess, xb), **opts)
            return t, conv_layer_paths(model, v, jnp.zeros((1, *shape), jnp.float32))

        t, _ = load_or_compute(path, key, compute)
        per_teacher.append(t)
        dirs.append(path)
    targets = stack_teachers(per_teacher) if stacked else per_teacher[0]
    return targets, dirs


def _streamed_targets(model: Any, variables: Any, dataset: StreamedDataset, preprocess: Any,
                      config: Any, seed: int, mesh: jax.sharding.Mesh | None,
                      opts: dict[str, Any]) -> list[ConvStat]:
    """One eval pass over the training split in `target_order` (the in-memory batches),
    batches split over the mesh's first axis, the teacher replicated."""
    mesh = mesh or make_mesh()
    axis = mesh.axis_names[0]
    batch = int(config.conv_target_batch)
    if batch % mesh.shape[axis]:
        raise ValueError(f"recover.conv_target_batch {batch} is not divisible by the "
                         f"{mesh.shape[axis]} devices of mesh axis {axis!r}; set a multiple")
    order, k_aug = target_order(jax.random.key(seed), len(dataset.train))
    loader = dataset.loader("train", batch_size=batch, indices=order, preprocess=preprocess,
                            sharding=NamedSharding(mesh, PartitionSpec(axis)))
    return streamed_conv_targets(model, put_replicated(variables, mesh), loader, k_aug,
                                 steps=len(loader), **opts)
