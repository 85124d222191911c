"""INFER: universal feature compensators (Zhang et al., "Breaking Class Barriers", ICLR 2025).

Instead of one optimised image per (class, IPC slot), INFER keeps B real *base* images
per class and learns compensators u (one image-sized tensor each) that are added to the
base image of *every* class, so one compensator yields K synthetic instances:

    x_{b,m,k} = clip(P_{b,k} + u_{b,m}),        k = 1..K                                 (1)

P_b = (P_{b,1}, ..., P_{b,K}): base set b, one random real training image of each class.
u_{b,m} is optimised against teacher m alone (the reference pairs the m-th compensator of
a base set with the m-th of M architectures), from zero, with SRe2L's statistics loss on
the whole base set at once (all K classes in one batch: the compensator is shared):

    L(u) = CE(f_m(A(P_b + u)), y) + r_bn sum_l w_l (||var_l - rv_l|| + ||mean_l - rm_l||)      (2)

A: the recover augmentation (circular jitter; RandomResizedCrop + flip at 224 px);
w_0 = first_bn_multiplier, w_l = 1 otherwise. The distilled set is, per class, the base
images themselves plus their M compensated copies: B (M + 1) instances per class.

Budget (the reference's "averaging UFC for fair comparison"): B base images per class
and B M compensators must fit into IPC images per class,

    B = floor(IPC / (M / K + 1)) = floor(IPC K / (K + M)),  B K + B M <= IPC K              (3)

Facts from the reference (github zhangxin-xd/UFC, ufc_generation/ufc_cifar.py and
ufc_imgnet.py, README): compensator init zeros (1, C, H, W); Adam(betas (0.5, 0.9), eps
1e-8), lr 0.25 cosine to 0 over the iterations (no warm-up); iterations 1000 (CIFAR) /
2000 (ImageNet-1K); r_bn 1 (CIFAR, README / sh/ufc_cifar.sh) / 0.01 (ImageNet-1K);
first_bn_multiplier 10; jitter randint(0, 4) (CIFAR) / randint(0, 32) after
RandomResizedCrop(224) + flip (ImageNet); one batch of all classes (batch 100 on
CIFAR-100, 1000 on ImageNet-1K); M = 4 teachers on CIFAR (ResNet-18, MobileNetV2,
EfficientNet-B0, ShuffleNetV2) and 3 on ImageNet-1K (ResNet-18, MobileNetV2,
EfficientNet-B0); base images randomly sampled real images; the saved instance is
clamped to the valid pixel box (the compensator itself is not clamped); the base images
are part of the set unchanged. Here the M teachers are the config's `teacher.num_teachers`
networks (one architecture; the reference uses M architectures).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd.methods.base import Distiller, Metrics, PRNGKey, SynState, check_init
from jaxdd.methods.statistics.losses import sre2l_loss
from jaxdd.methods.statistics.recover import RecoverConfig, recover_augment

__all__ = ["INFERConfig", "INFERState", "INFERBatch", "num_base_sets", "compose",
           "instances", "infer_loss", "make_infer"]


@dataclasses.dataclass(frozen=True)
class INFERConfig:
    """Defaults: the reference's CIFAR-100 run (README / sh/ufc_cifar.sh)."""

    lr: float = 0.25                 # Adam step on the compensator at t = 0 (cosine to 0)
    iterations: int = 1000           # steps per compensator (ImageNet-1K: 2000)
    r_bn: float = 1.0                # weight of the BN term, eq. (2) (ImageNet-1K: 0.01)
    first_bn_multiplier: float = 10.0  # w_0 of the stem BN
    jitter: tuple[int, int] = (0, 4)  # inclusive circular shift range in px (IN-1K: (0, 32))
    crop: bool = False               # RandomResizedCrop + flip before the jitter (IN-1K: on)
    crop_min_scale: float = 0.08     # lower crop area fraction
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect-ratio range of the crop
    adam_b1: float = 0.5             # Adam betas / eps of the reference
    adam_b2: float = 0.9
    adam_eps: float = 1e-8
    base_sets: int | None = None     # B; None: eq. (3) from IPC, K and M
    clip: bool = True                # clamp each instance to the valid pixel box (reference)

    def __post_init__(self):
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if self.base_sets is not None and self.base_sets < 1:
            raise ValueError(f"base_sets must be >= 1 (or None), got {self.base_sets}")
        if not 0 < self.crop_min_scale <= 1:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")

    def augment_config(self) -> RecoverConfig:
        """The recover augmentation with these crop / jitter settings (one draw per batch)."""
        return RecoverConfig(iterations=self.iterations, jitter=self.jitter, crop=self.crop,
                             crop_min_scale=self.crop_min_scale, crop_ratio=self.crop_ratio)


class INFERState(NamedTuple):
    syn: SynState              # the K instances of this compensator: clip(P_b + u), labels 0..K-1
    base_KxHxWxC: jax.Array    # P_b, model space (fixed)
    comp_HxWxC: jax.Array      # u, the compensator being optimised
    opt: optax.OptState        # Adam state (fresh per compensator)
    iteration: jax.Array       # int32 steps done


