"""DSA: semantics of every family, siamese replay, and the JAX transformations."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment as A
from jaxdd.augment import DSA_DEFAULT, FAMILIES, DSAParams, cutout_size, parse_strategy

# Everything is exercised compiled (once per shape and static config), as it is used;
# eager calls would dispatch, and compile, op by op. `test_jit_and_vmap` checks eager too.
_STATIC = ("strategy", "params", "batch_shared")
dsa_jit = jax.jit(A.dsa, static_argnames=_STATIC)
sample_family_index = jax.jit(A.sample_family_index, static_argnames="strategy")
FAM = {n: jax.jit(f, static_argnames=("params", "batch_shared")) for n, f in A.FAMILY_FNS.items()}
adjust_color = jax.jit(A.adjust_color, static_argnames="params")
translate = jax.jit(A.translate)
cutout = jax.jit(A.cutout, static_argnames="size_hw")
flip_horizontal = jax.jit(A.flip_horizontal)
scale = jax.jit(A.scale)
rotate = jax.jit(A.rotate, static_argnames="align_corners")
affine_resample = jax.jit(A.affine_resample, static_argnames="align_corners")

N, H, W, C = 6, 12, 12, 3
BIG = (32, 16, 16, 3)  # one shape for the statistical per-image tests


@pytest.fixture(autouse=True)
def _strict_rank_promotion():
    with jax.numpy_rank_promotion("raise"):
        yield


def _images(seed: int = 0, shape=(N, H, W, C), dtype=jnp.float32) -> jax.Array:
    """Strictly positive, all-distinct pixels: zeros and exact copies are then detectable.

    Drawn with NumPy: eager jax.random compiles a kernel per shape and dtype (slow)."""
    x = np.random.default_rng(seed).uniform(0.5, 1.5, shape)
    return jnp.asarray(x, dtype)


# ------------------------------------------------------------------------ strategies


def test_parse_strategy():
    assert parse_strategy(DSA_DEFAULT) == FAMILIES
    assert parse_strategy("crop_flip") == ("crop", "flip")
    for none in ("", "none", "None", None):
        assert parse_strategy(none) == ()
    with pytest.raises(ValueError, match="color, crop, cutout, flip, scale, rotate"):
        parse_strategy("crop_jitter")


def test_none_strategy_is_identity():
    x = _images()
    for none in ("", "none"):
        assert A.dsa(jax.random.key(0), x, none) is x


def test_subset_strategy_only_uses_its_families():
    x = _images()
    for seed in range(8):
        key = jax.random.key(seed)
        out = dsa_jit(key, x, "crop_flip")
        _, k_params = jax.random.split(key)
        candidates = [FAM["crop"](k_params, x), FAM["flip"](k_params, x)]
        assert any(bool(jnp.array_equal(out, c)) for c in candidates)


def test_family_choice_is_roughly_uniform():
    keys = jax.random.split(jax.random.key(0), 6000)
    idx = jax.jit(jax.vmap(A.sample_family_index))(keys)
    counts = np.bincount(np.asarray(idx), minlength=len(FAMILIES))
    # expected 1000 each, std ~29: allow 5 sigma.
    assert counts.shape == (6,) and np.all(np.abs(counts - 1000) < 150), counts


def test_dsa_is_sample_then_apply():
    x = _images()
    for seed in range(6):
        key = jax.random.key(seed)
        _, k_params = jax.random.split(key)
        idx = sample_family_index(key)
        expect = FAM[FAMILIES[int(idx)]](k_params, x)
        # Equal up to float reassociation (switch vs direct call fuse differently).
        np.testing.assert_allclose(dsa_jit(key, x), expect, rtol=1e-6, atol=2e-6)
        np.testing.assert_allclose(A.apply_family_index(k_params, x, int(idx)), expect, atol=2e-6)


# ------------------------------------------------------------- generic properties


@pytest.mark.parametrize("family", FAMILIES)
def test_shape_dtype_determinism_and_key_sensitivity(family):
    f = FAM[family]
    x = _images()
    a = f(jax.random.key(1), x)
    assert a.shape == x.shape and a.dtype == x.dtype
    np.testing.assert_array_equal(a, f(jax.random.key(1), x))
    assert not np.array_equal(a, f(jax.random.key(2), x))
    assert not np.array_equal(a, x)


@pytest.mark.parametrize("family", FAMILIES)
def test_float64_kept(family):
    with jax.enable_x64(True):
        x = _images(dtype=jnp.float64)
        out = FAM[family](jax.random.key(3), x)
        assert out.dtype == jnp.float64


@pytest.mark.parametrize("family", FAMILIES)
def test_differentiable_wrt_pixels(family):
    f = FAM[family]
    x = _images()
    w = _images(seed=9)

    def loss(x_NHWC):
        return jnp.sum(f(jax.random.key(4), x_NHWC) * w)

    g = jax.grad(loss)(x)
    assert g.shape == x.shape
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0


def test_dsa_grad_every_family_through_switch():
    x = _images()
    grad = jax.jit(jax.grad(lambda x, k: jnp.sum(A.dsa(k, x) ** 2)))
    seen = set()
    for seed in range(40):
        key = jax.random.key(seed)
        seen.add(int(sample_family_index(key)))
        g = grad(x, key)
        assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.max(jnp.abs(g))) > 0
    assert seen == set(range(len(FAMILIES)))


def test_jit_and_vmap():
    x = _images()
    key = jax.random.key(0)
    # Eager and compiled agree (a single-family strategy keeps the eager call cheap).
    np.testing.assert_array_equal(dsa_jit(key, x, "flip"), A.dsa(key, x, "flip"))
    # vmap over (key, batch): e.g. several seeds at once.
    keys = jax.random.split(jax.random.key(7), 4)
    xs = jnp.stack([_images(s) for s in range(4)])
    out = jax.jit(jax.vmap(A.dsa))(keys, xs)
    for i in range(4):
        np.testing.assert_allclose(out[i], dsa_jit(keys[i], xs[i]), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------- siamese


def test_siamese_same_key_same_family_and_params():
    """Every family is affine in x for fixed parameters, so with shared randomness
    dsa(k, (a + b) / 2) == (dsa(k, a) + dsa(k, b)) / 2; different params would break it."""
    a, b = _images(1), _images(2)
    for seed in range(24):
        key = jax.random.key(seed)
        mid = dsa_jit(key, (a + b) / 2)
        np.testing.assert_allclose(mid, (dsa_jit(key, a) + dsa_jit(key, b)) / 2, atol=1e-5)


def test_siamese_flip_decisions_align():
    a, b = _images(1, BIG), _images(2, BIG)
    key = jax.random.key(5)
    fa, fb = FAM["flip"](key, a), FAM["flip"](key, b)
    flipped_a = np.array([np.array_equal(fa[n], a[n, :, ::-1]) for n in range(32)])
    flipped_b = np.array([np.array_equal(fb[n], b[n, :, ::-1]) for n in range(32)])
    np.testing.assert_array_equal(flipped_a, flipped_b)
    assert 0 < flipped_a.sum() < 32


def test_batch_shared_aligns_batches_of_different_sizes():
    """batch_shared: one parameter set per call, whatever the batch size, so a real batch
    of 6 and a synthetic batch of 3 are augmented alike (siamese, as in DC/DSA)."""
    real, syn = _images(1), _images(2, (3, H, W, C))
    for seed in range(12):
        key = jax.random.key(seed)
        out_real = dsa_jit(key, real, batch_shared=True)
        out_syn = dsa_jit(key, syn, batch_shared=True)
        # Every family acts image by image: the prefix of the big batch is treated alike.
        np.testing.assert_allclose(dsa_jit(key, real[:3], batch_shared=True), out_real[:3],
                                   atol=1e-6)
        mid = dsa_jit(key, (real[:3] + syn) / 2, batch_shared=True)
        np.testing.assert_allclose(mid, (out_real[:3] + out_syn) / 2, atol=1e-5)
    x32 = _images(1, BIG)
    flips = FAM["flip"](jax.random.key(0), x32, batch_shared=True)
    mirrored = [np.array_equal(flips[n], x32[n, :, ::-1]) for n in range(32)]
    assert len(set(mirrored)) == 1


# -------------------------------------------------------------------- families


def test_color_formula_and_grey():
    x = _images()
    ub, us, uc = (jnp.asarray(u, jnp.float32) for u in np.random.default_rng(0).random((3, N)))
    xn = np.asarray(x, np.float64)
    y = xn + (np.asarray(ub)[:, None, None, None] - 0.5)
    m = y.mean(axis=3, keepdims=True)
    y = (y - m) * 2 * np.asarray(us)[:, None, None, None] + m
    m = y.mean(axis=(1, 2, 3), keepdims=True)
    y = (y - m) * (np.asarray(uc)[:, None, None, None] + 0.5) + m
    np.testing.assert_allclose(adjust_color(x, ub, us, uc), y, rtol=1e-5, atol=1e-5)
    grey = _images(shape=(N, H, W, 1))
    np.testing.assert_allclose(
        adjust_color(grey, ub, us, uc), adjust_color(grey, ub, jnp.zeros(N), uc), atol=1e-6
    )


def _shift_np(img: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[i, j] = img[i - dy, j - dx], zero where that falls outside."""
    h, w = img.shape[:2]
    out = np.zeros_like(img)
    if abs(dy) < h and abs(dx) < w:
        out[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
            max(-dy, 0) : h + min(-dy, 0), max(-dx, 0) : w + min(-dx, 0)
        ]
    return out


