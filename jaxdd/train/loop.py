"""Compiled training of one network; vmap it over keys for several seeds.

A run is `train_init` followed by `train_epochs` (any number of chunks: epoch e always uses
`fold_in(key, e)`, so chunked and one-shot runs are identical). Chunks let the driver show
progress with an ETA without giving up the compiled `lax.scan`.

`make_update` is the one minibatch update (loss -> grad -> optional direction -> optimiser)
of every training loop: `train_epochs` feeds it permuted batches and soft cross-entropy, the
relabel student (`jaxdd.labels.relabel`) replayable augmented batches and a KD loss.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdd.augment import DSA_DEFAULT
from jaxdd.models import Model, Variables, auto_chunks, chunked
from jaxdd.tree import map_when_vmapped_on_cpu

AugmentFn = Callable[[jax.Array, jax.Array], jax.Array]
# direction_fn(grad_fn, params, grads) -> update direction; grad_fn(p) recomputes the
# gradient at other parameters on the same batch (GSAM/SAM need a second pass).
DirectionFn = Callable[[Callable[[Any], Any], Any, Any], Any]
# loss_fn(logits_BxK, batch) -> per-example loss_B; `batch` is whatever the loop's batch
# source yields next to the images (targets, teacher logits, class labels, ...).
LossFn = Callable[[jax.Array, Any], jax.Array]
# apply_train(variables, x_NHWC, mask_B) -> (logits_BxK, new variables: updated BN
# statistics, taken over the rows where mask_B != 0 only; `Model.apply_train`).
ApplyTrainFn = Callable[[Variables, jax.Array, jax.Array], tuple[jax.Array, Variables]]
# update(variables, opt_state, x_NHWC, batch, mask_B, lr=None) -> (variables, opt_state)
UpdateFn = Callable[..., tuple[Variables, Any]]


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How a network is trained (evaluation protocol, experts, teachers)."""

    epochs: int                 # passes over the training set
    batch_size: int = 256       # images per step (the last batch of an epoch is padded and
                                # masked: loss and BN statistics over its real images only)
    lr: float = 0.01            # default step size; a learned lr passed to train_init wins
    momentum: float = 0.9       # SGD momentum (PyTorch convention: buf = m * buf + g)
    weight_decay: float = 5e-4  # coupled L2 as PyTorch SGD, applied to every parameter
    schedule: str = "step"      # step: x0.1 at half the steps | cosine | constant | ast:
    #                             x0.6 after epoch epochs//2 + 1 (AST experts, buffer.py)
    optimizer: str = "sgd"      # sgd | adamw (decoupled wd, for statistics-matching students)
    dsa: str = DSA_DEFAULT  # DSA strategy; "" = no augmentation
    # ce: cross-entropy on probability targets | mse: 1/2 ||logits - y||^2 on regression
    # targets (FRePo's evaluation, lib/training/metrics.py:47-55; hard labels become
    # one-hot - 1/K, learned (N, K) targets are used as they are)
    loss: str = "ce"
    # Forward of each batch in chunks (`models.chunked`, same function; measured 8-24 % faster
    # training steps on the 2-core CPU); "auto" = `models.auto_chunks`, 1 = whole batch.
    image_chunks: int | str = "auto"

    def __post_init__(self):
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.image_chunks != "auto" and not (type(self.image_chunks) is int and self.image_chunks >= 1):
            raise ValueError(f"image_chunks={self.image_chunks!r}; expected 'auto' or an int >= 1 (1 = off)")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown lr schedule {self.schedule!r}; use one of {', '.join(SCHEDULES)}")
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; use sgd or adamw")
        if self.loss not in LOSSES:
            raise ValueError(f"unknown loss {self.loss!r}; use {' or '.join(LOSSES)}")


SCHEDULES = ("step", "cosine", "constant", "ast")


class TrainState(NamedTuple):
    variables: Variables
    opt_state: Any
    lr: jax.Array      # base step size (may be a learned one)
    key: jax.Array     # epoch e draws its order and augmentations from fold_in(key, e)
    epoch: jax.Array   # epochs done


def soft_cross_entropy(logits_BxK: jax.Array, target_BxK: jax.Array) -> jax.Array:
    """Per-example CE against probability targets (equals hard CE for one-hot targets)."""
    return -(jax.nn.log_softmax(logits_BxK) * target_BxK).sum(-1)


