"""Trajectory-matching loss and its gradient, three ways (spec sections 2-3).

The matching loss of one outer iteration (spec 2.3) is

    L(X, Y, alpha) = ||theta_N - theta_T||^2 / D,        D = ||theta_0 - theta_T||^2,   (1)
    theta_{i+1} = theta_i - alpha * g_i,                 g_i = grad_theta CE_i(theta_i; X, Y),  (2)

with alpha = exp(log_lr), summed over all parameter leaves (one ratio). This module gives
(L, dL/dX, dL/dY, dL/dlog_lr) for a fixed inner schedule (minibatch indices and augmentation
keys), so that all three modes see exactly the same inner loop:

- ``bptt``:  reverse-mode through the `lax.scan` of (2). Exact; memory ~ N x activations.
- ``remat``: the same, with `jax.checkpoint` on each inner step. Exact; memory ~ N x |theta|
  plus one step's activations (the scan keeps the carries, each step is recomputed).
- ``tesla``: TESLA's first-order procedure. From (1)-(2), theta_N = theta_0 - alpha G with
  G = sum_i g_i. Treating every theta_i as a constant (i.e. dropping the Hessian chain through
  which X changes later iterates), dL/dG = -(2 alpha / D) r with r = theta_N - theta_T, so

      dL/dX = sum_i v^T dg_i/dX,   v = (2/D) [alpha (theta_T - theta_0) + alpha^2 G],      (3)
      dL/dalpha = -(2/D) <r, G>,   dL/dlog_lr = alpha dL/dalpha.                           (4)

  (4) is the derivative of the closed form ||theta_0 - alpha G - theta_T||^2 / D with G held
  fixed. Exact for N = 1; an approximation for N > 1 (measured in tests/test_mtt.py).
  TESLA's own code (justincui03/tesla distill.py) moves the images by HALF of (3): its
  `2 * torch.autograd.grad(...)` repeats a tuple instead of doubling the VJP. This module
  returns (3) itself; a preset that copies TESLA's lr_img halves it
  (configs/mtt/tesla_imagenet64.py; tests/test_reference_tm.py checks both).

Every function here is pure and jittable; nothing depends on a model library.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Literal, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax
from jax import lax

PyTree = Any
ApplyFn = Callable[[PyTree, jax.Array], jax.Array]  # (params, x_NHWC) -> logits_BxK
AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]  # (key, x_NHWC) -> x_NHWC
GradMode = Literal["bptt", "remat", "tesla"]
LabelKind = Literal["hard", "probs", "logits"]

GRAD_MODES: tuple[str, ...] = ("bptt", "remat", "tesla")

# `jax.checkpoint` policy of the `remat` mode when the inner scan is rolled or partly unrolled:
# None saves nothing but the scan carries (the constant-memory design of spec section 3).
# When the scan is fully unrolled (unroll=True or >= N, the XLA:CPU speed setting) XLA keeps
# bptt-sized temporaries whatever the policy (measured, ConvNet-D3 w32, N 10, 100 images:
# temp 1230 MB for bptt and 1233 MB for remat, vs 185 MB for remat with a rolled scan), so
# `remat` then skips the checkpoint: same gradient, no recomputation (~5 % faster).
_REMAT_POLICY = None


def identity_augment(key: jax.Array, x_NHWC: jax.Array) -> jax.Array:
    """No augmentation; the default `augment_fn`."""
    del key
    return x_NHWC


class MatchingGrads(NamedTuple):
    """Gradients of the matching loss (1). `labels` is None for hard (integer) labels."""

    x_syn_NHWC: jax.Array
    labels: jax.Array | None
    log_lr: jax.Array


# ----------------------------------------------------------------------------------------------
# Pieces
# ----------------------------------------------------------------------------------------------


def _tree_sq_norm(tree: PyTree) -> jax.Array:
    return sum(jnp.sum(jnp.square(leaf)) for leaf in jax.tree.leaves(tree))


def param_distance_loss(theta_N: PyTree, theta_0: PyTree, theta_target: PyTree) -> jax.Array:
    """Eq. (1): ||theta_N - theta_T||^2 / ||theta_0 - theta_T||^2, summed over all leaves.

    The references also divide both norms by the parameter count; that cancels in the ratio.
    """
    num = _tree_sq_norm(jax.tree.map(jnp.subtract, theta_N, theta_target))
    den = _tree_sq_norm(jax.tree.map(jnp.subtract, theta_0, theta_target))
    return num / den


def infer_label_kind(labels: jax.Array) -> LabelKind:
    """Integer labels are hard class ids; float labels default to logits (DATM)."""
    return "hard" if jnp.issubdtype(labels.dtype, jnp.integer) else "logits"


def inner_cross_entropy(logits_BxK: jax.Array, labels_B: jax.Array, label_kind: LabelKind) -> jax.Array:
    """Inner-loop loss: mean CE for hard labels; `sum(-log_softmax(out) * p) / B` for soft ones.

    `probs` takes target probabilities (TESLA-assigned labels); `logits` takes label logits and
    uses p = softmax(logits) (DATM's SoftCrossEntropy), so the logits can be learned.
    """
    if label_kind == "hard":
        return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits_BxK, labels_B))
    if label_kind == "probs":
        p_BxK = labels_B
    elif label_kind == "logits":
        p_BxK = jax.nn.softmax(labels_B, axis=-1)
    else:
        raise ValueError(f"unknown label_kind {label_kind!r}")
    return jnp.sum(-jax.nn.log_softmax(logits_BxK, axis=-1) * p_BxK) / logits_BxK.shape[0]


def intermediate_steps(syn_steps: int, expert_epochs: int) -> tuple[int, ...]:
    """AST's intermediate matching points: inner step (N // M) * i is matched to expert epoch
    s + i, i = 1..M-1 (steps that would be 0 are dropped)."""
    return tuple(n for n in ((syn_steps // expert_epochs) * i for i in range(1, expert_epochs))
                 if 0 < n < syn_steps)


def intermediate_loss(thetas: Sequence[PyTree], theta_0: PyTree, mid_targets_M: PyTree) -> jax.Array:
    """AST's intermediate terms, weight 1 each: sum_i ||theta_{n_i} - traj[s+i]||^2 /
    ||theta_0 - traj[s+i]||^2, with mid_targets_M leaves (M-1, ...) = traj[s+1 .. s+M-1]."""
    total = jnp.zeros(())
    for i, theta in enumerate(thetas):
        target = jax.tree.map(lambda a, i=i: a[i], mid_targets_M)
        total = total + param_distance_loss(theta, theta_0, target)
    return total


def make_inner_schedule(
    key: jax.Array, num_syn: int, syn_steps: int, batch_syn: int | None
) -> tuple[jax.Array, jax.Array]:
    """Minibatch indices (N, batch_syn) and per-step augmentation keys (N,) for one iteration.

    Indices are consecutive chunks of concatenated fresh permutations of the synthetic set,
    i.e. a new permutation is drawn whenever the previous one is exhausted, as in the
    references. Fixing the schedule up front (rather than drawing inside the loop) is what lets
    `remat` and `tesla` replay the exact same minibatches and augmentations. When batch_syn
    does not divide num_syn a chunk may straddle two permutations (the references instead take
    one smaller chunk); the reference presets all use divisors.
    """
    batch_syn = num_syn if batch_syn is None else int(batch_syn)
    if not 0 < batch_syn <= num_syn:
        raise ValueError(f"batch_syn={batch_syn} must be in [1, {num_syn}]")
    k_perm, k_aug = jax.random.split(key)
    num_perms = math.ceil(syn_steps * batch_syn / num_syn)
    perms_PxS = jax.vmap(lambda k: jax.random.permutation(k, num_syn))(jax.random.split(k_perm, num_perms))
    step_idx_NxB = perms_PxS.reshape(-1)[: syn_steps * batch_syn].reshape(syn_steps, batch_syn)
    return step_idx_NxB.astype(jnp.int32), jax.random.split(k_aug, syn_steps)


def _make_step_grad(apply_fn: ApplyFn, augment_fn: AugmentFn, label_kind: LabelKind):
    """g_i of eq. (2): the inner gradient at theta on minibatch `idx_B` augmented with `key`."""

    def step_grad(theta: PyTree, x_syn_NHWC: jax.Array, labels: jax.Array, idx_B: jax.Array, key: jax.Array):
        x_BHWC = augment_fn(key, x_syn_NHWC[idx_B])
        y_B = labels[idx_B]
        return jax.grad(lambda th: inner_cross_entropy(apply_fn(th, x_BHWC), y_B, label_kind))(theta)

    return step_grad


def _scan_inner(step_grad, lr, momentum, x_syn_NHWC, labels, carry, step_idx_NxB, step_keys_N,
                unroll, remat):
    """Eq. (2) over the given schedule from `carry` = theta (momentum 0) or (theta, buffer)
    (heavy ball: b <- m b + g_i, theta <- theta - alpha b; b = 0 before the first step)."""

    def body(c, idx_and_key):
        idx_B, key = idx_and_key
        theta = c[0] if momentum else c
        g = step_grad(theta, x_syn_NHWC, labels, idx_B, key)
        if momentum:
            buf = jax.tree.map(lambda b, gi: momentum * b + gi, c[1], g)
            return (jax.tree.map(lambda p, bi: p - lr * bi, theta, buf), buf), None
        return jax.tree.map(lambda p, gi: p - lr * gi, theta, g), None

    full_unroll = unroll is True or (not isinstance(unroll, bool) and unroll >= step_idx_NxB.shape[0])
    if remat and not full_unroll:  # see _REMAT_POLICY for why a full unroll skips it
        # prevent_cse=False is safe (and cheaper) under scan, per the jax.checkpoint docs.
        body = jax.checkpoint(body, prevent_cse=False, policy=_REMAT_POLICY)
    carry, _ = lax.scan(body, carry, (step_idx_NxB, step_keys_N), unroll=unroll)
    return carry


def unroll_inner(
    apply_fn: ApplyFn,
    x_syn_NHWC: jax.Array,
    labels: jax.Array,
    log_lr: jax.Array,
    theta_0: PyTree,
    step_idx_NxB: jax.Array,
    step_keys_N: jax.Array,
    *,
    augment_fn: AugmentFn = identity_augment,
    label_kind: LabelKind | None = None,
    unroll: int | bool = 1,
    remat: bool = False,
    momentum: float = 0.0,
    checkpoints: Sequence[int] = (),
) -> PyTree | tuple[PyTree, list[PyTree]]:
    """theta_N of eq. (2): N SGD steps (no weight decay; plain, or heavy-ball `momentum` as
    AST's inner loop) as a `lax.scan`.

    Differentiable in (x_syn, labels, log_lr). `remat=True` wraps each step in
    `jax.checkpoint`, so reverse mode stores only the N carries (parameter vectors); under a
    full unroll the checkpoint buys no memory on XLA and is skipped (see _REMAT_POLICY).
    `checkpoints` (increasing steps in (0, N)): also return [theta_n for n in checkpoints]
    (the scan is split there; AST's intermediate matching).
    """
    label_kind = label_kind or infer_label_kind(labels)
    step_grad = _make_step_grad(apply_fn, augment_fn, label_kind)
    lr = jnp.exp(log_lr)
    carry = (theta_0, jax.tree.map(jnp.zeros_like, theta_0)) if momentum else theta_0
    if not checkpoints:
        carry = _scan_inner(step_grad, lr, momentum, x_syn_NHWC, labels, carry, step_idx_NxB,
                            step_keys_N, unroll, remat)
        return carry[0] if momentum else carry
    bounds = (0, *checkpoints, step_idx_NxB.shape[0])
    if list(bounds) != sorted(set(bounds)):
        raise ValueError(f"checkpoints {tuple(checkpoints)} must increase strictly inside "
                         f"(0, {step_idx_NxB.shape[0]})")
    mids = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        carry = _scan_inner(step_grad, lr, momentum, x_syn_NHWC, labels, carry,
                            step_idx_NxB[a:b], step_keys_N[a:b], unroll, remat)
        mids.append(carry[0] if momentum else carry)
    theta_N = mids.pop()
    return theta_N, mids


# ----------------------------------------------------------------------------------------------
# Loss and gradients
# ----------------------------------------------------------------------------------------------


def _exact_loss_and_grads(remat, apply_fn, x_syn_NHWC, labels, log_lr, theta_0, theta_target,
                          step_idx_NxB, step_keys_N, augment_fn, label_kind, unroll,
                          momentum=0.0, mid_steps=(), mid_targets=None):
    theta_0 = lax.stop_gradient(theta_0)
    theta_target = lax.stop_gradient(theta_target)
    mid_targets = lax.stop_gradient(mid_targets)

    def loss_fn(x, y, log_lr):
        kw = dict(augment_fn=augment_fn, label_kind=label_kind, unroll=unroll, remat=remat)
        if momentum:
            kw["momentum"] = momentum
        if not mid_steps:
            theta_N = unroll_inner(apply_fn, x, y, log_lr, theta_0, step_idx_NxB, step_keys_N, **kw)
            return param_distance_loss(theta_N, theta_0, theta_target)
        theta_N, mids = unroll_inner(apply_fn, x, y, log_lr, theta_0, step_idx_NxB, step_keys_N,
                                     checkpoints=mid_steps, **kw)
        return param_distance_loss(theta_N, theta_0, theta_target) + intermediate_loss(
            mids, theta_0, mid_targets)

    if label_kind == "hard":  # integer labels carry no gradient
        loss, (g_x, g_lr) = jax.value_and_grad(loss_fn, argnums=(0, 2))(x_syn_NHWC, labels, log_lr)
        return loss, MatchingGrads(g_x, None, g_lr)
    loss, (g_x, g_y, g_lr) = jax.value_and_grad(loss_fn, argnums=(0, 1, 2))(x_syn_NHWC, labels, log_lr)
    return loss, MatchingGrads(g_x, g_y, g_lr)


def _tesla_loss_and_grads(apply_fn, x_syn_NHWC, labels, log_lr, theta_0, theta_target,
                          step_idx_NxB, step_keys_N, augment_fn, label_kind, unroll):
    """Eqs. (3)-(4): forward without a graph, then one recomputing pass of per-step VJPs."""
    step_grad = _make_step_grad(apply_fn, augment_fn, label_kind)
    x_syn_NHWC, labels, log_lr, theta_0, theta_target = lax.stop_gradient(
        (x_syn_NHWC, labels, log_lr, theta_0, theta_target))
    lr = jnp.exp(log_lr)

    # Forward: keep theta_i (i = 0..N-1) and G = sum_i g_i; memory N x |theta|, no activations.
    def fwd(carry, idx_and_key):
        theta, G = carry
        g = step_grad(theta, x_syn_NHWC, labels, *idx_and_key)
        theta_next = jax.tree.map(lambda p, gi: p - lr * gi, theta, g)
        return (theta_next, jax.tree.map(jnp.add, G, g)), theta

    G0 = jax.tree.map(jnp.zeros_like, theta_0)
    (theta_N, G), thetas_N = lax.scan(fwd, (theta_0, G0), (step_idx_NxB, step_keys_N), unroll=unroll)

    loss = param_distance_loss(theta_N, theta_0, theta_target)
    D = _tree_sq_norm(jax.tree.map(jnp.subtract, theta_0, theta_target))
    r = jax.tree.map(jnp.subtract, theta_N, theta_target)  # = theta_0 - lr G - theta_T
    # dL/dG = -(2 lr / D) r = (2/D) [lr (theta_T - theta_0) + lr^2 G]        -- eq. (3)
    v = jax.tree.map(lambda ri: (-2.0 * lr / D) * ri, r)
    # dL/dlr = -(2/D) <r, G>; chain rule to log_lr                              -- eq. (4)
    g_log_lr = lr * (-2.0 / D) * optax.tree.vdot(r, G)

    # Backward: recompute g_i at the stored theta_i and accumulate v^T dg_i/d(X, Y).
    hard = label_kind == "hard"

    def bwd(acc, theta_idx_key):
        theta_i, idx_B, key = theta_idx_key
        if hard:
            _, vjp = jax.vjp(lambda x: step_grad(theta_i, x, labels, idx_B, key), x_syn_NHWC)
            (gx,) = vjp(v)
            return (acc[0] + gx, acc[1]), None
        _, vjp = jax.vjp(lambda x, y: step_grad(theta_i, x, y, idx_B, key), x_syn_NHWC, labels)
        gx, gy = vjp(v)
        return (acc[0] + gx, acc[1] + gy), None

    acc0 = (jnp.zeros_like(x_syn_NHWC), None if hard else jnp.zeros_like(labels))
    (g_x, g_y), _ = lax.scan(bwd, acc0, (thetas_N, step_idx_NxB, step_keys_N), unroll=unroll)
    return loss, MatchingGrads(g_x, g_y, g_log_lr)


def matching_loss_and_grads(
    mode: GradMode,
    apply_fn: ApplyFn,
    x_syn_NHWC: jax.Array,
    labels: jax.Array,
    log_lr: jax.Array,
    theta_0: PyTree,
    theta_target: PyTree,
    step_idx_NxB: jax.Array,
    step_keys_N: jax.Array,
    *,
    augment_fn: AugmentFn = identity_augment,
    label_kind: LabelKind | None = None,
    unroll: int | bool = 1,
    momentum: float = 0.0,
    mid_steps: Sequence[int] = (),
    mid_targets: PyTree | None = None,
) -> tuple[jax.Array, MatchingGrads]:
    """Matching loss (1) and its gradient w.r.t. (x_syn, labels, log_lr) by `mode`.

    Args:
      mode: "bptt" | "remat" (exact) | "tesla" (first-order, eqs. 3-4).
      apply_fn: pure student `(params, x_NHWC) -> logits_BxK`.
      labels: int (S,) class ids, or float (S, K) probabilities / logits (see `label_kind`).
      log_lr: log of the inner step size alpha (scalar).
      theta_0, theta_target: expert checkpoints at epochs s and s + M (not differentiated).
      step_idx_NxB, step_keys_N: the inner schedule (`make_inner_schedule`); replaying it
        replays minibatches and augmentations exactly.
      label_kind: "hard" | "probs" | "logits"; inferred from the dtype when None
        (int -> hard, float -> logits).
      unroll: `lax.scan` unroll factor (True = fully unrolled; ~4x faster on XLA:CPU).
      momentum: heavy-ball momentum of the inner SGD (AST; 0 = plain SGD, the references').
      mid_steps, mid_targets: AST's intermediate matching (`intermediate_steps`,
        `intermediate_loss`): mid_targets leaves (len(mid_steps), ...). Exact modes only.
    Returns:
      (loss, MatchingGrads(x_syn_NHWC, labels or None for hard labels, log_lr)).
    """
    label_kind = label_kind or infer_label_kind(labels)
    args = (apply_fn, x_syn_NHWC, labels, log_lr, theta_0, theta_target, step_idx_NxB, step_keys_N,
            augment_fn, label_kind, unroll)
    ast = {} if not (momentum or mid_steps) else dict(momentum=momentum, mid_steps=tuple(mid_steps),
                                                       mid_targets=mid_targets)
    if mode == "bptt":
        return _exact_loss_and_grads(False, *args, **ast)
    if mode == "remat":
        return _exact_loss_and_grads(True, *args, **ast)
    if mode == "tesla":
        if ast:
            raise ValueError("grad_mode='tesla' assumes plain SGD and one target; use bptt or "
                             "remat with inner momentum or intermediate matching")
        return _tesla_loss_and_grads(*args)
    raise ValueError(f"unknown grad mode {mode!r}; expected one of {GRAD_MODES}")