def test_translate_integer_shift_zero_fill():
    x = np.asarray(_images())
    dy = jnp.array([0, 1, -2, 3, -4, 12], jnp.int32)
    dx = jnp.array([0, -1, 2, -3, 4, 0], jnp.int32)
    out = np.asarray(translate(jnp.asarray(x), dy, dx))
    for n in range(N):
        np.testing.assert_array_equal(out[n], _shift_np(x[n], int(dy[n]), int(dx[n])))


def test_dsa_crop_is_a_bounded_integer_shift():
    x = np.asarray(_images(shape=BIG))
    s = int(16 * 0.125 + 0.5)  # = 2, the reference's shift range
    out = np.asarray(FAM["crop"](jax.random.key(0), jnp.asarray(x)))
    found = []
    for n in range(BIG[0]):
        shifts = [
            (dy, dx)
            for dy in range(-s, s + 1)
            for dx in range(-s, s + 1)
            if np.array_equal(out[n], _shift_np(x[n], dy, dx))
        ]
        assert len(shifts) == 1, n
        found.append(shifts[0])
    dys = {d[0] for d in found}
    assert min(dys) == -s and max(dys) == s  # the full range is used


def test_cutout_square_clipped():
    x = _images()
    centres = jnp.array([6, 0, 11, 3, 12, 5], jnp.int32)
    out = np.asarray(cutout(x, centres, centres[::-1], (6, 6)))
    for n in range(N):
        ch, cw = int(centres[n]), int(centres[::-1][n])
        rows = [i for i in range(ch - 3, ch + 3) if 0 <= i < H]
        cols = [j for j in range(cw - 3, cw + 3) if 0 <= j < W]
        expect = np.asarray(x[n]).copy()
        expect[np.ix_(rows, cols)] = 0.0
        np.testing.assert_array_equal(out[n], expect)