def squared_error(logits_BxK: jax.Array, target_BxK: jax.Array) -> jax.Array:
    """Per-example 1/2 ||logits - target||^2 (FRePo's `mean_squared_loss`)."""
    return 0.5 * ((logits_BxK - target_BxK) ** 2).sum(-1)


LOSSES: dict[str, LossFn] = {"ce": soft_cross_entropy, "mse": squared_error}


def class_targets(y_N: jax.Array, num_classes: int, loss: str = "ce") -> jax.Array:
    """Targets of hard labels: one-hot (ce), or one-hot - 1/K (mse: FRePo's centred
    regression targets)."""
    y = jax.nn.one_hot(y_N, num_classes, dtype=jnp.float32)
    return y - 1.0 / num_classes if loss == "mse" else y


def steps_per_epoch(n: int, batch_size: int) -> int:
    return -(-n // min(batch_size, n))


def make_optimizer(cfg: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """Optimiser whose lr is injected (so a traced, learned lr can drive it)."""

    def sched_scale(count):
        if cfg.schedule == "step":
            return jnp.where(count >= total_steps // 2, 0.1, 1.0)
        if cfg.schedule == "cosine":
            return 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(count, total_steps) / total_steps))
        if cfg.schedule == "ast":   # AST buffer.py: lr *= 0.6 after epoch e = epochs // 2 + 1
            spe = max(total_steps // cfg.epochs, 1)
            return jnp.where(count >= (cfg.epochs // 2 + 2) * spe, 0.6, 1.0)
        return jnp.ones_like(count, jnp.float32)

    def build(learning_rate):
        sched = lambda count: learning_rate * sched_scale(count)
        if cfg.optimizer == "adamw":
            return optax.adamw(sched, weight_decay=cfg.weight_decay)
        return optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                           optax.sgd(sched, momentum=cfg.momentum or None))

    return optax.inject_hyperparams(build)(learning_rate=cfg.lr)


def train_init(key: jax.Array, model: Model, cfg: TrainConfig, n: int,
               lr: jax.Array | float | None = None,
               init_variables: Variables | None = None) -> TrainState:
    """Fresh network (from `key`) and optimiser for a training set of n images."""
    k_init, k_loop = jax.random.split(key)
    variables = model.init(k_init) if init_variables is None else init_variables
    tx = make_optimizer(cfg, cfg.epochs * steps_per_epoch(n, cfg.batch_size))
    lr = jnp.asarray(cfg.lr if lr is None else lr, jnp.float32)
    opt_state = with_lr(tx.init(variables["params"]), lr)
    return TrainState(variables, opt_state, lr, k_loop, jnp.zeros((), jnp.int32))


def with_lr(opt_state: Any, lr: jax.Array | float) -> Any:
    """`opt_state` of an `optax.inject_hyperparams` optimiser with its learning rate set."""
    return opt_state._replace(hyperparams={**opt_state.hyperparams, "learning_rate": lr})


def input_gradient_penalty(apply_train: ApplyTrainFn, variables: Variables, x_NHWC: jax.Array,
                           mask_B: jax.Array) -> jax.Array:
    """AST's expert gradient penalty (utils.py `epoch_gp`, before the lambda factor):
    mean over valid images and pixels of (||d sum(logits) / dx[b, h, w, :]||_2 - 1)^2, the
    norm over channels; train-mode forward (BN statistics of this pass are discarded)."""
    g_NHWC = jax.grad(lambda x: apply_train(variables, x, mask_B)[0].sum())(x_NHWC)
    norm_NHW = jnp.sqrt(jnp.sum(g_NHWC * g_NHWC, axis=-1) + 1e-12)  # safe at 0
    per_image_B = jnp.mean((norm_NHW - 1.0) ** 2, axis=(1, 2))
    return (per_image_B * mask_B).sum() / mask_B.sum()


def make_update(apply_train: ApplyTrainFn, loss_fn: LossFn, tx: optax.GradientTransformation,
                direction_fn: DirectionFn | None = None, grad_penalty: float = 0.0) -> UpdateFn:
    """One minibatch step on the masked mean of `loss_fn`: the update of every training loop.

    The returned `update(variables, opt_state, x_NHWC, batch, mask_B, lr=None)` takes the
    gradient w.r.t. variables["params"] (BN statistics of the forward pass carried as aux),
    lets `direction_fn` replace it (BN statistics still from the first, unperturbed pass),
    sets the injected lr when `lr` is given, and applies `tx`. Padding has mask_B = 0: it
    counts neither in the loss nor (through `apply_train`) in BN's batch statistics.
    AST experts: `loss_scale` multiplies the loss; `grad_penalty` > 0 adds that times
    `input_gradient_penalty` on `x_raw_NHWC` (the un-augmented batch), not scaled.
    """

    def batch_loss(params, rest, x_NHWC, batch, mask_B, loss_scale=None, x_raw_NHWC=None):
        logits_BxK, new_vars = apply_train({**rest, "params": params}, x_NHWC, mask_B)
        loss = (loss_fn(logits_BxK, batch) * mask_B).sum() / mask_B.sum()
        if loss_scale is not None:
            loss = loss * loss_scale
        if grad_penalty:
            loss = loss + grad_penalty * input_gradient_penalty(
                apply_train, {**rest, "params": params}, x_raw_NHWC, mask_B)
        return loss, new_vars

    grad = jax.grad(batch_loss, has_aux=True)

    def update(variables, opt_state, x_NHWC, batch, mask_B, lr=None, loss_scale=None,
               x_raw_NHWC=None):
        params = variables["params"]
        rest = {k: v for k, v in variables.items() if k != "params"}
        if loss_scale is not None or grad_penalty:
            grads, new_vars = grad(params, rest, x_NHWC, batch, mask_B, loss_scale, x_raw_NHWC)
        else:
            grads, new_vars = grad(params, rest, x_NHWC, batch, mask_B)
        if direction_fn is not None:
            grads = direction_fn(lambda p: grad(p, rest, x_NHWC, batch, mask_B)[0], params, grads)
        if lr is not None:
            opt_state = with_lr(opt_state, lr)
        updates, opt_state = tx.update(grads, opt_state, params)
        return {**new_vars, "params": optax.apply_updates(params, updates)}, opt_state

    return update


def train_epochs(state: TrainState, model: Model, cfg: TrainConfig, x_NHWC: jax.Array,
                 y_target: jax.Array, num_epochs: int,
                 augment_fn: AugmentFn | None = None,
                 direction_fn: DirectionFn | None = None,
                 epoch_loss_scale: tuple[float, ...] = (),
                 grad_penalty: float = 0.0) -> TrainState:
    """Run `num_epochs` more epochs. y_target: (N,) int labels or (N, K) targets
    (probabilities for cfg.loss "ce", regression targets for "mse").

    When batch_size does not divide N the last batch is padded and masked; it trains as
    the smaller batch of its real images (loss and BN statistics), as PyTorch's last batch.

    `direction_fn` replaces the gradient by another update direction (e.g. GSAM); BN
    statistics always come from the first, unperturbed pass. AST experts:
    `epoch_loss_scale[e]` multiplies the loss of epoch e (1 after the tuple ends);
    `grad_penalty` adds that times `input_gradient_penalty` of the un-augmented batch.
    """
    n = x_NHWC.shape[0]
    if y_target.ndim == 1:
        y_target = class_targets(y_target, model.num_classes, cfg.loss).astype(x_NHWC.dtype)
    bs = min(cfg.batch_size, n)
    spe = steps_per_epoch(n, bs)
    tx = make_optimizer(cfg, cfg.epochs * spe)

    chunks = auto_chunks(model, bs) if cfg.image_chunks == "auto" else cfg.image_chunks
    if chunks > 1 and model.has_batch_stats:
        raise ValueError(f"image_chunks={chunks} would split BatchNorm's batch statistics; "
                         f"use image_chunks=1 (or 'auto') for {model.name}")
    pad = spe * bs - n
    apply_train = model.apply_train
    if pad == 0 and model.has_batch_stats:   # every row is real: BN needs no mask (as before)
        apply_train = lambda v, xb, mask_B: model.apply_train(v, xb)  # noqa: E731
    if chunks > 1:   # no batch statistics (checked above): the variables come back unchanged
        forward = chunked(lambda v, xb: model.apply_train(v, xb)[0], chunks)
        apply_train = lambda v, xb, mask_B: (forward(v, xb), v)  # noqa: E731

    update = make_update(apply_train, LOSSES[cfg.loss], tx, direction_fn, grad_penalty)
    ast = bool(epoch_loss_scale) or bool(grad_penalty)
    scales = jnp.asarray(tuple(epoch_loss_scale) or (1.0,), x_NHWC.dtype)

    def batch_step(carry, inp):
        idx, mask, k_aug = inp[:3]
        x_raw = xb = x_NHWC[idx]
        if augment_fn is not None:
            xb = augment_fn(k_aug, xb)
        if ast:
            return update(*carry, xb, y_target[idx], mask, loss_scale=inp[3], x_raw_NHWC=x_raw), None
        return update(*carry, xb, y_target[idx], mask), None

    def epoch_step(carry, epoch):
        k_perm, k_aug = jax.random.split(jax.random.fold_in(state.key, epoch))
        perm = jax.random.permutation(k_perm, n)
        idx = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(spe, bs)
        mask = (jnp.arange(spe * bs) < n).astype(x_NHWC.dtype).reshape(spe, bs)
        xs = (idx, mask, jax.random.split(k_aug, spe))
        if ast:   # the epoch's loss factor, one per step
            scale = jnp.where(epoch < len(epoch_loss_scale), scales[jnp.minimum(epoch, len(scales) - 1)], 1.0)
            xs = xs + (jnp.broadcast_to(scale, (spe,)),)
        carry, _ = jax.lax.scan(batch_step, carry, xs)
        return carry, None

    epochs = state.epoch + jnp.arange(num_epochs)
    (variables, opt_state), _ = jax.lax.scan(epoch_step, (state.variables, state.opt_state), epochs)
    return state._replace(variables=variables, opt_state=opt_state, epoch=state.epoch + num_epochs)


def train_network(key: jax.Array, model: Model, cfg: TrainConfig, x_NHWC: jax.Array,
                  y_target: jax.Array, lr: jax.Array | float | None = None,
                  augment_fn: AugmentFn | None = None,
                  init_variables: Variables | None = None) -> Variables:
    """Train a fresh network on (x, y) for cfg.epochs; pure, jittable, vmappable over key."""
    state = train_init(key, model, cfg, x_NHWC.shape[0], lr, init_variables)
    return train_epochs(state, model, cfg, x_NHWC, y_target, cfg.epochs, augment_fn).variables


def accuracy(model: Model, variables: Variables, x_NHWC: jax.Array, y: jax.Array,
             batch_size: int = 1000) -> jax.Array:
    """Top-1 accuracy in [0, 1], evaluated in fixed-size chunks (jittable, vmappable)."""
    n = x_NHWC.shape[0]
    batch_size = min(batch_size, n)
    nb = steps_per_epoch(n, batch_size)
    pad = nb * batch_size - n
    xp = jnp.pad(x_NHWC, ((0, pad),) + ((0, 0),) * 3).reshape(nb, batch_size, *x_NHWC.shape[1:])
    yp = jnp.pad(y, (0, pad), constant_values=-1).reshape(nb, batch_size)
    correct = _count_correct(model, variables, xp, yp)
    return correct / n


def _count_correct(model: Model, variables: Variables, xp: jax.Array, yp: jax.Array) -> jax.Array:
    """Correct predictions over the chunks (nb, batch, ...) of the padded test set (labels -1
    on padding). Never differentiated, so in the fastest forward layout; vmapped over seeds
    on one CPU device it runs them one after another (measured, 3 seeds of a ConvNet-W128 on
    2,000 CIFAR-size images: 10.9 s vmapped in the im2col layout, 5.1 s mapped in lax.conv's)."""
    fwd = model.forward_only()

    @map_when_vmapped_on_cpu
    def count(variables, xp, yp):
        def chunk(c, xy):
            xb, yb = xy
            return c + (fwd.apply(variables, xb).argmax(-1) == yb).sum(dtype=jnp.int32), None

        return jax.lax.scan(chunk, jnp.zeros((), jnp.int32), (xp, yp))[0]

    return count(variables, xp, yp)
