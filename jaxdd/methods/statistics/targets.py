"""G-VBSM dataset targets of every convolution input (eq. 2's t_l), one pass over real data.

`compute_conv_targets` is the computation over in-memory images; `streamed_conv_targets`
is the same computation over the batches of a loader (data larger than memory) that reads
the records in `target_order`: equal targets up to float32 rounding.
`jaxdd.population.conv_targets` caches the result on disk next to the teacher.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.augment.crops import random_flip, random_pad_crop
from jaxdd.methods.base import PRNGKey
from jaxdd.methods.statistics.capture import ConvStat, capture

__all__ = ["compute_conv_targets", "streamed_conv_targets", "target_order"]


@functools.partial(jax.jit, static_argnames=("model", "patch_size", "per_channel", "pad", "flip"))
def _target_batch_stats(variables: Any, x_NHWC: jax.Array, key: PRNGKey, fill_C: Any, *,
                        model: Any, patch_size: int, per_channel: bool, pad: int, flip: bool
                        ) -> list[ConvStat]:
    """Conv-input statistics of one augmented real batch (compiled once per setup and shape)."""
    x_NHWC = _augment(x_NHWC, key, fill_C, pad, flip)
    return capture(model, variables, x_NHWC, None, (patch_size, per_channel)).conv


def _augment(x_NHWC: jax.Array, key: PRNGKey, fill_C: Any, pad: int, flip: bool) -> jax.Array:
    """Per-image RandomCrop(pad) + flip drawn from `key` (row i's draw depends on i only)."""
    k_crop, k_flip = jax.random.split(key)
    x_NHWC = random_pad_crop(k_crop, x_NHWC, pad, fill_C, per_image=True)
    return random_flip(k_flip, x_NHWC, per_image=True) if flip else x_NHWC


@functools.partial(jax.jit, static_argnames=("model", "patch_size", "per_channel", "pad", "flip"))
def _masked_batch_sums(variables: Any, x_NHWC: jax.Array, mask_N: jax.Array, key: PRNGKey,
                       fill_C: Any, *, model: Any, patch_size: int, per_channel: bool,
                       pad: int, flip: bool) -> tuple[list[ConvStat], jax.Array]:
    """(n_b * stat(batch_b) per conv layer, n_b) over the images where `mask_N` is True."""
    x_NHWC = _augment(x_NHWC, key, fill_C, pad, flip)
    st = capture(model, variables, x_NHWC, None, (patch_size, per_channel), mask_N).conv
    n_b = mask_N.sum(dtype=jnp.float32)
    return [ConvStat(*(a * n_b for a in layer)) for layer in st], n_b


def target_order(key: PRNGKey, n: int) -> tuple[np.ndarray, PRNGKey]:
    """(record order, augmentation key) of the targets pass over n images: batch b holds
    records order[b*B:(b+1)*B] and augments with fold_in(aug key, b)."""
    k_perm, k_aug = jax.random.split(key)
    return np.asarray(jax.random.permutation(k_perm, n)), k_aug


def compute_conv_targets(model: Any, variables: Any, x_NHWC: np.ndarray, key: PRNGKey, *,
                         batch_size: int = 64, patch_size: int = 16, per_channel: bool = False,
                         pad: int = 4, flip: bool = True, fill_C: Any = None,
                         transform: Callable[[np.ndarray], np.ndarray] | None = None,
                         progress: Callable[[int, int], None] | None = None) -> list[ConvStat]:
    """G-VBSM dataset targets of every conv input: sum_b (n_b / N) stat(batch_b) over one
    pass of the real set (the reference's running sum), teacher in inference mode.

    Batches follow a key-permuted order; each image gets its own RandomCrop(pad) + flip
    from the key (pad 0 / flip False: none), so the targets are a pure function of
    (variables, x, key, options). `transform` maps a host batch (e.g. uint8) to model
    space; x stays on the host, one batch at a time is on the device.
    """
    n = len(x_NHWC)
    if n == 0:
        raise ValueError("compute_conv_targets needs at least one image")
    order, k_aug = target_order(key, n)
    fill = None if fill_C is None else jnp.asarray(fill_C, jnp.float32)
    setup = dict(model=model, patch_size=patch_size, per_channel=per_channel, pad=pad, flip=flip)
    total = None
    steps = -(-n // batch_size)
    for b in range(steps):
        idx = order[b * batch_size:(b + 1) * batch_size]
        xb = x_NHWC[idx] if transform is None else transform(x_NHWC[idx])
        st = _target_batch_stats(variables, jnp.asarray(xb, jnp.float32),
                                 jax.random.fold_in(k_aug, b), fill, **setup)
        if not st:
            raise ValueError("the model called no convolution: nothing to match")
        w = len(idx) / n
        part = [ConvStat(*(np.asarray(a, np.float64) * w for a in layer)) for layer in st]
        total = part if total is None else jax.tree.map(np.add, total, part)
        if progress is not None:
            progress(b + 1, steps)
    return [ConvStat(*(jnp.asarray(a, jnp.float32) for a in s)) for s in total]


def streamed_conv_targets(model: Any, variables: Any, batches: Iterable[dict[str, Any]],
                          aug_key: PRNGKey, *, patch_size: int = 16, per_channel: bool = False,
                          pad: int = 4, flip: bool = True, fill_C: Any = None,
                          steps: int | None = None,
                          progress: Callable[[int, int], None] | None = None) -> list[ConvStat]:
    """`compute_conv_targets` over streamed batches {"image" (B,H,W,C) model space, "mask"}:
    sum_b n_b stat(batch_b) / sum_b n_b, each batch's statistics over its masked images
    only (eval padding, skipped undecodable records). Batch b augments with
    fold_in(aug_key, b); fed batch b = records order[b*B:(b+1)*B] of `target_order` it
    gives `compute_conv_targets`'s targets. The batches stay sharded as given (place
    `variables` on the same mesh); only the per-layer sums come to the host."""
    fill = None if fill_C is None else jnp.asarray(fill_C, jnp.float32)
    setup = dict(model=model, patch_size=patch_size, per_channel=per_channel, pad=pad, flip=flip)
    acc = {"total": None, "count": 0.0}

    def add(b, sums, n_b):  # batch b's sums to the host (after batch b + 1 is dispatched)
        part = [ConvStat(*(np.asarray(a, np.float64) for a in layer)) for layer in sums]
        acc["total"] = part if acc["total"] is None else jax.tree.map(np.add, acc["total"], part)
        acc["count"] += float(n_b)
        if progress is not None:
            progress(b + 1, steps or b + 1)

    pending = None
    for b, batch in enumerate(batches):
        sums, n_b = _masked_batch_sums(variables, batch["image"], batch["mask"],
                                       jax.random.fold_in(aug_key, b), fill, **setup)
        if not sums:
            raise ValueError("the model called no convolution: nothing to match")
        if pending is not None:
            add(*pending)
        pending = (b, sums, n_b)
    if pending is not None:
        add(*pending)
    total, count = acc["total"], acc["count"]
    if not count:
        raise ValueError("no decodable training image for the conv targets")
    return [ConvStat(*(jnp.asarray(a / count, jnp.float32) for a in s)) for s in total]
