"""CutMix (Yun et al. 2019) as pure functions of PRNG keys: the box, then the paste."""

from __future__ import annotations

import jax
import jax.numpy as jnp

PRNGKey = jax.Array

__all__ = ["cutmix_box", "paste_box"]


def cutmix_box(k_lam: PRNGKey, k_cy: PRNGKey, k_cx: PRNGKey, h: int, w: int,
               alpha: float = 1.0) -> jax.Array:
    """(y0, y1, x0, x1) int32 region: lam ~ Beta(alpha, alpha), side ratio sqrt(1 - lam),
    centre uniform on the image, clipped to it (the CutMix reference)."""
    lam = (jax.random.uniform(k_lam) if alpha == 1.0  # Beta(1, 1), cheap to compile
           else jax.random.beta(k_lam, alpha, alpha))
    cut = jnp.sqrt(1.0 - lam)
    ch, cw = (cut * h).astype(jnp.int32), (cut * w).astype(jnp.int32)
    cy, cx = jax.random.randint(k_cy, (), 0, h), jax.random.randint(k_cx, (), 0, w)
    return jnp.stack([jnp.clip(cy - ch // 2, 0, h), jnp.clip(cy + ch // 2, 0, h),
                      jnp.clip(cx - cw // 2, 0, w), jnp.clip(cx + cw // 2, 0, w)]).astype(jnp.int32)


def paste_box(x_NHWC: jax.Array, x_src_NHWC: jax.Array, box_4: jax.Array) -> jax.Array:
    """x with the region box_4 = (y0, y1, x0, x1) taken from x_src (same shape)."""
    h, w = x_NHWC.shape[1], x_NHWC.shape[2]
    ys, xs = jnp.arange(h).reshape(h, 1), jnp.arange(w).reshape(1, w)
    inside_HW = ((ys >= box_4[0]) & (ys < box_4[1]) & (xs >= box_4[2]) & (xs < box_4[3]))
    return jnp.where(inside_HW.reshape(1, h, w, 1), x_src_NHWC, x_NHWC)
