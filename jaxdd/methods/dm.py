"""DM: dataset condensation with distribution matching (Zhao & Bilen, WACV 2023).

One step = one reference iteration: a freshly initialised network (from the step's key)
embeds B real and ipc synthetic images of every class, after the same (siamese) DSA draw
per class, and the images take one SGD step on

    L = sum_c || mean_b e(A(x_real_c,b)) - mean_i e(A(x_syn_c,i)) ||^2        (DM eq. 5)

where e is the embedding (the input of the classifier). Reference: VICO-UoE/
DatasetCondensation `main_DM.py` (defaults below). Cost per step is constant: two forwards
(K*B real, K*ipc synthetic) and one backward through the synthetic branch.
"""

from __future__ import annotations

import dataclasses

import jax

from jaxdd.augment import DSA_DEFAULT, parse_strategy
from jaxdd.methods.base import Distiller, PRNGKey
from jaxdd.methods.matching import (ImageSGDState, forward_features, make_random_net_matcher,
                                    mean_sq_distance, per_class, prepare_pairs)
from jaxdd.models import Model, Variables

__all__ = ["DMConfig", "DMState", "make_dm", "dm_class_losses"]


@dataclasses.dataclass(frozen=True)
class DMConfig:
    """Defaults: main_DM.py argparse + readme (CIFAR-10 ConvNet command)."""

    lr_img: float = 1.0  # SGD step on the pixels (readme: 1 for ipc<=50, 10 for ipc>=100 on CIFAR-10)
    momentum_img: float = 0.5  # momentum of the image optimiser (PyTorch convention)
    batch_real: int = 256  # real images per class per step; used by the driver's sampler
    iterations: int = 20000  # reference `Iteration` (main_DM.py:22), for the record only: a
    # run's length is the config's top-level `iterations` (the pipeline refuses another value here)
    dsa_strategy: str = DSA_DEFAULT  # siamese DSA families; "none" = off (readme: drop
    # "flip" for digit datasets)
    fyi: bool = False  # FYI: match S_c U Flip(S_c) instead of S_c (cvlab-yonsei/FYI main_DM.py)
    init: str = "real"  # how the driver initialises the images: real | noise (reference 'real')

    def __post_init__(self):
        parse_strategy(self.dsa_strategy)  # raises on unknown families
        if self.init not in ("real", "noise"):
            raise ValueError(f"init={self.init!r}; use 'real' or 'noise'")


DMState = ImageSGDState


def dm_class_losses(model: Model, variables: Variables, x_real_KxBxHWC: jax.Array,
                    x_syn_KxIxHWC: jax.Array, key: PRNGKey, dsa_strategy: str = "none",
                    fyi: bool = False) -> jax.Array:
    """Per-class DM terms (K,): ||mean emb(real_c) - mean emb(syn_c)||^2.

    Class c's real and synthetic batches get the same DSA draw (key split(key, K)[c]).
    Networks in train mode (BN: batch statistics over all classes, as the reference's
    ConvNetBN branch); the real branch is detached.
    """
    x_real_KxBxHWC, x_syn_KxIxHWC = prepare_pairs(x_real_KxBxHWC, x_syn_KxIxHWC, key,
                                                  dsa_strategy, fyi)

    def embed(net: Model):
        return lambda x_NHWC: forward_features(net, variables, x_NHWC, train=True).emb_BxD

    coupled = model.has_batch_stats
    # the real branch is never differentiated: the forward-only layout of the same network
    emb_real_KxBxD = jax.lax.stop_gradient(
        per_class(embed(model.forward_only()), x_real_KxBxHWC, coupled))
    emb_syn_KxIxD = per_class(embed(model), x_syn_KxIxHWC, coupled)
    return mean_sq_distance(emb_real_KxBxD, emb_syn_KxIxD)


def make_dm(config: DMConfig, model: Model, num_classes: int) -> Distiller:
    """DM distiller: `init(key, x_init_NHWC, y_init) -> DMState`,
    `step(state, x_real_KxBxHWC | RealBatch, key) -> (state, metrics)`."""

    def loss_fn(variables, x_real, x_syn_KxI, key):
        per_K = dm_class_losses(model, variables, x_real, x_syn_KxI, key, config.dsa_strategy,
                                config.fyi)
        return per_K.sum(), {}

    return make_random_net_matcher(config.lr_img, config.momentum_img, model, num_classes, loss_fn)
