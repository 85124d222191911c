"""Compiled training of one network; vmap it over keys for several seeds."""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from jaxdd.models import Model, Variables

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a network is trained (evaluation protocol, experts, teachers)."""

    epochs: int                 # passes over the training set
    batch_size: int = 256       # images per step (the last batch of an epoch is masked)
    lr: float = 0.01            # default step size; a learned lr passed to train_network wins
    momentum: float = 0.9       # SGD momentum (PyTorch convention: buf = m * buf + g)
    weight_decay: float = 5e-4  # coupled L2 as PyTorch SGD, applied to every parameter
    schedule: str = "step"      # step: x0.1 at epochs // 2 | cosine | constant
    optimizer: str = "sgd"      # sgd | adamw (decoupled wd, for statistics-matching students)
    dsa: str = "color_crop_cutout_flip_scale_rotate"  # DSA strategy; "" = no augmentation

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.schedule not in ("step", "cosine", "constant"):
            raise ValueError(f"unknown lr schedule {self.schedule!r}; use step, cosine or constant")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use sgd or adamw")


def soft_cross_entropy(logits_BxK: jax.Array, target_BxK: jax.Array) -> jax.Array:
    """Per-example CE against probability targets (equals hard CE for one-hot targets)."""
    return -(jax.nn.log_softmax(logits_BxK) * target_BxK).sum(-1)


def _schedule(cfg: TrainConfig, lr: jax.Array, total_steps: int) -> optax.Schedule:
    if cfg.schedule == "step":
        boundary = total_steps // 2
        return lambda count: lr * jnp.where(count >= boundary, 0.1, 1.0)
    if cfg.schedule == "cosine":
        return lambda count: lr * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count, total_steps) / total_steps))
    return lambda count: lr


def make_optimizer(cfg: TrainConfig, lr: jax.Array, total_steps: int) -> optax.GradientTransformation:
    sched = _schedule(cfg, lr, total_steps)
    if cfg.optimizer == "adamw":
        return optax.adamw(sched, weight_decay=cfg.weight_decay)
    return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                       optax.sgd(sched, momentum=cfg.momentum or None))


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def train_network(key: jax.Array, model: Model, cfg: TrainConfig, x_NHWC: jax.Array,
                  y_target: jax.Array, lr: jax.Array | float | None = None,
                  augment_fn: AugmentFn | None = None,
                  init_variables: Variables | None = None) -> Variables:
    """Train a fresh network (from `key`) on (x, y) and return its variables.

    y_target: (N,) int labels or (N, K) probabilities. Pure and jittable; vmap over `key`
    for several seeds. Every random choice (init, order, augmentation) comes from `key`.
    """
    n = x_NHWC.shape[0]
    if y_target.ndim == 1:
        y_target = jax.nn.one_hot(y_target, model.num_classes, dtype=x_NHWC.dtype)
    spe = steps_per_epoch(n, min(cfg.batch_size, n))
    bs = min(cfg.batch_size, n)
    total = cfg.epochs * spe
    lr = jnp.asarray(cfg.lr if lr is None else lr, x_NHWC.dtype)
    tx = make_optimizer(cfg, lr, total)
    k_init, k_loop = jax.random.split(key)
    variables = model.init(k_init) if init_variables is None else init_variables
    opt_state = tx.init(variables["params"])

    def loss_fn(params, rest, xb, yb, mask):
        logits, new_vars = model.apply_train({**rest, "params": params}, xb)
        loss = (soft_cross_entropy(logits, yb) * mask).sum() / mask.sum()
        return loss, new_vars

    def batch_step(carry, inp):
        variables, opt_state = carry
        idx, mask, k_aug = inp
        xb, yb = x_NHWC[idx], y_target[idx]
        if augment_fn is not None:
            xb = augment_fn(k_aug, xb)
        rest = {k: v for k, v in variables.items() if k != "params"}
        grads, new_vars = jax.grad(loss_fn, has_aux=True)(variables["params"], rest, xb, yb, mask)
        updates, opt_state = tx.update(grads, opt_state, variables["params"])
        params = optax.apply_updates(variables["params"], updates)
        return ({**new_vars, "params": params}, opt_state), None

    def epoch_step(carry, k_epoch):
        k_perm, k_aug = jax.random.split(k_epoch)
        perm = jax.random.permutation(k_perm, n)
        pad = spe * bs - n
        idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(spe, bs)
        mask = (jnp.arange(spe * bs) < n).astype(x_NHWC.dtype).reshape(spe, bs)
        carry, _ = jax.lax.scan(batch_step, carry, (idx, mask, jax.random.split(k_aug, spe)))
        return carry, None

    (variables, _), _ = jax.lax.scan(epoch_step, (variables, opt_state),
                                     jax.random.split(k_loop, cfg.epochs))
    return variables


def accuracy(model: Model, variables: Variables, x_NHWC: jax.Array, y: jax.Array,
             batch_size: int = 1000) -> jax.Array:
    """Top-1 accuracy in [0, 1], evaluated in fixed-size chunks (jittable, vmappable)."""
    n = x_NHWC.shape[0]
    nb = steps_per_epoch(n, batch_size)
    pad = nb * batch_size - n
    xp = jnp.pad(x_NHWC, ((0, pad),) + ((0, 0),) * 3).reshape(nb, batch_size, *x_NHWC.shape[1:])
    yp = jnp.pad(y, (0, pad), constant_values=-1).reshape(nb, batch_size)

    def chunk(c, xy):
        xb, yb = xy
        return c + (model.apply(variables, xb).argmax(-1) == yb).sum(), None

    correct, _ = jax.lax.scan(chunk, jnp.zeros((), jnp.int32), (xp, yp))
    return correct / n
