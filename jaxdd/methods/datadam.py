"""DataDAM: dataset distillation with attention matching (Sajedi et al., ICCV 2023).

One step = one reference iteration: a freshly initialised network (from the step's key)
sees B real and ipc synthetic images of every class (same siamese DSA draw per class) and
the images take one SGD step on

    L = w_att * sum_c [ sum_{l < L_last} || mean_b a_l(real_c) - mean_i a_l(syn_c) ||^2
                        + task_balance * || mean_b e(real_c) - mean_i e(syn_c) ||^2 ]

with the spatial attention map of block l (DataDAM eq. 1-3)
    a_l(x) = normalize_L2( sum_ch |f_l(x)|^p )  over the H*W positions,
f_l the post-ReLU output of block l, e the embedding (input of the classifier); the last
block is represented by e only (reference loops over `range(length - 1)`).

Reference: DataDistillation/DataDAM `main_DataDAM.py`, `utils.get_attention` (numbers in
`DataDAMConfig`). Note the reference trains a BatchNorm ConvNet (its `get_network('ConvNet')`
builds `net_norm='batchnorm'`) in train mode with all classes concatenated; `per_class` does
the same for BN models and vmaps otherwise.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxdd.augment import DSA_DEFAULT, parse_strategy
from jaxdd.methods.base import Distiller, PRNGKey
from jaxdd.methods.matching import (ImageSGDState, forward_features, make_random_net_matcher,
                                    mean_sq_distance, per_class, prepare_pairs)
from jaxdd.models import Model, Variables
from jaxdd.tree import safe_norm

__all__ = ["DataDAMConfig", "DataDAMState", "make_datadam", "datadam_class_losses",
           "attention_map"]

_NORMALIZE_EPS = 1e-12  # torch F.normalize default


@dataclasses.dataclass(frozen=True)
class DataDAMConfig:
    """Defaults: main_DataDAM.py argparse and its `get_attention` call."""

    lr_img: float = 1.0  # SGD step on the pixels (reference help: 1 for low ipc, 10 for ipc>=100)
    momentum_img: float = 0.5  # momentum of the image optimiser (PyTorch convention)
    batch_real: int = 64  # real images per class per step; used by the driver's sampler
    iterations: int = 20000  # reference `Iteration`, for the record only: a run's length is
    # the config's top-level `iterations` (the pipeline refuses another value here)
    dsa_strategy: str = DSA_DEFAULT  # siamese DSA families; "none" = off
    power: float = 1.0  # p in sum_ch |f|^p: main_DataDAM.py calls get_attention(exp=1)
    # (the function's own default is exp=4, unused by the main script)
    attention_weight: float = 100.0  # each layer's attention term is scaled by 100
    task_balance: float = 0.01  # embedding-MMD weight relative to an attention layer (100 * 0.01)
    fyi: bool = False  # FYI-style S_c U Flip(S_c); NOT in the FYI paper (jaxdd extension)
    init: str = "real"  # how the driver initialises the images: real | noise (reference 'real')

    def __post_init__(self):
        parse_strategy(self.dsa_strategy)
        if self.power <= 0:
            raise ValueError(f"power must be > 0, got {self.power}")
        if self.init not in ("real", "noise"):
            raise ValueError(f"init={self.init!r}; use 'real' or 'noise'")


DataDAMState = ImageSGDState


def attention_map(f_NHWC: jax.Array, power: float = 1.0) -> jax.Array:
    """a(f) = sum_ch |f|^p flattened to (N, H*W), then L2-normalised per image (eq. 1-2).

    The channel *sum* of the reference equals the brief's channel mean up to a constant,
    which the normalisation removes.
    """
    a_NHW = jnp.sum(jnp.abs(f_NHWC) ** power, axis=-1)
    a_NP = a_NHW.reshape(a_NHW.shape[0], -1)
    norm_N1 = safe_norm(a_NP, axis=-1, keepdims=True)
    return a_NP / jnp.maximum(norm_N1, _NORMALIZE_EPS)


def datadam_class_losses(model: Model, variables: Variables, x_real_KxBxHWC: jax.Array,
                         x_syn_KxIxHWC: jax.Array, key: PRNGKey, config: DataDAMConfig
                         ) -> tuple[jax.Array, jax.Array]:
    """(attention_K, output_K): the per-class attention term (summed over layers, unweighted)
    and the per-class embedding term (unweighted). L = w_att * (att + task_balance * out)."""
    x_real_KxBxHWC, x_syn_KxIxHWC = prepare_pairs(x_real_KxBxHWC, x_syn_KxIxHWC, key,
                                                  config.dsa_strategy, config.fyi)

    def feats(net: Model):
        def f(x_NHWC: jax.Array):
            feat = forward_features(net, variables, x_NHWC, train=True)
            if not feat.blocks:
                raise ValueError(f"DataDAM needs spatial feature maps; model {model.name!r} "
                                 f"has none")
            return tuple(attention_map(b, config.power) for b in feat.blocks[:-1]), feat.emb_BxD
        return f

    coupled = model.has_batch_stats
    # the real branch is never differentiated: the forward-only layout of the same network
    att_real, emb_real = jax.lax.stop_gradient(
        per_class(feats(model.forward_only()), x_real_KxBxHWC, coupled))
    att_syn, emb_syn = per_class(feats(model), x_syn_KxIxHWC, coupled)
    att_K = sum((mean_sq_distance(r, s) for r, s in zip(att_real, att_syn)),
                jnp.zeros((x_real_KxBxHWC.shape[0],)))
    return att_K, mean_sq_distance(emb_real, emb_syn)


def make_datadam(config: DataDAMConfig, model: Model, num_classes: int) -> Distiller:
    """DataDAM distiller: `init(key, x_init_NHWC, y_init) -> DataDAMState`,
    `step(state, x_real_KxBxHWC | RealBatch, key) -> (state, metrics)`."""

    def loss_fn(variables, x_real, x_syn_KxI, key):
        att_K, out_K = datadam_class_losses(model, variables, x_real, x_syn_KxI, key, config)
        att = config.attention_weight * att_K.sum()
        out = config.attention_weight * config.task_balance * out_K.sum()
        return att + out, {"attention_loss": att, "output_loss": out}

    return make_random_net_matcher(config.lr_img, config.momentum_img, model, num_classes, loss_fn)
