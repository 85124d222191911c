"""DC (gradient matching, Zhao et al. ICLR 2021) and DSA (DC + differentiable siamese
augmentation, Zhao & Bilen ICML 2021) as one `Distiller`.

Reference iteration (VICO-UoE/DatasetCondensation `main.py`): a fresh network, then
`outer_loop` times: (BN nets: refresh the running statistics on 16 real images per class
and freeze them) -> for every class c match the CE gradients of the real and synthetic
batches of c with `distance_wb` (DC eq. 10), summed over classes -> one SGD step on the
images -> unless it is the last outer step, `inner_loop` epochs of SGD(lr_net) on the
synthetic set (DSA: with per-image DSA).

Design: ONE `step` = ONE outer step. The network being trained is part of the state
(`DCState.net`, with `outer_step` counting 0..outer_loop-1); the step re-initialises it from
its key when `outer_step == 0`. So a step consumes one class-balanced real batch (K, B, ...)
like every other matcher, its memory does not grow with outer_loop, and the driver's step
count is `iterations * outer_loop` (`DCConfig.num_steps`). Cost per step: one matching
(K real + K synthetic gradient evaluations, and a backward through the synthetic ones) plus
`inner_loop` epochs on the synthetic set, skipped (`lax.cond`) on the last outer step.

DCC (Lee et al., ICML 2022, "Dataset Condensation with Contrastive Signals"; reference
Saehyung-Lee/DCC `main.py`, flag `--contrast`): `DCConfig.matching = "all_classes"` matches
ONE pair of gradients instead of K: the real side is the gradient of the class-averaged CE,
(1/K) sum_c grad CE(real_c) (each real_c augmented with the same siamese DSA draw as syn_c),
the synthetic side the gradient of the mean CE over the whole synthetic set (all classes
together), and the loss is a single layer-wise distance (`gradient_match_loss`, DC eq. 10)
between them (`dc_all_classes_loss`). Because every class enters both gradients, the
synthetic images of one class also receive the signals that separate it from the other
classes. Warm-up as the reference: per-class DC matching while the reference iteration is
< `dcc_warmup_iterations` (its `outer_warmup`, 250) AND the outer step is <
`dcc_warmup_outer` (its `inner_warmup`, 10); all-classes matching otherwise.
Left out: the reference's ImageNet-subset class lists and its evaluation loop (jaxdd's own
evaluation is used); nothing else was found in the reference (no extra augmentation, no
kernel/feature sharing). With equal per-class batches the class-average of per-class mean
CEs equals the mean CE over the concatenated real batch, which is what is computed.
"""

from __future__ import annotations

import dataclasses
from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdd.augment import DSA_DEFAULT, dsa, fyi_flip_concat, parse_strategy
from jaxdd.methods.base import Distiller, Metrics, PRNGKey, SynState, check_init
from jaxdd.methods.matching import (MATCH_METRICS, RealBatch, ensure_same_classes,
                                    gradient_match_loss, over_classes, prepare_pairs,
                                    real_images, syn_by_class)
from jaxdd.models import Model, Variables
from jaxdd.train.loop import TrainConfig, train_network

__all__ = ["DCConfig", "DCState", "make_dc", "dsa_config", "dc_loops", "dc_class_losses",
           "dc_all_classes_loss", "MATCHING_MODES"]

MATCHING_MODES = ("per_class", "all_classes")

# utils.py `get_loops`: (outer_loop, inner_loop) per images-per-class, "empirically good".
_LOOPS = {1: (1, 1), 10: (10, 50), 20: (20, 25), 30: (30, 20), 40: (40, 15), 50: (50, 10)}


def dc_loops(ipc: int) -> tuple[int, int]:
    """(outer_loop, inner_loop) of the reference for this ipc."""
    if ipc not in _LOOPS:
        raise ValueError(f"the reference defines outer/inner loops only for ipc in "
                         f"{sorted(_LOOPS)}; got ipc={ipc}: set DCConfig.outer_loop/inner_loop")
    return _LOOPS[ipc]