def test_dsa_cutout_zeroes_one_clipped_square():
    x = _images(shape=BIG)
    k = cutout_size(16, 16)
    assert k == (8, 8)
    out = np.asarray(FAM["cutout"](jax.random.key(0), x))
    clipped = 0
    for n in range(32):
        zero_HW = np.all(out[n] == 0, axis=-1)
        rows, cols = np.nonzero(zero_HW.any(axis=1))[0], np.nonzero(zero_HW.any(axis=0))[0]
        # A solid rectangle, the rest untouched.
        assert zero_HW.sum() == len(rows) * len(cols)
        assert np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1)
        np.testing.assert_array_equal(out[n][~zero_HW], np.asarray(x[n])[~zero_HW])
        # Full side unless it touches a border (clipped).
        for idx in (rows, cols):
            assert 1 <= len(idx) <= 8
            assert len(idx) == 8 or idx[0] == 0 or idx[-1] == 15
        clipped += len(rows) < 8 or len(cols) < 8
    assert 0 < clipped < 32


def test_flip_exact():
    x = _images(shape=BIG)
    out = np.asarray(FAM["flip"](jax.random.key(0), x))
    mirrored = np.asarray(x[:, :, ::-1])
    is_flipped = np.array([np.array_equal(out[n], mirrored[n]) for n in range(32)])
    unchanged = np.array([np.array_equal(out[n], np.asarray(x[n])) for n in range(32)])
    assert np.all(is_flipped ^ unchanged)
    assert 0 < is_flipped.sum() < 32
    np.testing.assert_array_equal(flip_horizontal(x, jnp.ones(32, bool)), mirrored)


