"""Crops, flips and jitter as pure functions of a PRNG key (SRe2L / CDA / G-VBSM / RDED /
relabel): (CDA-scheduled) random-resized-crop, RandomCrop with padding, flip, circular jitter.

Each takes one key and draws one decision for the whole batch (as the references) or, with
`per_image`, one per image.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from jaxdd.augment.dsa import flip_horizontal

PRNGKey = jax.Array

__all__ = ["CDA_FLOOR", "cda_min_scale", "sample_crop_box", "crop_resize", "window_weights",
           "resized_crop", "random_resized_crop",
           "random_pad_crop", "pad_crop", "shuffle_patches", "random_flip", "random_jitter", "fyi_flip_concat"]

CDA_FLOOR = 0.08  # torchvision's default RandomResizedCrop lower scale; CDA's end point


def cda_min_scale(t: jax.Array | int, total: int, milestone: float = 1.0,
                  mode: str = "cosine") -> jax.Array:
    """CDA lower crop scale at iteration t of T (easy -> hard), 0.08 from m*T on.

    cosine: 0.08 + 0.92 (1 + cos(pi t / (m T))) / 2 ; linear: 0.08 + 0.92 (1 - t / (m T)) ;
    step: 1.
    """
    t = jnp.asarray(t, jnp.float32)
    end = milestone * total
    frac = t / max(end, 1e-12)
    if mode == "cosine":
        s = CDA_FLOOR + (1 - CDA_FLOOR) * (1 + jnp.cos(jnp.pi * frac)) / 2
    elif mode == "linear":
        s = CDA_FLOOR + (1 - CDA_FLOOR) * (1 - frac)
    elif mode == "step":
        s = jnp.ones_like(t)
    else:
        raise ValueError(f"unknown CDA mode {mode!r}; use cosine, linear or step")
    return jnp.where(t < end, s, CDA_FLOOR)


def sample_crop_box(key: PRNGKey, h: int, w: int, min_scale: jax.Array | float,
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
    """(y0, x0, ch, cw) of a crop with area fraction U(min_scale, 1) and log-uniform aspect
    ratio. torchvision retries out-of-range boxes 10 times then centre-crops; we clip the
    sides to the image instead (pure, no loop)."""
    k_s, k_r, k_y, k_x = jax.random.split(key, 4)
    area = jax.random.uniform(k_s, (), minval=min_scale, maxval=1.0) * (h * w)
    log_r = jax.random.uniform(k_r, (), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    r = jnp.exp(log_r)
    cw = jnp.clip(jnp.sqrt(area * r), 1.0, w)
    ch = jnp.clip(jnp.sqrt(area / r), 1.0, h)
    y0 = jax.random.uniform(k_y, ()) * (h - ch)
    x0 = jax.random.uniform(k_x, ()) * (w - cw)
    return jnp.stack([y0, x0, ch, cw])


def crop_resize(x_HWC: jax.Array, box_4: jax.Array) -> jax.Array:
    """The box cropped and resized back to (H, W), antialiased bilinear (`resized_crop`:
    torchvision RandomResizedCrop's resampling; only the box's pixels contribute)."""
    return resized_crop(x_HWC, box_4, x_HWC.shape[:2]).astype(x_HWC.dtype)


def window_weights(in_size: int, start: jax.Array, length: jax.Array, out_size: int,
                   dtype: jnp.dtype = jnp.float32) -> jax.Array:
    """(out_size, in_size) weights of torch's antialiased bilinear resize
    (`F.interpolate(mode="bilinear", antialias=True, align_corners=False)`) of the window
    [start, start + length) of an axis to out_size pixels, after cropping it.

    Output pixel o is centred at start + s (o + 0.5), s = length / out_size; source pixel q
    (centre q + 0.5) weighs tri((q + 0.5 - centre) / max(s, 1)) if its centre lies in the
    window, else 0; each row sums to 1. Only pixels of the window contribute, as after
    torchvision's crop (for integer boxes this is `resized_crop(..., antialias=True)`);
    traced, fractional boxes work too."""
    s = length / out_size
    support = jnp.maximum(s, 1.0)
    centre_O = start + s * (jnp.arange(out_size, dtype=dtype) + 0.5)
    q_I = jnp.arange(in_size, dtype=dtype) + 0.5
    inside_I = (q_I >= start) & (q_I < start + length)
    w = jnp.maximum(0.0, 1.0 - jnp.abs(q_I[None, :] - centre_O[:, None]) / support)
    w = jnp.where(inside_I[None, :], w, 0.0)
    return w / jnp.maximum(w.sum(axis=1, keepdims=True), jnp.finfo(dtype).tiny)


def resized_crop(x_HWC: jax.Array, box_4: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """The box (y0, x0, h, w) cropped and resized to out_hw with antialiased bilinear
    weights (torchvision `resized_crop(..., antialias=True)` for integer boxes)."""
    dt = jnp.promote_types(x_HWC.dtype, jnp.float32)
    box = jnp.asarray(box_4, dt)
    wy = window_weights(x_HWC.shape[0], box[0], box[2], out_hw[0], dt)
    wx = window_weights(x_HWC.shape[1], box[1], box[3], out_hw[1], dt)
    return jnp.einsum("oh,hwc,pw->opc", wy, x_HWC.astype(dt), wx)


def random_resized_crop(key: PRNGKey, x_NHWC: jax.Array, min_scale: jax.Array | float = 0.08,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        per_image: bool = False) -> jax.Array:
    """RandomResizedCrop(scale=(min_scale, 1), ratio) back to the input size; one box for the
    whole batch (as the references) or one per image. `min_scale` may be traced (CDA)."""
    n, h, w = x_NHWC.shape[:3]
    if per_image:
        boxes = jax.vmap(lambda k: sample_crop_box(k, h, w, min_scale, ratio))(jax.random.split(key, n))
        return jax.vmap(crop_resize)(x_NHWC, boxes)
    box = sample_crop_box(key, h, w, min_scale, ratio)
    return jax.vmap(crop_resize, in_axes=(0, None))(x_NHWC, box)


def random_pad_crop(key: PRNGKey, x_NHWC: jax.Array, pad: int = 4,
                    fill_C: jax.Array | None = None, per_image: bool = False) -> jax.Array:
    """RandomCrop(size, padding=pad): pad with `fill_C` (default 0), crop back at a uniform
    offset in [0, 2 pad]^2; one offset for the batch or one per image."""
    if pad <= 0:
        return x_NHWC
    n = x_NHWC.shape[0]
    if per_image:
        return pad_crop(x_NHWC, jax.random.randint(key, (n, 2), 0, 2 * pad + 1), pad, fill_C)
    d = jax.random.randint(key, (2,), 0, 2 * pad + 1)
    return pad_crop(x_NHWC, jnp.broadcast_to(d, (n, 2)), pad, fill_C)


def pad_crop(x_NHWC: jax.Array, offsets_Nx2: jax.Array, pad: int,
             fill_C: jax.Array | None = None) -> jax.Array:
    """The deterministic half of RandomCrop(size, padding=pad): pad every image by `pad`
    with `fill_C` (default 0), then cut the (H, W) window at (dy, dx) = offsets_Nx2[i], each
    in [0, 2 pad] (pad, pad: the image itself)."""
    n, h, w, c = x_NHWC.shape
    xp = jnp.pad(x_NHWC, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    if fill_C is not None:  # pad value per channel (e.g. a black pixel in model space)
        inside = jnp.pad(jnp.ones((1, h, w, 1), bool), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        xp = jnp.where(inside, xp, jnp.asarray(fill_C, xp.dtype).reshape(1, 1, 1, c))
    crop = lambda img, d: jax.lax.dynamic_slice(img, (d[0], d[1], 0), (h, w, c))
    return jax.vmap(crop)(xp, offsets_Nx2)


def shuffle_patches(x_HWC: jax.Array, perm_2xF: jax.Array) -> jax.Array:
    """RDED's ShufflePatches(f) for one image: cut it into f x f equal patches and move them
    as a grid, row strip i <- row strip perm_2xF[0, i], column strip j <- column strip
    perm_2xF[1, j] (the reference shuffles the f column strips, then the f row strips, each
    by its own random order). H and W must divide by f; identity permutations: the image."""
    f = perm_2xF.shape[-1]
    h, w, c = x_HWC.shape
    if h % f or w % f:
        raise ValueError(f"shuffle_patches {f} needs the image sides divisible by {f}; "
                         f"they are {h} x {w}")
    g = x_HWC.reshape(f, h // f, f, w // f, c)
    g = jnp.take(jnp.take(g, perm_2xF[0], axis=0), perm_2xF[1], axis=2)
    return g.reshape(h, w, c)


def random_flip(key: PRNGKey, x_NHWC: jax.Array, per_image: bool = False) -> jax.Array:
    """Horizontal mirror with p = 0.5 (one decision per batch, or per image)."""
    n = x_NHWC.shape[0]
    flip = jax.random.bernoulli(key, 0.5, (n,) if per_image else ())
    return flip_horizontal(x_NHWC, jnp.broadcast_to(flip, (n,)))


def fyi_flip_concat(x_NHWC: jax.Array) -> jax.Array:
    """FYI (Son et al., ECCV 2024): A_c = S_c U Flip(S_c), the horizontal mirror appended.

    FYI `BatchAug`: `cat([img, flip(img, W)])` (labels repeated), applied to each class's
    synthetic batch before DSA.
    """
    return jnp.concatenate([x_NHWC, x_NHWC[:, :, ::-1, :]], axis=0)


def random_jitter(key: PRNGKey, x_NHWC: jax.Array, shift_range: tuple[int, int] = (0, 4),
                  per_image: bool = False) -> jax.Array:
    """Circular shift by (dy, dx), each uniform on the inclusive range (torch.roll + randint)."""
    lo, hi = shift_range
    if hi == lo == 0:
        return x_NHWC
    if per_image:
        keys = jax.random.split(key, x_NHWC.shape[0])
        return jax.vmap(lambda k, x: random_jitter(k, x[None], shift_range)[0])(keys, x_NHWC)
    d = jax.random.randint(key, (2,), lo, hi + 1)
    return jnp.roll(x_NHWC, (d[0], d[1]), axis=(1, 2))
