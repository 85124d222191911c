"""The statistics-matching losses: SRe2L's BN term (eq. 1), G-VBSM's conv term (eq. 2),
moving-average statistics and the within-class diversity term (eq. 3).

Equations and reference facts: see `jaxdd.methods.statistics`.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd.methods.base import PRNGKey
from jaxdd.methods.statistics.capture import BNStat, ConvStat, capture
from jaxdd.tree import safe_norm

__all__ = ["bn_matching_loss", "ema_stats", "conv_drop_mask", "conv_ema_stats",
           "conv_matching_loss", "sre2l_loss", "adaptive_avg_pool", "eigvalsh_stable",
           "diversity_loss"]

def bn_matching_loss(stats: Sequence[BNStat], first_bn_multiplier: float = 10.0,
                     r_var: float = 1.0) -> jax.Array:
    """sum_l w_l (r_var ||var_l - rv_l|| + ||mean_l - rm_l||), w_0 = first_bn_multiplier (eq. 1)."""
    terms = [r_var * safe_norm(s.var_C - s.running_var_C) + safe_norm(s.mean_C - s.running_mean_C)
             for s in stats]
    weights = [first_bn_multiplier] + [1.0] * (len(terms) - 1)
    return sum((w * t for w, t in zip(weights, terms)), jnp.zeros((), jnp.float32))


def ema_stats(stats: Sequence[BNStat], ema: Sequence[tuple[jax.Array, jax.Array]], alpha: float
              ) -> tuple[list[BNStat], list[tuple[jax.Array, jax.Array]]]:
    """G-VBSM moving-average statistics: ema <- a ema + (1 - a) sg(stat); the matched value
    is ema + (stat - sg(stat)) (value of the average, gradient of the current batch)."""
    sg = jax.lax.stop_gradient
    new_ema, out = [], []
    for s, (em, ev) in zip(stats, ema):
        em = alpha * em + (1 - alpha) * sg(s.mean_C)
        ev = alpha * ev + (1 - alpha) * sg(s.var_C)
        new_ema.append((em, ev))
        out.append(s._replace(mean_C=em + (s.mean_C - sg(s.mean_C)),
                              var_C=ev + (s.var_C - sg(s.var_C))))
    return out, new_ema


def conv_drop_mask(key: PRNGKey, num_layers: int, drop: float) -> jax.Array:
    """keep_L: each conv term kept with probability 1 - drop (G-VBSM: dropped with p = drop)."""
    if drop <= 0:
        return jnp.ones((num_layers,), bool)
    return jax.random.bernoulli(key, 1.0 - drop, (num_layers,))


def conv_ema_stats(stats: Sequence[ConvStat], ema: Sequence[ConvStat], alpha: float,
                   keep_L: jax.Array | None = None) -> tuple[list[ConvStat], list[ConvStat]]:
    """`ema_stats` for conv terms: a dropped layer (keep_L false) leaves its average as it
    was (the reference returns before its update)."""
    sg = jax.lax.stop_gradient
    out, new_ema = [], []
    for i, (s, e) in enumerate(zip(stats, ema)):
        upd = ConvStat(*(alpha * ei + (1 - alpha) * sg(si) for si, ei in zip(s, e)))
        if keep_L is not None:
            upd = ConvStat(*(jnp.where(keep_L[i], u, ei) for u, ei in zip(upd, e)))
        new_ema.append(upd)
        out.append(ConvStat(*(u + (si - sg(si)) for u, si in zip(upd, s))))
    return out, new_ema


def conv_matching_loss(stats: Sequence[ConvStat], targets: Sequence[ConvStat],
                       keep_L: jax.Array | None = None, first_multiplier: float = 1.0
                       ) -> jax.Array:
    """sum_l w_l keep_l C_l (eq. 2), w_0 = first_multiplier; a dropped term is exactly 0
    with gradient 0 (safe norms)."""
    if len(stats) != len(targets):
        raise ValueError(f"the teacher has {len(stats)} convolutions but the targets hold "
                         f"{len(targets)} layers: targets of another model?")
    total = jnp.zeros((), jnp.float32)
    for i, (s, t) in enumerate(zip(stats, targets)):
        if (s.patch_mean_P.shape != jnp.shape(t.patch_mean_P)
                or s.mean_C.shape != jnp.shape(t.mean_C)):
            raise ValueError(f"conv layer {i}: statistics {s.mean_C.shape}/{s.patch_mean_P.shape} "
                             f"vs targets {jnp.shape(t.mean_C)}/{jnp.shape(t.patch_mean_P)}; "
                             f"computed with another patch size, per-channel mode or image size?")
        term = (safe_norm(s.var_C - t.var_C) + safe_norm(s.mean_C - t.mean_C)
                + safe_norm(s.patch_mean_P - t.patch_mean_P)
                + safe_norm(s.patch_var_P - t.patch_var_P))
        w = first_multiplier if i == 0 else 1.0
        total = total + w * (term if keep_L is None else jnp.where(keep_L[i], term, 0.0))
    return total


def sre2l_loss(x_aug_NHWC: jax.Array, y_B: jax.Array, model: Any, variables: Any, *,
               r_bn: float = 0.01, first_bn_multiplier: float = 10.0, r_var: float = 1.0,
               ema: Sequence[tuple[jax.Array, jax.Array]] | None = None, ema_alpha: float = 0.8,
               conv_targets: Sequence[ConvStat] | None = None, conv_keep_L: jax.Array | None = None,
               conv_ema: Sequence[ConvStat] | None = None, patch_size: int = 16,
               patch_per_channel: bool = False) -> tuple[jax.Array, dict[str, Any]]:
    """Eq. (1) on an already augmented batch (+ G-VBSM's eq. (2) with `conv_targets`):
    (loss, {'ce', 'bn', 'conv', 'ema', 'conv_ema'}).

    y_B: int class labels. With `ema` / `conv_ema` (G-VBSM) the statistics are moving
    averages and the updated averages come back in aux. `model` may be a Linen model or an
    nnx.Module (then `variables` is its nnx.State or None).
    """
    patch = None if conv_targets is None else (patch_size, patch_per_channel)
    cap = capture(model, variables, x_aug_NHWC, None, patch)
    if not cap.bn and conv_targets is None:
        raise ValueError("the model called no BatchNorm: statistics matching needs a BN teacher "
                         "(or conv statistics, recover.conv_stats, as G-VBSM's ConvNet)")
    logits = cap.logits.astype(jnp.promote_types(cap.logits.dtype, jnp.float32))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y_B).mean()
    stats, new_ema, new_conv_ema = cap.bn, None, None
    if ema is not None:
        stats, new_ema = ema_stats(stats, ema, ema_alpha)
    conv = jnp.zeros((), jnp.float32)
    first_conv = conv_targets is not None and cap.first_is_conv
    if conv_targets is not None:
        cstats = cap.conv
        if conv_ema is not None:
            cstats, new_conv_ema = conv_ema_stats(cstats, conv_ema, ema_alpha, conv_keep_L)
        conv = conv_matching_loss(cstats, conv_targets, conv_keep_L,
                                  first_bn_multiplier if first_conv else 1.0)
    bn = bn_matching_loss(stats, 1.0 if first_conv else first_bn_multiplier, r_var)
    return ce + r_bn * (bn + conv), {"ce": ce, "bn": bn, "conv": conv, "ema": new_ema,
                                     "conv_ema": new_conv_ema}


# ---------------------------------------------------------------------------------------
# 2b. G-VBSM within-class diversity (eq. 3)


def _pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of torch's AdaptiveAvgPool1d: bin i averages
    [floor(i n_in / n_out), ceil((i + 1) n_in / n_out))."""
    m = np.zeros((n_out, n_in), np.float64)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x_NHWC: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """AdaptiveAvgPool2d(out_hw) (exact torch bins; upsamples by repetition when smaller)."""
    dt = jnp.promote_types(x_NHWC.dtype, jnp.float32)
    ph = jnp.asarray(_pool_matrix(x_NHWC.shape[1], out_hw[0]), dt)
    pw = jnp.asarray(_pool_matrix(x_NHWC.shape[2], out_hw[1]), dt)
    return jnp.einsum("ih,nhwc,jw->nijc", ph, x_NHWC.astype(dt), pw)


@jax.custom_jvp
def eigvalsh_stable(a_GxKxK: jax.Array) -> jax.Array:
    """Ascending eigenvalues of symmetric matrices with the first-order rule
    d lam_k = v_k^T dA v_k only. JAX's eigh JVP also differentiates the eigenvectors, with
    1 / (lam_i - lam_j) factors that are inf for repeated eigenvalues (identical images,
    rank-deficient Grams); for the spectral functions used here that part is not needed."""
    return jnp.linalg.eigh(a_GxKxK)[0]


@eigvalsh_stable.defjvp
def _eigvalsh_stable_jvp(primals, tangents):
    (a,), (da,) = primals, tangents
    w, v = jnp.linalg.eigh(a)
    v = jax.lax.stop_gradient(v)
    da = 0.5 * (da + jnp.swapaxes(da, -1, -2))  # eigh symmetrises its input
    return w, jnp.einsum("...ik,...ij,...jk->...k", v, da, v)


def diversity_loss(x_aug_NHWC: jax.Array, group_size: int, tau: float = 4.0,
                   side: int = 32) -> jax.Array:
    """Eq. (3): sum over classes of KL(sg(softmax(lam / tau)) || softmax(lam)), lam = the
    eigenvalues of the Gram matrix of the class's images pooled to side x side, flattened.

    The batch must be class-major: consecutive groups of `group_size` images share a class
    (`recover_all` builds batches so). Minimising it flattens each class's spectrum, i.e.
    spreads its images apart. A group of one image contributes exactly 0.
    """
    b = x_aug_NHWC.shape[0]
    if b % group_size:
        raise ValueError(f"batch of {b} images is not a whole number of class groups of "
                         f"{group_size} (config.ipc_per_batch)")
    f_GxKxD = adaptive_avg_pool(x_aug_NHWC, (side, side)).reshape(b // group_size, group_size, -1)
    gram_GxKxK = jnp.einsum("gid,gjd->gij", f_GxKxD, f_GxKxD)
    lam_GxK = eigvalsh_stable(gram_GxKxK)
    log_p = jax.nn.log_softmax(lam_GxK, axis=-1)
    log_q = jax.lax.stop_gradient(jax.nn.log_softmax(lam_GxK / tau, axis=-1))
    return jnp.sum(jnp.exp(log_q) * (log_q - log_p))