@dataclasses.dataclass(frozen=True)
class DCConfig:
    """Defaults: main.py argparse (method DC). `dsa_config()` gives the DSA defaults."""

    dsa: bool = False  # DSA: siamese DSA on the matched batches and DSA in the inner training
    dsa_strategy: str = DSA_DEFAULT  # families when dsa=True (readme: drop "flip" on digits)
    lr_img: float = 0.1  # SGD step on the pixels (DC and DSA alike; readme: 0.01 for MLP)
    momentum_img: float = 0.5  # momentum of the image optimiser (PyTorch convention)
    lr_net: float = 0.01  # SGD step of the inner network training (no momentum, no wd)
    batch_real: int = 256  # real images per class per step; used by the driver's sampler
    batch_train: int = 256  # synthetic images per inner-training batch
    outer_loop: int | None = None  # image updates per network; None: dc_loops(ipc)
    inner_loop: int | None = None  # inner epochs per image update; None: dc_loops(ipc)
    bn_images_per_class: int = 16  # real images per class that refresh BN statistics (BNSizePC)
    dis_metric: str = "ours"  # gradient distance: ours (distance_wb) | mse | cos
    iterations: int = 1000  # reference iterations (fresh networks); steps = iterations * outer_loop
    fyi: bool = False  # FYI: S_c U Flip(S_c) in matching and in the inner training
    init: str = "noise"  # how the driver initialises the images (DC: noise; DSA readme: real)
    # per_class: DC/DSA (one gradient pair per class, summed); all_classes: DCC (one pair:
    # gradients of the CE of all classes together; module docstring)
    matching: Literal["per_class", "all_classes"] = "per_class"
    dcc_warmup_iterations: int = 250  # all_classes: per-class matching before this iteration (DCC outer_warmup)
    dcc_warmup_outer: int = 10  # ... unless the outer step is >= this (DCC inner_warmup)

    def __post_init__(self):
        if self.dsa:
            parse_strategy(self.dsa_strategy)
        if self.dis_metric not in MATCH_METRICS:
            raise ValueError(f"dis_metric={self.dis_metric!r}; use one of {MATCH_METRICS}")
        if self.init not in ("real", "noise"):
            raise ValueError(f"init={self.init!r}; use 'real' or 'noise'")
        if self.matching not in MATCHING_MODES:
            raise ValueError(f"matching={self.matching!r}; use one of {MATCHING_MODES}")
        if self.dcc_warmup_iterations < 0 or self.dcc_warmup_outer < 0:
            raise ValueError("dcc_warmup_iterations and dcc_warmup_outer must be >= 0")
        if (self.outer_loop is None) != (self.inner_loop is None):
            raise ValueError("set both outer_loop and inner_loop, or neither")

    def loops(self, ipc: int) -> tuple[int, int]:
        if self.outer_loop is not None:
            return self.outer_loop, self.inner_loop
        return dc_loops(ipc)

    def num_steps(self, ipc: int) -> int:
        """Distiller steps of a full reference run."""
        return self.iterations * self.loops(ipc)[0]


def dsa_config(**overrides) -> DCConfig:
    """DSA defaults: main.py with --method DSA, readme command (--init real, lr_img 0.1)."""
    return DCConfig(**{"dsa": True, "init": "real", **overrides})


class DCState(NamedTuple):
    syn: SynState  # images (K*ipc, H, W, C) ordered by class, hard labels, log_lr=None
    opt_img: optax.OptState  # momentum buffer of the images
    net: Variables  # the network of the current reference iteration
    outer_step: jax.Array  # int32 in [0, outer_loop): position within the iteration
    iteration: jax.Array  # int32, steps done


def _ce_grads(model: Model, variables: Variables, x_NHWC: jax.Array, label: jax.Array):
    """d/dparams of the mean CE of a batch (BN: running statistics, frozen); `label` is one
    class id for the whole batch or an (N,) array of ids."""
    rest = {k: v for k, v in variables.items() if k != "params"}
    labels = jnp.broadcast_to(jnp.asarray(label, jnp.int32), (x_NHWC.shape[0],))

    def ce(params):
        logits = model.apply({**rest, "params": params}, x_NHWC)
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.grad(ce)(variables["params"])


def _flat_with_labels(x_KxNxHWC: jax.Array) -> tuple[jax.Array, jax.Array]:
    k, n = x_KxNxHWC.shape[:2]
    return x_KxNxHWC.reshape(k * n, *x_KxNxHWC.shape[2:]), jnp.repeat(jnp.arange(k), n)


def dc_all_classes_loss(model: Model, variables: Variables, x_real_KxBxHWC: jax.Array,
                        x_syn_KxIxHWC: jax.Array, key: PRNGKey, dsa_strategy: str = "none",
                        dis_metric: str = "ours", fyi: bool = False) -> jax.Array:
    """DCC's matching term (scalar): D(grad CE(real, all classes), grad CE(syn, all classes)).

    Same augmentations as `dc_class_losses` under the same key; CE is the mean over the
    K*B real (K*I synthetic) images, i.e. the class average of the per-class means, and the
    real gradient is a constant.
    """
    x_real_KxBxHWC, x_syn_KxIxHWC = prepare_pairs(x_real_KxBxHWC, x_syn_KxIxHWC, key,
                                                  dsa_strategy, fyi)
    gw_real = jax.lax.stop_gradient(_ce_grads(model, variables, *_flat_with_labels(x_real_KxBxHWC)))
    gw_syn = _ce_grads(model, variables, *_flat_with_labels(x_syn_KxIxHWC))
    return gradient_match_loss(gw_real, gw_syn, dis_metric)