def test_scale_and_rotate_identity():
    x = _images()
    np.testing.assert_allclose(scale(x, jnp.ones(N), jnp.ones(N)), x, atol=1e-6)
    np.testing.assert_array_equal(rotate(x, jnp.zeros(N)), x)


def test_rotate_quarter_turn_is_rot90():
    x = _images()
    out = rotate(x, jnp.full((N,), math.pi / 2))
    np.testing.assert_allclose(out, np.rot90(np.asarray(x), k=1, axes=(1, 2)), atol=1e-5)


def test_scale_two_samples_every_other_pixel():
    x = _images(shape=(1, 5, 5, 1))
    out = np.asarray(scale(x, jnp.array([2.0]), jnp.array([1.0])))
    # Column j samples c + 2 (j - c), c = 2: columns -2, 0, 2, 4, 6 -> 0, x0, x2, x4, 0.
    xn = np.asarray(x)
    np.testing.assert_allclose(out[0, :, 1:4, 0], xn[0, :, 0:5:2, 0], atol=1e-6)
    np.testing.assert_array_equal(out[0, :, [0, 4], 0], 0.0)


def _torch_affine_grid_sample(x_NHWC, theta_N23, align_corners):
    """grid_sample(x, affine_grid(theta)) written from torch's documented formulas."""
    x = np.asarray(x_NHWC, np.float64)
    n_img, h, w, _ = x.shape

    def base(size):
        if align_corners:
            return np.linspace(-1.0, 1.0, size)
        return (2.0 * np.arange(size) + 1.0) / size - 1.0

    def unnorm(g, size):
        return (g + 1.0) / 2.0 * (size - 1) if align_corners else ((g + 1.0) * size - 1.0) / 2.0

    gy, gx = np.meshgrid(base(h), base(w), indexing="ij")
    out = np.zeros_like(x)
    for n in range(n_img):
        t = np.asarray(theta_N23[n], np.float64)
        ix = unnorm(t[0, 0] * gx + t[0, 1] * gy + t[0, 2], w)
        iy = unnorm(t[1, 0] * gx + t[1, 1] * gy + t[1, 2], h)
        x0, y0 = np.floor(ix).astype(int), np.floor(iy).astype(int)
        for dy in (0, 1):
            for dx in (0, 1):
                yy, xx = y0 + dy, x0 + dx
                wgt = (1 - np.abs(iy - yy)) * (1 - np.abs(ix - xx))
                ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
                vals = x[n, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)]
                out[n] += np.where(ok, wgt, 0.0)[..., None] * vals
    return out


@pytest.mark.parametrize("align_corners", [True, False])
def test_affine_resample_matches_torch_formulas_non_square(align_corners):
    x = _images(shape=(4, 9, 14, 2))
    ang = np.array([0.2, -0.26, 0.05, 1.0])
    t = np.array([0.0, 0.1, -0.2, 0.0])
    theta = np.stack(
        [
            np.stack([np.cos(ang) * 1.1, -np.sin(ang), t], -1),
            np.stack([np.sin(ang), np.cos(ang) * 0.9, -t], -1),
        ],
        axis=1,
    )
    expect = _torch_affine_grid_sample(x, theta, align_corners)
    got = affine_resample(x, jnp.asarray(theta, jnp.float32), align_corners)
    np.testing.assert_allclose(got, expect, atol=2e-5)
    # The separable scale path is the same resampler for a diagonal theta.
    sx, sy = jnp.array([0.85, 1.2, 1.0, 1 / 1.2]), jnp.array([1.15, 0.9, 1.0, 1.2])
    zero = jnp.zeros(4)
    diag = jnp.stack([jnp.stack([sx, zero, zero], -1), jnp.stack([zero, sy, zero], -1)], 1)
    np.testing.assert_allclose(
        scale(x, sx, sy), affine_resample(x, diag, align_corners), atol=2e-6
    )


def test_custom_params_change_ranges():
    x = _images()
    params = DSAParams(prob_flip=1.0)
    np.testing.assert_array_equal(FAM["flip"](jax.random.key(0), x, params), x[:, :, ::-1])
    no_crop = DSAParams(ratio_crop_pad=0.0)
    np.testing.assert_array_equal(FAM["crop"](jax.random.key(0), x, no_crop), x)
