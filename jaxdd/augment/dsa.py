"""Differentiable Siamese Augmentation (DSA, Zhao & Bilen 2021) as pure functions of a key.

Every function here is pure, jittable, vmappable and differentiable w.r.t. the pixels, and
its randomness is a function of the key alone (never of the data). That is what makes it
*siamese*: calling `dsa(key, x_real_NHWC)` and `dsa(key, x_syn_NHWC)` with the SAME key
applies the same family with the same per-image parameters to both batches (image n of
one batch gets what image n of the other gets), and recomputing with the same key (e.g. a
rematerialised inner loop of MTT) replays the augmentation exactly. Per-image parameters
only line up between batches of the same size; when the real and synthetic batches differ
in size (DC/DSA: 256 real vs IPC synthetic images) pass `batch_shared=True`, which draws
one parameter set per call and applies it to every image, as the reference's seeded mode
does.

Semantics follow the reference `DiffAugment` (VICO-UoE DatasetCondensation `utils.py`,
`aug_mode='S'`): per call ONE family is drawn uniformly from the `_`-joined strategy
(per batch); inside the family the parameters are drawn per image:

  color   brightness x + (u - 0.5), then saturation (x - mean_C) * 2u + mean_C, then
          contrast (x - mean_HWC) * (u + 0.5) + mean_HWC; three independent u ~ U(0, 1).
  crop    integer translation in [-s, s] per axis, s = int(size * 0.125 + 0.5), zero fill.
  cutout  zero a k x k square, k = int(size * 0.5 + 0.5), centre uniform on the image
          (clipped at the borders).
  flip    horizontal mirror with p = 0.5.
  scale   independent x/y factors U(1/1.2, 1.2); bilinear, zero padding.
  rotate  angle U(-15, 15) degrees (counter-clockwise for positive); bilinear, zero padding.

Resampling matches torch `affine_grid` + `grid_sample(mode='bilinear', padding_mode='zeros')`
with `align_corners=True` by default (`DSAParams.align_corners`). For square images and
transforms without translation the two align_corners conventions coincide exactly.

Layout is NHWC; the dtype of the input (float32, float64 with x64, bfloat16) is kept.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
from jax import lax

PRNGKey = jax.Array

FAMILIES: tuple[str, ...] = ("color", "crop", "cutout", "flip", "scale", "rotate")
DSA_DEFAULT = "color_crop_cutout_flip_scale_rotate"
_NONE_STRATEGIES = ("", "none", "None")

# One-hot and hat-weight matmuls must be exact copies/interpolations on every backend
# (TF32/bf16 passes on GPU/TPU would perturb pixels by ~1e-3).
_EXACT = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class DSAParams:
    """Ranges of the DSA families; defaults are the reference `ParamDiffAug` values.

    Frozen (hashable), so it can be a static argument of `jax.jit`.
    """

    prob_flip: float = 0.5  # probability that an image is mirrored horizontally
    ratio_scale: float = 1.2  # scale factors ~ U(1 / ratio, ratio), per axis
    ratio_rotate: float = 15.0  # rotation angle ~ U(-ratio, ratio), degrees
    ratio_crop_pad: float = 0.125  # max translation, as a fraction of the side
    ratio_cutout: float = 0.5  # side of the cutout square, as a fraction of the side
    brightness: float = 1.0  # x + (u - 0.5) * brightness
    saturation: float = 2.0  # (x - mean_C) * (u * saturation) + mean_C
    contrast: float = 0.5  # (x - mean_HWC) * (u + contrast) + mean_HWC
    align_corners: bool = True  # torch affine_grid/grid_sample convention (rotate only)


_DEFAULT_PARAMS = DSAParams()


def _check_images(x_NHWC: jax.Array) -> None:
    if x_NHWC.ndim != 4:
        raise ValueError(f"DSA expects NHWC images, got shape {x_NHWC.shape}")
    if not jnp.issubdtype(x_NHWC.dtype, jnp.floating):
        raise TypeError(f"DSA expects floating images, got dtype {x_NHWC.dtype}")


def _round_half_up(v: float) -> int:
    """`int(v + 0.5)`, the reference's rounding for crop/cutout sizes (not banker's)."""
    return int(v + 0.5)


# --------------------------------------------------------------------------------------
# Parameterised (deterministic) transforms. Parameters are per image, shape (N,).
# --------------------------------------------------------------------------------------


def adjust_color(
    x_NHWC: jax.Array,
    u_brightness_N: jax.Array,
    u_saturation_N: jax.Array,
    u_contrast_N: jax.Array,
    params: DSAParams | None = None,
) -> jax.Array:
    """Brightness, then saturation, then contrast, each from its own u in [0, 1)."""
    p = params or _DEFAULT_PARAMS
    b = u_brightness_N.astype(x_NHWC.dtype)[:, None, None, None]
    s = u_saturation_N.astype(x_NHWC.dtype)[:, None, None, None]
    c = u_contrast_N.astype(x_NHWC.dtype)[:, None, None, None]
    n, _, _, C = x_NHWC.shape
    x = x_NHWC + (b - 0.5) * p.brightness
    # Mean over the (tiny) minor channel axis as a sum of slices: XLA:CPU's reduction over
    # a size-3 minor dimension is ~10x slower. Grey (C=1): x == mean, a no-op.
    mean_NHW1 = x[..., 0:1]
    for k in range(1, C):
        mean_NHW1 = mean_NHW1 + x[..., k : k + 1]
    mean_NHW1 = mean_NHW1 / C
    x = (x - mean_NHW1) * (s * p.saturation) + mean_NHW1
    mean_N111 = jnp.mean(x.reshape(n, -1), axis=1)[:, None, None, None]
    return (x - mean_N111) * (c + p.contrast) + mean_N111


def _shift_matrix(shift_N: jax.Array, size: int, dtype) -> jax.Array:
    """One-hot S[n, i, k] = [k == i - shift_n]: (S @ v)[i] = v[i - shift], zero outside."""
    i = jnp.arange(size)
    return (i[None, None, :] == i[None, :, None] - shift_N[:, None, None]).astype(dtype)


def translate(x_NHWC: jax.Array, shift_h_N: jax.Array, shift_w_N: jax.Array) -> jax.Array:
    """Move the content of image n by (shift_h_N[n], shift_w_N[n]) integer pixels, zero fill.

    out[n, i, j] = x[n, i - shift_h, j - shift_w]. Written as two one-hot matmuls: no
    gather in the forward pass nor scatter in the backward pass (both slow on XLA:CPU).
    """
    _, H, W, _ = x_NHWC.shape
    sh_NHH = _shift_matrix(shift_h_N, H, x_NHWC.dtype)
    sw_NWW = _shift_matrix(shift_w_N, W, x_NHWC.dtype)
    y = jnp.einsum("nik,nkwc->niwc", sh_NHH, x_NHWC, precision=_EXACT)
    return jnp.einsum("njk,nikc->nijc", sw_NWW, y, precision=_EXACT)


def cutout(
    x_NHWC: jax.Array, centre_h_N: jax.Array, centre_w_N: jax.Array, size_hw: tuple[int, int]
) -> jax.Array:
    """Zero the size_h x size_w box whose rows are [c_h - size_h // 2, + size_h), clipped."""
    _, H, W, _ = x_NHWC.shape
    size_h, size_w = size_hw
    top_N = centre_h_N - size_h // 2
    left_N = centre_w_N - size_w // 2
    rows_NH = jnp.arange(H)[None, :] - top_N[:, None]
    cols_NW = jnp.arange(W)[None, :] - left_N[:, None]
    in_rows_NH = (rows_NH >= 0) & (rows_NH < size_h)
    in_cols_NW = (cols_NW >= 0) & (cols_NW < size_w)
    cut_NHW1 = (in_rows_NH[:, :, None] & in_cols_NW[:, None, :])[..., None]
    return jnp.where(cut_NHW1, jnp.zeros_like(x_NHWC), x_NHWC)


def flip_horizontal(x_NHWC: jax.Array, flip_N: jax.Array) -> jax.Array:
    """Mirror along W the images where flip_N is True; exact (no resampling)."""
    return jnp.where(flip_N[:, None, None, None], x_NHWC[:, :, ::-1, :], x_NHWC)


def _hat_weights(coords_NP: jax.Array, size: int) -> jax.Array:
    """Bilinear weights W[n, p, q] = max(0, 1 - |coords[n, p] - q|) for q in [0, size).

    Identical to grid_sample's bilinear weights with zero padding: out-of-range
    neighbours simply have no column here.
    """
    q = jnp.arange(size, dtype=coords_NP.dtype)
    return jnp.maximum(0.0, 1.0 - jnp.abs(coords_NP[:, :, None] - q[None, None, :]))


def scale(x_NHWC: jax.Array, sx_N: jax.Array, sy_N: jax.Array) -> jax.Array:
    """Resample with theta = [[sx, 0, 0], [0, sy, 0]] (sx > 1 shrinks the content along W).

    Axis-aligned, so bilinear sampling is separable: out = A_y @ x @ A_x^T with hat-weight
    matrices (two small matmuls, gather-free). In pixels the source of output column j is
    c + sx * (j - c), c = (W - 1) / 2, under either align_corners convention.
    """
    _, H, W, _ = x_NHWC.shape
    dtype = x_NHWC.dtype
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    rows_H = jnp.arange(H, dtype=dtype) - cy
    cols_W = jnp.arange(W, dtype=dtype) - cx
    src_rows_NH = cy + sy_N.astype(dtype)[:, None] * rows_H[None, :]
    src_cols_NW = cx + sx_N.astype(dtype)[:, None] * cols_W[None, :]
    ay_NHH = _hat_weights(src_rows_NH, H)
    ax_NWW = _hat_weights(src_cols_NW, W)
    y = jnp.einsum("niq,nqwc->niwc", ay_NHH, x_NHWC, precision=_EXACT)
    return jnp.einsum("njq,niqc->nijc", ax_NWW, y, precision=_EXACT)


def _bilinear_zeros_HWC(img_HWC: jax.Array, iy_HW: jax.Array, ix_HW: jax.Array) -> jax.Array:
    """grid_sample(bilinear, zeros) of one image at pixel coordinates (iy, ix)."""
    H, W, C = img_HWC.shape
    flat_PC = img_HWC.reshape(H * W, C)
    y0 = jnp.floor(iy_HW)
    x0 = jnp.floor(ix_HW)
    wy1 = iy_HW - y0
    wx1 = ix_HW - x0
    out = jnp.zeros((H, W, C), img_HWC.dtype)
    for dy, wy in ((0, 1.0 - wy1), (1, wy1)):
        for dx, wx in ((0, 1.0 - wx1), (1, wx1)):
            yy = y0 + dy
            xx = x0 + dx
            valid = (yy >= 0) & (yy <= H - 1) & (xx >= 0) & (xx <= W - 1)
            idx = jnp.clip(yy, 0, H - 1).astype(jnp.int32) * W + jnp.clip(xx, 0, W - 1).astype(
                jnp.int32
            )
            w_HW = jnp.where(valid, wy * wx, 0.0)
            out = out + flat_PC[idx] * w_HW[..., None]
    return out


def affine_resample(
    x_NHWC: jax.Array, theta_N23: jax.Array, align_corners: bool = True
) -> jax.Array:
    """torch `grid_sample(x, affine_grid(theta), bilinear, zeros, align_corners)` in NHWC.

    theta maps normalised output coordinates (x along W, y along H, in [-1, 1]) to input
    coordinates. Computed in centred pixel units, which is algebraically the same and
    makes theta = identity reproduce the input exactly.
    """
    _, H, W, _ = x_NHWC.shape
    dtype = x_NHWC.dtype
    theta = theta_N23.astype(dtype)
    cy, cx = (H - 1) / 2.0, (W - 1) / 2.0
    # Half-extent of the image in pixels: normalised u maps to pixel c + half * u.
    half_y, half_x = (cy, cx) if align_corners else (H / 2.0, W / 2.0)
    r_xy = half_x / half_y if half_y > 0 else 0.0  # H == 1: the row term is zero anyway
    r_yx = half_y / half_x if half_x > 0 else 0.0
    rows = (jnp.arange(H, dtype=dtype) - cy)[:, None]  # (H, 1)
    cols = (jnp.arange(W, dtype=dtype) - cx)[None, :]  # (1, W)

    def one(img_HWC: jax.Array, t_23: jax.Array) -> jax.Array:
        ix_HW = cx + t_23[0, 0] * cols + (t_23[0, 1] * r_xy) * rows + t_23[0, 2] * half_x
        iy_HW = cy + (t_23[1, 0] * r_yx) * cols + t_23[1, 1] * rows + t_23[1, 2] * half_y
        return _bilinear_zeros_HWC(img_HWC, iy_HW, ix_HW)

    return jax.vmap(one)(x_NHWC, theta)


def rotate(x_NHWC: jax.Array, angle_N: jax.Array, align_corners: bool = True) -> jax.Array:
    """Rotate by angle_N radians (positive = counter-clockwise on screen), zero padding.

    theta = [[cos, -sin, 0], [sin, cos, 0]] as in the reference; for a square image an
    angle of pi/2 equals np.rot90 over (H, W).
    """
    a = angle_N.astype(x_NHWC.dtype)
    cos, sin = jnp.cos(a), jnp.sin(a)
    zero = jnp.zeros_like(a)
    theta_N23 = jnp.stack(
        [jnp.stack([cos, -sin, zero], axis=-1), jnp.stack([sin, cos, zero], axis=-1)], axis=1
    )
    return affine_resample(x_NHWC, theta_N23, align_corners)


# --------------------------------------------------------------------------------------
# Random families: key -> per-image parameters -> transform.
# --------------------------------------------------------------------------------------


def _uniform_N(key: PRNGKey, n: int, dtype, batch_shared: bool) -> jax.Array:
    """U[0, 1) per image, or one draw broadcast to the batch (siamese across sizes)."""
    u = jax.random.uniform(key, (1 if batch_shared else n,), dtype)
    return jnp.broadcast_to(u, (n,))


def _randint_N(key: PRNGKey, n: int, lo: int, hi: int, batch_shared: bool) -> jax.Array:
    """Integers in [lo, hi) per image, or one draw broadcast to the batch."""
    r = jax.random.randint(key, (1 if batch_shared else n,), lo, hi, dtype=jnp.int32)
    return jnp.broadcast_to(r, (n,))


def dsa_color(
    key: PRNGKey,
    x_NHWC: jax.Array,
    params: DSAParams | None = None,
    *,
    batch_shared: bool = False,
) -> jax.Array:
    """Random brightness, saturation and contrast (three independent draws per image)."""
    _check_images(x_NHWC)
    n = x_NHWC.shape[0]
    kb, ks, kc = jax.random.split(key, 3)
    draw = functools.partial(_uniform_N, n=n, dtype=x_NHWC.dtype, batch_shared=batch_shared)
    return adjust_color(x_NHWC, draw(kb), draw(ks), draw(kc), params)


def dsa_crop(
    key: PRNGKey,
    x_NHWC: jax.Array,
    params: DSAParams | None = None,
    *,
    batch_shared: bool = False,
) -> jax.Array:
    """Random integer translation in [-s, s] per axis, s = int(side * ratio + 0.5)."""
    _check_images(x_NHWC)
    p = params or _DEFAULT_PARAMS
    n, H, W, _ = x_NHWC.shape
    s_h = _round_half_up(H * p.ratio_crop_pad)
    s_w = _round_half_up(W * p.ratio_crop_pad)
    kh, kw = jax.random.split(key)
    dh_N = _randint_N(kh, n, -s_h, s_h + 1, batch_shared)
    dw_N = _randint_N(kw, n, -s_w, s_w + 1, batch_shared)
    return translate(x_NHWC, dh_N, dw_N)


def cutout_size(height: int, width: int, params: DSAParams | None = None) -> tuple[int, int]:
    """Side lengths of the cutout box: int(side * ratio_cutout + 0.5) per axis."""
    p = params or _DEFAULT_PARAMS
    return _round_half_up(height * p.ratio_cutout), _round_half_up(width * p.ratio_cutout)


def dsa_cutout(
    key: PRNGKey,
    x_NHWC: jax.Array,
    params: DSAParams | None = None,
    *,
    batch_shared: bool = False,
) -> jax.Array:
    """Zero a random (clipped) box of side round(0.5 * side) per image."""
    _check_images(x_NHWC)
    n, H, W, _ = x_NHWC.shape
    k_h, k_w = cutout_size(H, W, params)
    kh, kw = jax.random.split(key)
    # Reference range: centre in [0, side] for an even box, [0, side - 1] for an odd one.
    ch_N = _randint_N(kh, n, 0, H + (1 - k_h % 2), batch_shared)
    cw_N = _randint_N(kw, n, 0, W + (1 - k_w % 2), batch_shared)
    return cutout(x_NHWC, ch_N, cw_N, (k_h, k_w))


def dsa_flip(
    key: PRNGKey,
    x_NHWC: jax.Array,
    params: DSAParams | None = None,
    *,
    batch_shared: bool = False,
) -> jax.Array:
    """Horizontal mirror with probability `prob_flip` per image."""
    _check_images(x_NHWC)
    p = params or _DEFAULT_PARAMS
    u_N = _uniform_N(key, x_NHWC.shape[0], jnp.float32, batch_shared)
    return flip_horizontal(x_NHWC, u_N < p.prob_flip)


def dsa_scale(
    key: PRNGKey,
    x_NHWC: jax.Array,
    params: DSAParams | None = None,
    *,
    batch_shared: bool = False,
) -> jax.Array:
    """Independent x/y scale factors ~ U(1 / ratio, ratio) per image."""
    _check_images(x_NHWC)
    p = params or _DEFAULT_PARAMS
    n = x_NHWC.shape[0]
    r = p.ratio_scale
    kx, ky = jax.random.split(key)
    sx_N = _uniform_N(kx, n, x_NHWC.dtype, batch_shared) * (r - 1.0 / r) + 1.0 / r
    sy_N = _uniform_N(ky, n, x_NHWC.dtype, batch_shared) * (r - 1.0 / r) + 1.0 / r
    return scale(x_NHWC, sx_N, sy_N)


def dsa_rotate(
    key: PRNGKey,
    x_NHWC: jax.Array,
    params: DSAParams | None = None,
    *,
    batch_shared: bool = False,
) -> jax.Array:
    """Rotation by U(-ratio_rotate, ratio_rotate) degrees per image."""
    _check_images(x_NHWC)
    p = params or _DEFAULT_PARAMS
    u_N = _uniform_N(key, x_NHWC.shape[0], x_NHWC.dtype, batch_shared)
    angle_N = (u_N - 0.5) * (2.0 * p.ratio_rotate * math.pi / 180.0)
    return rotate(x_NHWC, angle_N, p.align_corners)


FamilyFn = Callable[..., jax.Array]

FAMILY_FNS: Mapping[str, FamilyFn] = types.MappingProxyType(
    {
        "color": dsa_color,
        "crop": dsa_crop,
        "cutout": dsa_cutout,
        "flip": dsa_flip,
        "scale": dsa_scale,
        "rotate": dsa_rotate,
    }
)


# --------------------------------------------------------------------------------------
# Strategy: one family per call, chosen by the key.
# --------------------------------------------------------------------------------------


def parse_strategy(strategy: str | None) -> tuple[str, ...]:
    """'color_crop' -> ('color', 'crop'); '', 'none' or None -> () (identity).

    Order and repetitions are kept: the family is drawn uniformly over the listed entries,
    as in the reference (so 'flip_flip_crop' picks flip with probability 2/3).
    """
    if strategy is None or strategy.strip() in _NONE_STRATEGIES:
        return ()
    names = tuple(strategy.strip().split("_"))
    unknown = [name for name in names if name not in FAMILY_FNS]
    if unknown:
        raise ValueError(
            f"unknown DSA family {unknown} in strategy {strategy!r}; valid families are "
            f"{', '.join(FAMILIES)} (join with '_'), or 'none' for identity"
        )
    return names


def _split_key(key: PRNGKey) -> tuple[PRNGKey, PRNGKey]:
    """(family key, parameter key): the family choice never depends on the batch size."""
    k_family, k_params = jax.random.split(key)
    return k_family, k_params


def sample_family_index(key: PRNGKey, strategy: str = DSA_DEFAULT) -> jax.Array:
    """Index (int32 scalar) into `parse_strategy(strategy)` of the family `dsa` applies."""
    families = parse_strategy(strategy)
    if not families:
        raise ValueError("strategy 'none' has no family to sample")
    k_family, _ = _split_key(key)
    return jax.random.randint(k_family, (), 0, len(families), dtype=jnp.int32)


@functools.lru_cache(maxsize=64)
def _branches(
    families: tuple[str, ...], params: DSAParams | None, batch_shared: bool
) -> tuple[Callable[[PRNGKey, jax.Array], jax.Array], ...]:
    """Stable branch callables, so eager `lax.switch` calls hit JAX's compilation cache."""
    return tuple(
        functools.partial(FAMILY_FNS[name], params=params, batch_shared=batch_shared)
        for name in families
    )


def apply_family_index(
    key: PRNGKey,
    x_NHWC: jax.Array,
    index: jax.Array | int,
    strategy: str = DSA_DEFAULT,
    params: DSAParams | None = None,
    *,
    batch_shared: bool = False,
) -> jax.Array:
    """Apply family `parse_strategy(strategy)[index]`, its parameters drawn from `key`.

    `index` may be a Python int or traced (`lax.switch`, so only the chosen branch runs). Under a vmap over
    keys the index is batched and XLA evaluates every branch, then selects.
    """
    families = parse_strategy(strategy)
    if not families:
        return x_NHWC
    _check_images(x_NHWC)
    branches = _branches(families, params, batch_shared)
    if len(branches) == 1:
        return branches[0](key, x_NHWC)
    if isinstance(index, int):  # known at trace time: no switch needed
        return branches[index](key, x_NHWC)
    return lax.switch(index, branches, key, x_NHWC)


def dsa(
    key: PRNGKey,
    x_NHWC: jax.Array,
    strategy: str = DSA_DEFAULT,
    params: DSAParams | None = None,
    *,
    batch_shared: bool = False,
) -> jax.Array:
    """Differentiable siamese augmentation: one family per call, parameters per image.

    Same key => same family and same per-image parameters, whatever the pixels: call it
    with one key on the real and the synthetic batch (same size, or `batch_shared=True`)
    for siamese augmentation, and with the stored key to replay it. Equivalent to
    `apply_family_index(k_params, x, sample_family_index(key, strategy), strategy, ...)`
    with `_, k_params = jax.random.split(key)`. `strategy`, `params` and `batch_shared`
    are static (pass them via closure or `static_argnames` under `jax.jit`).
    """
    families = parse_strategy(strategy)
    if not families:
        return x_NHWC
    _, k_params = _split_key(key)
    index = sample_family_index(key, strategy)
    return apply_family_index(
        k_params, x_NHWC, index, strategy, params, batch_shared=batch_shared
    )


def siamese_dsa(key: PRNGKey, x_real: jax.Array, x_syn: jax.Array,
                strategy: str) -> tuple[jax.Array, jax.Array]:
    """The same DSA draw on a real and a synthetic batch of one class.

    The reference seeds `DiffAugment` identically for both and, in seeded mode, shares one
    parameter set over the whole batch (`theta[:] = theta[0]`), hence `batch_shared=True`
    (the two batches differ in size anyway).
    """
    aug = lambda x: dsa(key, x, strategy, batch_shared=True)
    return aug(x_real), aug(x_syn)


def dsa_augment(strategy: str | None) -> Callable[[PRNGKey, jax.Array], jax.Array] | None:
    """`dsa` with a fixed strategy as a training loop's `augment_fn(key, x)`; None when the
    strategy has no family ('', 'none', None), so the loop skips augmentation."""
    if not parse_strategy(strategy):
        return None
    return functools.partial(dsa, strategy=strategy)