def dc_class_losses(model: Model, variables: Variables, x_real_KxBxHWC: jax.Array,
                    x_syn_KxIxHWC: jax.Array, key: PRNGKey, dsa_strategy: str = "none",
                    dis_metric: str = "ours", fyi: bool = False) -> jax.Array:
    """Per-class gradient-matching terms (K,): D(grad CE(real_c), grad CE(syn_c)).

    mapped over classes (the reference loops); the network is evaluated in inference mode
    (BN: the frozen running statistics), so classes do not interact. The real gradient is a
    constant (detached in the reference).
    """
    num_classes = x_real_KxBxHWC.shape[0]
    x_real_KxBxHWC, x_syn_KxIxHWC = prepare_pairs(x_real_KxBxHWC, x_syn_KxIxHWC, key,
                                                  dsa_strategy, fyi)

    def one(x_real_BHWC, x_syn_IHWC, c):
        gw_real = jax.lax.stop_gradient(_ce_grads(model, variables, x_real_BHWC, c))
        gw_syn = _ce_grads(model, variables, x_syn_IHWC, c)
        return gradient_match_loss(gw_real, gw_syn, dis_metric)

    return over_classes(one, x_real_KxBxHWC, x_syn_KxIxHWC, jnp.arange(num_classes))


def make_dc(config: DCConfig, model: Model, num_classes: int) -> Distiller:
    """DC/DSA distiller: `init(key, x_init_NHWC, y_init) -> DCState`,
    `step(state, x_real_KxBxHWC | RealBatch, key) -> (state, metrics)` (one outer step)."""
    tx = optax.sgd(config.lr_img, momentum=config.momentum_img or None)
    strategy = config.dsa_strategy if config.dsa else "none"

    def init(key: PRNGKey, x_init_NHWC: jax.Array, y_init: jax.Array) -> DCState:
        check_init(x_init_NHWC, y_init)
        ipc = syn_by_class(x_init_NHWC, num_classes).shape[1]
        config.loops(ipc)  # fail early on an ipc without reference loops
        x = jnp.asarray(x_init_NHWC, jnp.float32)
        return DCState(SynState(x, jnp.asarray(y_init, jnp.int32), None), tx.init(x),
                       model.init(key), jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    def inner_train(key: PRNGKey, net: Variables, x_NHWC: jax.Array, y: jax.Array,
                    epochs: int) -> Variables:
        if config.fyi:  # FYI `epoch(..., batch_aug=True)`: every batch joined by its mirror
            x_NHWC, y = fyi_flip_concat(x_NHWC), jnp.concatenate([y, y])
        bs = config.batch_train * (2 if config.fyi else 1)
        cfg = TrainConfig(epochs=epochs, batch_size=bs, lr=config.lr_net, momentum=0.0,
                          weight_decay=0.0, schedule="constant", dsa=strategy)
        augment = (lambda k, xb: dsa(k, xb, strategy)) if config.dsa else None  # per-image DSA
        return train_network(key, model, cfg, x_NHWC, y, augment_fn=augment, init_variables=net)

    def step(state: DCState, batch: RealBatch | jax.Array, key: PRNGKey
             ) -> tuple[DCState, Metrics]:
        x_real = real_images(batch)
        ensure_same_classes(x_real, num_classes)
        x = state.syn.x_syn_NHWC
        ipc = x.shape[0] // num_classes
        outer_loop, inner_loop = config.loops(ipc)
        k_net, k_aug, k_train = jax.random.split(key, 3)

        net = jax.lax.cond(state.outer_step == 0, lambda: model.init(k_net), lambda: state.net)
        if model.has_batch_stats:
            # Reference: one train-mode forward of 16 real images per class updates the running
            # statistics (momentum 0.1), which the matching then uses frozen.
            n_bn = min(config.bn_images_per_class, x_real.shape[1])
            x_bn = x_real[:, :n_bn].reshape(-1, *x_real.shape[2:])
            _, net = model.apply_train(net, x_bn)

        def per_class(x_syn_NHWC):
            return dc_class_losses(model, net, x_real, syn_by_class(x_syn_NHWC, num_classes),
                                   k_aug, strategy, config.dis_metric, config.fyi).sum()

        def all_classes(x_syn_NHWC):
            return dc_all_classes_loss(model, net, x_real, syn_by_class(x_syn_NHWC, num_classes),
                                       k_aug, strategy, config.dis_metric, config.fyi)

        if config.matching == "per_class":
            loss_fn = per_class
        else:  # DCC: per-class during the warm-up (reference iteration and outer step both early)
            warm = ((state.iteration // outer_loop < config.dcc_warmup_iterations)
                    & (state.outer_step < config.dcc_warmup_outer))
            loss_fn = lambda x_syn: jax.lax.cond(warm, per_class, all_classes, x_syn)  # noqa: E731

        loss, g = jax.value_and_grad(loss_fn)(x)
        updates, opt_img = tx.update(g, state.opt_img, x)
        x_new = optax.apply_updates(x, updates)

        if outer_loop > 1:  # (outer_loop == 1: the network is never trained, ipc=1)
            last = state.outer_step == outer_loop - 1
            net = jax.lax.cond(
                last, lambda n: n,
                lambda n: inner_train(k_train, n, x_new, state.syn.y_syn, inner_loop), net)
        new = DCState(state.syn._replace(x_syn_NHWC=x_new), opt_img, net,
                      (state.outer_step + 1) % outer_loop, state.iteration + 1)
        metrics = {"loss": loss, "loss_per_class": loss / num_classes,
                   "grad_norm": optax.tree.norm(g)}
        return new, metrics

    return Distiller(init, step)