class INFERBatch(NamedTuple):
    teacher: Any               # variables of teacher m (an argument, not a program constant)


def num_base_sets(ipc: int, num_classes: int, num_compensators: int) -> int:
    """Eq. (3): base sets B that fit B (K + M) <= IPC K; a clear error when none does."""
    b = (ipc * num_classes) // (num_classes + num_compensators)
    if b < 1:
        raise ValueError(f"INFER at IPC {ipc} with {num_classes} classes and "
                         f"{num_compensators} compensators per base set has room for no base "
                         f"set (B K + B M <= IPC K); raise --ipc or lower teacher.num_teachers")
    return b


def compose(base_KxHxWxC: jax.Array, comp_HxWxC: jax.Array,
            bounds: tuple[Any, Any] | None = None) -> jax.Array:
    """Eq. (1) for one compensator: (K, H, W, C) instances, clamped per channel to
    bounds = (lo_C, hi_C) in model space (None: no clamp)."""
    x = base_KxHxWxC + comp_HxWxC[None]
    if bounds is None:
        return x
    lo, hi = (jnp.asarray(b, x.dtype).reshape(1, 1, 1, -1) for b in bounds)
    return jnp.clip(x, lo, hi)


def instances(base_KxBxHxWxC: np.ndarray, comp_BxMxHxWxC: np.ndarray,
              bounds: tuple[Any, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The whole distilled set, class-major: for class k and base set b, the base image
    then its M compensated copies (index b (M + 1) + j). Returns (x (K B (M+1), H, W, C),
    y (K B (M+1),) int32)."""
    base = np.asarray(base_KxBxHxWxC, np.float32)
    comp = np.asarray(comp_BxMxHxWxC, np.float32)
    k, b, h, w, c = base.shape
    m = comp.shape[1]
    if comp.shape[0] != b or comp.shape[2:] != (h, w, c):
        raise ValueError(f"compensators {comp.shape} do not fit base images {base.shape}")
    x = base[:, :, None] + comp[None]                        # (K, B, M, H, W, C)
    if bounds is not None:
        lo, hi = (np.asarray(v, np.float32).reshape(1, 1, 1, 1, 1, -1) for v in bounds)
        x = np.clip(x, lo, hi)
    out = np.concatenate([base[:, :, None], x], axis=2)     # (K, B, M + 1, H, W, C)
    y = np.repeat(np.arange(k, dtype=np.int32), b * (m + 1))
    return out.reshape(k * b * (m + 1), h, w, c), y


def infer_loss(comp_HxWxC: jax.Array, base_KxHxWxC: jax.Array, y_K: jax.Array, model: Any,
               variables: Any, key: PRNGKey, t: jax.Array, config: INFERConfig
               ) -> tuple[jax.Array, dict[str, Any]]:
    """Eq. (2) at iteration t: the augmented, unclamped P_b + u through teacher `variables`."""
    x_aug = recover_augment(config.augment_config(), key, base_KxHxWxC + comp_HxWxC[None], t)
    return sre2l_loss(x_aug, y_K, model, variables, r_bn=config.r_bn,
                      first_bn_multiplier=config.first_bn_multiplier)


def make_infer(config: INFERConfig, model: Any, bounds: tuple[Any, Any] | None = None
               ) -> Distiller:
    """One compensator as a Distiller (a fresh `init` per (base set, teacher), as the
    reference). init(key, x_base_KxHxWxC, y_K) -> state with u = 0; step(state,
    INFERBatch(teacher variables), key) -> one Adam iteration on eq. (2)."""
    tx = optax.adam(optax.cosine_decay_schedule(config.lr, config.iterations),
                    b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    clamp = bounds if config.clip else None

    def init(key: PRNGKey, x_base_KxHxWxC: jax.Array, y_K: jax.Array) -> INFERState:
        del key  # the compensator starts at zero
        check_init(x_base_KxHxWxC, y_K)
        base = jnp.asarray(x_base_KxHxWxC, jnp.float32)
        u = jnp.zeros(base.shape[1:], jnp.float32)
        return INFERState(SynState(compose(base, u, clamp), jnp.asarray(y_K, jnp.int32), None),
                          base, u, tx.init(u), jnp.zeros((), jnp.int32))

    def step(state: INFERState, batch: INFERBatch, key: PRNGKey
             ) -> tuple[INFERState, Metrics]:
        def loss_fn(u):
            return infer_loss(u, state.base_KxHxWxC, state.syn.y_syn, model, batch.teacher,
                              key, state.iteration, config)

        (loss, aux), g = jax.value_and_grad(loss_fn, has_aux=True)(state.comp_HxWxC)
        updates, opt = tx.update(g, state.opt, state.comp_HxWxC)
        u = optax.apply_updates(state.comp_HxWxC, updates)
        syn = state.syn._replace(x_syn_NHWC=compose(state.base_KxHxWxC, u, clamp))
        new = INFERState(syn, state.base_KxHxWxC, u, opt, state.iteration + 1)
        return new, {"loss": loss, "ce": aux["ce"], "bn": aux["bn"]}

    return Distiller(init, step)
