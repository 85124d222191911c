"""G-VBSM dataset targets of every convolution input (eq. 2's t_l), one pass over real data.

`compute_conv_targets` is the computation; `jaxdd.population.conv_targets` caches its
result on disk next to the teacher.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.augment.crops import random_flip, random_pad_crop
from jaxdd.methods.base import PRNGKey
from jaxdd.methods.statistics.capture import ConvStat, capture

__all__ = ["compute_conv_targets"]

@functools.partial(jax.jit, static_argnames=("model", "patch_size", "per_channel", "pad", "flip"))
def _target_batch_stats(variables: Any, x_NHWC: jax.Array, key: PRNGKey, fill_C: Any, *,
                        model: Any, patch_size: int, per_channel: bool, pad: int, flip: bool
                        ) -> list[ConvStat]:
    """Conv-input statistics of one augmented real batch (compiled once per setup and shape)."""
    k_crop, k_flip = jax.random.split(key)
    x_NHWC = random_pad_crop(k_crop, x_NHWC, pad, fill_C, per_image=True)
    if flip:
        x_NHWC = random_flip(k_flip, x_NHWC, per_image=True)
    return capture(model, variables, x_NHWC, None, (patch_size, per_channel)).conv


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
    k_perm, k_aug = jax.random.split(key)
    order = np.asarray(jax.random.permutation(k_perm, n))
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
