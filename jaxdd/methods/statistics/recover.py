"""The recover distiller: Adam on the pixels of one batch against eq. (1) (+ eqs. 2, 3),
with the CDA schedule, G-VBSM options and DWA; `recover_all` / `batch_layout` for a whole
synthetic set. Equations and reference facts: see `jaxdd.methods.statistics`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxdd.augment.crops import cda_min_scale, random_flip, random_jitter, random_pad_crop
from jaxdd.augment.crops import random_resized_crop
from jaxdd.methods.base import Distiller, Metrics, PRNGKey, SynState, check_init, step_keys
from jaxdd.methods.statistics.capture import ConvStat, capture
from jaxdd.methods.statistics.losses import conv_drop_mask, diversity_loss, sre2l_loss
from jaxdd.models import Model, Variables

__all__ = ["RecoverConfig", "RecoverState", "pixel_bounds", "stack_teachers", "teacher_index",
           "dwa_perturb",
           "recover_augment", "make_recover", "recover_batch", "recover_batch_jit",
           "batch_layout", "recover_all"]

@dataclasses.dataclass(frozen=True)
class RecoverConfig:
    """Defaults: the SRe2L CIFAR-100 preset (spec table; recover_cifar.sh)."""

    lr: float = 0.25                 # Adam step on the normalised pixels at t = 0
    iterations: int = 1000           # T: steps per batch (cosine lr to 0 over T, no warm-up)
    r_bn: float = 0.01               # weight of the BN terms, eq. (1), and of the conv terms, eq. (2)
    first_bn_multiplier: float = 10.0  # w_0 of the first layer: stem BN (with conv_stats: stem conv)
    r_var: float = 1.0               # extra weight on the variance norms (DWA: 11 CIFAR, 2 IN-1K)
    jitter: tuple[int, int] = (0, 4)  # inclusive circular shift range in px (IN-1K: (0, 32))
    crop: bool = False               # RandomResizedCrop + flip before the jitter (CIFAR: off)
    crop_min_scale: float = 0.08     # lower crop area fraction when CDA is off
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect-ratio range of the crop
    per_image_aug: bool = False      # per-image crop/flip/jitter (references: one per batch)
    cda_mode: str | None = None      # CDA curriculum of crop_min_scale: cosine | linear | step
    cda_milestone: float = 1.0       # m: the curriculum ends at iteration m*T
    adam_b1: float = 0.5             # Adam betas / eps of the references
    adam_b2: float = 0.9
    adam_eps: float = 1e-8
    init: str = "noise"              # noise: N(0, 1) in normalised space | real (DWA/EDC)
    batch_size: int = 100            # classes per batch in recover_all (ipc_per_batch images each)
    # G-VBSM / ensembles: `variables` has a leading teacher axis (see stack_teachers); the
    # per-teacher losses are computed with vmap and reduced by teacher_reduce.
    stacked_teachers: bool = False
    teacher_reduce: str = "mean"     # mean | sum over teachers
    # Teachers given as a list (several architectures; `make_recover`): "mean" = every
    # teacher's loss at every iteration, reduced by teacher_reduce; "rotate" = teacher
    # t mod T alone at iteration t (G-VBSM: `teacher_index`).
    teacher_schedule: str = "mean"
    stat_ema: float | None = None    # G-VBSM moving averages a, BN + conv (0.8 CIFAR, 0.4 IN-1K)
    # Start of the averages in each batch: "batch" = the initial images' statistics; "zero"
    # = zeros, the reference (its hooks start at the float 0., so `isinstance(dd, int)` is
    # false and the first update is a * 0 + (1 - a) stat).
    stat_ema_init: str = "batch"
    # G-VBSM conv-input statistics (eq. 2) against dataset targets (make_recover's conv_targets).
    conv_stats: bool = False         # match every convolution's input (channel + cell statistics)
    conv_drop: float = 0.4           # P(drop) of each conv term per iteration (CIFAR 0.4)
    patch_size: int = 16             # cell side in px (reference: 16 at IN-1K, 4 at 32/64 px)
    patch_per_channel: bool = False  # stats per (cell, channel); False: pooled over C (reference)
    conv_target_batch: int = 64      # real images per batch when the targets are computed (ref. 64)
    conv_target_pad: int = 4         # RandomCrop padding (px) of the target pass; 0 = no crop
    conv_target_flip: bool = True    # random horizontal flip in the target pass
    # G-VBSM within-class diversity (eq. 3); needs several images of a class per batch.
    diversity: float = 0.0           # weight of the eigenvalue KL term (G-VBSM CIFAR-100: 1)
    diversity_tau: float = 4.0       # temperature of the detached tempered softmax
    ipc_per_batch: int = 1           # images of each class in one batch (class-major; G-VBSM: all)
    pad_crop: int = 0                # RandomCrop(pad) + flip per batch, before the jitter (G-VBSM: 4)
    # DWA: K normalised ascent steps of total length rho on the teacher per batch (0 = off).
    dwa_steps: int = 0
    dwa_rho: float = 0.015

    def __post_init__(self):
        if self.cda_mode is not None and self.cda_mode not in ("cosine", "linear", "step"):
            raise ValueError(f"cda_mode={self.cda_mode!r}; use cosine, linear, step or None")
        if self.init not in ("noise", "real"):
            raise ValueError(f"init={self.init!r}; use 'noise' or 'real'")
        if self.teacher_reduce not in ("mean", "sum"):
            raise ValueError(f"teacher_reduce={self.teacher_reduce!r}; use mean or sum")
        if self.stat_ema_init not in ("batch", "zero"):
            raise ValueError(f"stat_ema_init={self.stat_ema_init!r}; use batch (the initial "
                             f"images' statistics) or zero (the reference's start)")
        if self.teacher_schedule not in ("mean", "rotate"):
            raise ValueError(f"teacher_schedule={self.teacher_schedule!r}; use mean (every "
                             f"teacher each iteration) or rotate (one teacher per iteration)")
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")
        if not 0.0 <= self.conv_drop < 1.0:
            raise ValueError(f"conv_drop={self.conv_drop}; use a probability in [0, 1)")
        if self.patch_size < 1 or self.ipc_per_batch < 1 or self.conv_target_batch < 1:
            raise ValueError("patch_size, ipc_per_batch and conv_target_batch must be >= 1")
        if self.diversity < 0 or self.pad_crop < 0 or self.conv_target_pad < 0:
            raise ValueError("diversity, pad_crop and conv_target_pad must be >= 0")
        if self.diversity > 0 and self.ipc_per_batch < 2:
            raise ValueError("diversity > 0 needs ipc_per_batch >= 2: with one image of a "
                             "class per batch the term is identically 0")
        if self.crop and self.pad_crop:
            raise ValueError("use either crop (RandomResizedCrop) or pad_crop (RandomCrop), "
                             "not both")


class RecoverState(NamedTuple):
    syn: SynState              # the batch being optimised (B, H, W, C), int labels (B,)
    opt: optax.OptState        # Adam state (fresh per batch)
    iteration: jax.Array       # int32 steps done on this batch
    teacher: Variables | None  # DWA-perturbed teacher of this batch, else None
    ema: Any                   # G-VBSM moving averages [(mean_C, var_C)] per BN layer, else None
    conv_ema: Any = None       # G-VBSM moving averages [ConvStat] per conv layer, else None


def pixel_bounds(preprocess: Any) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel [lo, hi] of valid pixels in model space: ((0 - m) / s, (1 - m) / s).

    None for ZCA preprocessing (no per-channel box: no clipping)."""
    if preprocess.kind == "none":
        c = preprocess.image_shape[-1]
        return np.zeros(c, np.float32), np.ones(c, np.float32)
    if preprocess.kind == "normalize":
        m, s = np.asarray(preprocess.mean_C, np.float32), np.asarray(preprocess.std_C, np.float32)
        return -m / s, (1 - m) / s
    return None


def stack_teachers(variables_list: Sequence[Variables]) -> Variables:
    """Teachers of one architecture stacked along a new leading axis (for vmap)."""
    return jax.tree.map(lambda *v: jnp.stack(v), *variables_list)


def teacher_index(t: jax.Array | int, num_teachers: int) -> jax.Array:
    """The teacher of iteration t under teacher_schedule="rotate": t mod T.

    G-VBSM (data_synthesis_with_svd_with_db_with_all_statistic.py:150-151) takes
    `counter % len(model_teacher)` with one counter over all batches (set to 0 at :112), so
    its batch b starts at teacher (b * iterations) mod T; with iterations a multiple of T
    (its 1000 and 4000 with T = 5) that is teacher 0, as here. A pure function of the step:
    a resumed batch picks the teachers an uninterrupted one would."""
    return jnp.mod(jnp.asarray(t, jnp.int32), num_teachers)


def _ce_apply(model: Model | nn.Module, variables: Variables, x_NHWC: jax.Array,
              y_B: jax.Array) -> jax.Array:
    logits = capture(model, variables, x_NHWC, None).logits
    return optax.softmax_cross_entropy_with_integer_labels(logits, y_B).mean()


def dwa_perturb(model: Model | nn.Module, variables: Variables, x_NHWC: jax.Array,
                y_B: jax.Array, rho: float = 0.015, steps: int = 12) -> Variables:
    """DWA: theta <- theta + (rho / K) g / ||g||, K times, g = grad of this batch's CE
    (teacher in inference mode). Pure: depends only on (variables, x, y)."""
    if steps <= 0:
        return variables
    if isinstance(model, nnx.Module):
        raise NotImplementedError("DWA perturbs variables['params'] of a Linen teacher; an nnx "
                                  "model is not supported (wrap it with nnx.bridge.to_linen)")
    rest = {k: v for k, v in variables.items() if k != "params"}

    def body(params, _):
        g = jax.grad(lambda p: _ce_apply(model, {**rest, "params": p}, x_NHWC, y_B))(params)
        gn = optax.tree.norm(g)
        scale = (rho / steps) / jnp.maximum(gn, 1e-12)
        return jax.tree.map(lambda p, gi: p + scale * gi, params, g), None

    params, _ = jax.lax.scan(body, variables["params"], None, length=steps)
    return {**variables, "params": params}


def recover_augment(config: RecoverConfig, key: PRNGKey, x_NHWC: jax.Array,
                    t: jax.Array) -> jax.Array:
    """A(x) at iteration t: [RRC (CDA-scheduled) or RandomCrop(pad) + flip] then circular jitter."""
    k_crop, k_flip, k_jit = jax.random.split(key, 3)
    if config.pad_crop:  # G-VBSM CIFAR: RandomCrop(size, padding) + flip on the batch tensor
        x_NHWC = random_pad_crop(k_crop, x_NHWC, config.pad_crop, None, config.per_image_aug)
        x_NHWC = random_flip(k_flip, x_NHWC, config.per_image_aug)
    if config.crop:
        s_min = (cda_min_scale(t, config.iterations, config.cda_milestone, config.cda_mode)
                 if config.cda_mode else config.crop_min_scale)
        x_NHWC = random_resized_crop(k_crop, x_NHWC, s_min, config.crop_ratio, config.per_image_aug)
        x_NHWC = random_flip(k_flip, x_NHWC, config.per_image_aug)
    return random_jitter(k_jit, x_NHWC, config.jitter, config.per_image_aug)


def make_recover(config: RecoverConfig, model: Any, variables: Any,
                 bounds: tuple[Any, Any] | None = None,
                 conv_targets: Sequence[ConvStat] | None = None) -> Distiller:
    """Recover distiller for ONE batch of images (a fresh `init` per batch, as the references).

    init(key, x_init_NHWC, y_B) -> RecoverState: N(0, 1) noise of x_init's shape
    (config.init='noise') or x_init itself ('real'); DWA perturbs the teacher here.
    step(state, batch, key) -> (state, metrics): one Adam iteration on eq. (1) (+ eq. (2),
    (3) when configured); `batch` is unused (recovery needs no real data) and may be None.
    bounds: per-channel (lo_C, hi_C) in model space (see `pixel_bounds`) or None (no clip).
    conv_targets: `compute_conv_targets` of the teacher (leading teacher axis when stacked);
    required by config.conv_stats. With config.diversity the batch must be class-major with
    config.ipc_per_batch images per class. `model` may be an nnx.Module (variables: its
    nnx.State, stacked for several teachers, or None).

    Several teachers of different architectures: `model` a list of T models (a tuple for
    `recover_batch_jit` / `recover_all`, where the model is a static argument), `variables`
    the list of their (unstacked) variables, `conv_targets` the list of their targets;
    config.teacher_schedule picks "mean" (all T each iteration; conv-drop key i of
    split(k, T)) or "rotate" (teacher `teacher_index(t, T)` alone, one `lax.switch`: only
    its forward pass runs; its step equals the one-teacher distiller's step on the same
    state and key). Moving averages are kept per teacher, and a teacher's are updated only
    at its iterations (the reference's hooks fire only in their model's forward pass).
    `stacked_teachers` is ignored for a list.
    """
    if config.conv_stats and conv_targets is None:
        raise ValueError("config.conv_stats needs conv_targets (compute_conv_targets over the "
                         "real training set, or jaxdd.population.conv_targets.load_or_compute)")
    if isinstance(model, (list, tuple)):
        return _make_recover_list(config, tuple(model), list(variables), bounds,
                                  list(conv_targets) if config.conv_stats else None)
    if config.teacher_schedule == "rotate":
        raise ValueError("teacher_schedule='rotate' needs the teachers as lists (model = [m_1, "
                         "...], variables = [v_1, ...]), not one stacked model")
    if not config.conv_stats:
        conv_targets = None
    tx, clip, patch = _recover_parts(config, bounds)
    over_teachers = (lambda f: jax.vmap(f)) if config.stacked_teachers else (lambda f: f)
    per = _teacher_loss(config, model)

    def init(key: PRNGKey, x_init_NHWC: jax.Array, y_B: jax.Array) -> RecoverState:
        x, y_B = _init_images(config, key, x_init_NHWC, y_B)
        teacher = None
        if config.dwa_steps > 0:
            teacher = over_teachers(lambda v: dwa_perturb(model, v, x, y_B, config.dwa_rho,
                                                          config.dwa_steps))(variables)
        ema = conv_ema = None
        if config.stat_ema is not None:  # start the averages at the initial batch's statistics
            tv = variables if teacher is None else teacher
            ema, conv_ema = over_teachers(
                lambda v: _initial_averages(model, v, x,
                                            patch if conv_targets is not None else None,
                                            config.stat_ema_init))(tv)
            conv_ema = list(conv_ema) if conv_targets is not None else None
        return RecoverState(SynState(x, y_B, None), tx.init(x), jnp.zeros((), jnp.int32),
                            teacher, ema, conv_ema)

    def step(state: RecoverState, batch: Any, key: PRNGKey) -> tuple[RecoverState, Metrics]:
        del batch
        teacher = variables if state.teacher is None else state.teacher
        t = state.iteration
        k_drop = _drop_key(key)
        if config.stacked_teachers:
            n_teachers = jax.tree.leaves(teacher)[0].shape[0]
            k_drop = jax.random.split(k_drop, n_teachers)

        def loss_fn(x_NHWC):
            x_aug = recover_augment(config, key, x_NHWC, t)
            loss, aux = over_teachers(lambda v, em, cem, tgt, kd: per(x_aug, state.syn.y_syn, v, em,
                                                                    cem, tgt, kd))(
                teacher, state.ema, state.conv_ema, conv_targets, k_drop)
            red = jnp.mean if config.teacher_reduce == "mean" else jnp.sum
            div = _diversity(config, x_aug)
            total = red(loss) + config.diversity * div
            return total, (red(aux["ce"]), red(aux["bn"]), red(aux["conv"]), div, aux["ema"],
                           aux["conv_ema"])

        return _adam_step(tx, clip, state, loss_fn)

    return Distiller(init, step)


def _recover_parts(config: RecoverConfig, bounds: tuple[Any, Any] | None
                   ) -> tuple[optax.GradientTransformation, Callable, tuple[int, bool]]:
    """(Adam with the cosine lr, the pixel clip, the conv cell spec) of a recover distiller."""
    tx = optax.adam(optax.cosine_decay_schedule(config.lr, config.iterations),
                    b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    # float32 bounds unless given in float64 under x64 (clip casts them to the pixels' dtype)
    lo_C, hi_C = (None, None) if bounds is None else (jnp.asarray(bounds[0]),
                                                      jnp.asarray(bounds[1]))

    def clip(x_NHWC):
        if lo_C is None:
            return x_NHWC
        return jnp.clip(x_NHWC, lo_C.reshape(1, 1, 1, -1).astype(x_NHWC.dtype),
                        hi_C.reshape(1, 1, 1, -1).astype(x_NHWC.dtype))

    return tx, clip, (config.patch_size, config.patch_per_channel)


def _init_images(config: RecoverConfig, key: PRNGKey, x_init_NHWC: jax.Array, y_B: jax.Array
                 ) -> tuple[jax.Array, jax.Array]:
    check_init(x_init_NHWC, y_B)
    x_init_NHWC = jnp.asarray(x_init_NHWC)  # float32; float64 stays (x64 reference fixtures)
    x_init_NHWC = x_init_NHWC.astype(jnp.promote_types(x_init_NHWC.dtype, jnp.float32))
    y_B = jnp.asarray(y_B, jnp.int32)
    x = (jax.random.normal(key, x_init_NHWC.shape, x_init_NHWC.dtype) if config.init == "noise"
         else x_init_NHWC)
    return x, y_B


def _initial_averages(model: Any, v: Any, x_NHWC: jax.Array, patch: tuple[int, bool] | None,
                      start: str = "batch") -> tuple[list, list]:
    """G-VBSM moving averages at the start of a batch: [(mean_C, var_C)] per BN layer and
    the conv statistics (empty without `patch`), of the initial images or zeros."""
    cap = capture(model, v, x_NHWC, None, patch)
    avgs = [(st.mean_C, st.var_C) for st in cap.bn], cap.conv
    return jax.tree.map(jnp.zeros_like, avgs) if start == "zero" else avgs


def _drop_key(key: PRNGKey) -> PRNGKey:
    # Conv-drop keys come from their own branch of the step key, so the augmentation
    # (and every SRe2L result) is unchanged by the G-VBSM options.
    return jax.random.fold_in(key, 0x47564253)


def _teacher_loss(config: RecoverConfig, model: Any) -> Callable:
    """per(x_aug, y, variables, ema, conv_ema, targets, drop_key) -> (loss, aux) of one teacher."""
    def per(x_aug, y_B, v, em, cem, tgt, kd):
        keep = None if tgt is None else conv_drop_mask(kd, len(tgt), config.conv_drop)
        return sre2l_loss(x_aug, y_B, model, v, r_bn=config.r_bn,
                          first_bn_multiplier=config.first_bn_multiplier,
                          r_var=config.r_var, ema=em, ema_alpha=config.stat_ema or 0.0,
                          conv_targets=tgt, conv_keep_L=keep, conv_ema=cem,
                          patch_size=config.patch_size,
                          patch_per_channel=config.patch_per_channel)
    return per


def _diversity(config: RecoverConfig, x_aug: jax.Array) -> jax.Array:
    if config.diversity > 0:  # teacher-independent: outside the teachers
        return diversity_loss(x_aug, config.ipc_per_batch, config.diversity_tau)
    return jnp.zeros((), jnp.float32)


def _adam_step(tx: optax.GradientTransformation, clip: Callable, state: RecoverState,
               loss_fn: Callable) -> tuple[RecoverState, Metrics]:
    """One Adam step of the pixels on loss_fn -> (total, (ce, bn, conv, div, ema, conv_ema))."""
    x = state.syn.x_syn_NHWC
    (loss, (ce, bn, conv, div, ema, conv_ema)), g = jax.value_and_grad(loss_fn, has_aux=True)(x)
    updates, opt = tx.update(g, state.opt, x)
    x = clip(optax.apply_updates(x, updates))
    new = RecoverState(state.syn._replace(x_syn_NHWC=x), opt, state.iteration + 1,
                       state.teacher, ema, conv_ema)
    return new, {"loss": loss, "ce": ce, "bn": bn, "conv": conv, "div": div}


def _make_recover_list(config: RecoverConfig, models: tuple, variables: list,
                       bounds: tuple[Any, Any] | None, conv_targets: list | None) -> Distiller:
    """`make_recover` for a list of teachers (any architectures): see its docstring."""
    n = len(models)
    if n == 0 or len(variables) != n or (conv_targets is not None and len(conv_targets) != n):
        raise ValueError(f"{n} teacher models need as many variables ({len(variables)})"
                         + ("" if conv_targets is None else f" and conv targets ({len(conv_targets)})"))
    tx, clip, patch = _recover_parts(config, bounds)
    pers = [_teacher_loss(config, m) for m in models]
    tgts = conv_targets or [None] * n

    def init(key: PRNGKey, x_init_NHWC: jax.Array, y_B: jax.Array) -> RecoverState:
        x, y_B = _init_images(config, key, x_init_NHWC, y_B)
        teacher = None
        if config.dwa_steps > 0:
            teacher = tuple(dwa_perturb(m, v, x, y_B, config.dwa_rho, config.dwa_steps)
                            for m, v in zip(models, variables))
        ema = conv_ema = None
        if config.stat_ema is not None:
            tv = variables if teacher is None else teacher
            avgs = [_initial_averages(m, v, x, patch if conv_targets is not None else None,
                                      config.stat_ema_init) for m, v in zip(models, tv)]
            ema = tuple(a[0] for a in avgs)
            conv_ema = tuple(list(a[1]) for a in avgs) if conv_targets is not None else None
        return RecoverState(SynState(x, y_B, None), tx.init(x), jnp.zeros((), jnp.int32),
                            teacher, ema, conv_ema)

    def step(state: RecoverState, batch: Any, key: PRNGKey) -> tuple[RecoverState, Metrics]:
        del batch
        teachers = variables if state.teacher is None else list(state.teacher)
        t = state.iteration
        k_drop = _drop_key(key)
        y_B = state.syn.y_syn
        emas = state.ema if state.ema is not None else (None,) * n
        cemas = state.conv_ema if state.conv_ema is not None else (None,) * n

        def replaced(avgs, j, new):  # per-teacher averages with teacher j's replaced
            return None if avgs is None else tuple(new if i == j else a for i, a in enumerate(avgs))

        def loss_fn(x_NHWC):
            x_aug = recover_augment(config, key, x_NHWC, t)
            div = _diversity(config, x_aug)
            if config.teacher_schedule == "rotate":
                def branch(j):
                    def run(x_aug, ema_all, cema_all):
                        em = None if ema_all is None else ema_all[j]
                        cem = None if cema_all is None else cema_all[j]
                        loss, aux = pers[j](x_aug, y_B, teachers[j], em, cem, tgts[j], k_drop)
                        return (loss, aux["ce"], aux["bn"], aux["conv"],
                                replaced(ema_all, j, aux["ema"]),
                                replaced(cema_all, j, aux["conv_ema"]))
                    return run
                loss, ce, bn, conv, ema, cema = jax.lax.switch(
                    teacher_index(t, n), [branch(j) for j in range(n)], x_aug, state.ema,
                    state.conv_ema)
                return loss + config.diversity * div, (ce, bn, conv, div, ema, cema)
            k_T = jax.random.split(k_drop, n)
            outs = [pers[j](x_aug, y_B, teachers[j], emas[j], cemas[j], tgts[j], k_T[j])
                    for j in range(n)]
            red = jnp.mean if config.teacher_reduce == "mean" else jnp.sum
            field = lambda f: red(jnp.stack([o[1][f] for o in outs]))  # noqa: E731
            ema = None if state.ema is None else tuple(o[1]["ema"] for o in outs)
            cema = None if state.conv_ema is None else tuple(o[1]["conv_ema"] for o in outs)
            total = red(jnp.stack([o[0] for o in outs])) + config.diversity * div
            return total, (field("ce"), field("bn"), field("conv"), div, ema, cema)

        return _adam_step(tx, clip, state, loss_fn)

    return Distiller(init, step)


def recover_batch(config: RecoverConfig, model: Any, variables: Any,
                  key: PRNGKey, x_init_NHWC: jax.Array, y_B: jax.Array,
                  bounds: tuple[Any, Any] | None = None,
                  conv_targets: Sequence[ConvStat] | None = None) -> tuple[jax.Array, Metrics]:
    """All `config.iterations` steps on one batch in one lax.scan (jit this; config and
    model static). Returns the last iterate and per-iteration metrics (T,)."""
    d = make_recover(config, model, variables, bounds, conv_targets)
    k_init, k_loop = jax.random.split(key)
    state = d.init(k_init, x_init_NHWC, y_B)

    def body(s, t):  # the driver's key schedule: this scan equals a driven batch
        return d.step(s, None, step_keys(k_loop, t)[1])

    state, metrics = jax.lax.scan(body, state, jnp.arange(1, config.iterations + 1))
    return state.syn.x_syn_NHWC, metrics


# One compiled program per (config, model, shapes), shared by every caller.
recover_batch_jit = jax.jit(recover_batch, static_argnums=(0, 1))


def batch_layout(config: RecoverConfig, num_classes: int, ipc: int
                 ) -> list[tuple[int, np.ndarray, np.ndarray]]:
    """The batches of `recover_all` and the pipeline: (first IPC index i0, classes (c,),
    IPC indices (g,)), each batch class-major (class c's g images contiguous).

    SRe2L: g = 1 (one image per class, batches of `batch_size` classes); G-VBSM: g =
    ipc_per_batch images of each of `batch_size` classes in one batch.
    """
    g = config.ipc_per_batch
    if ipc % g:
        raise ValueError(f"IPC {ipc} is not a multiple of recover.ipc_per_batch {g}")
    return [(i0, np.arange(c0, min(c0 + config.batch_size, num_classes)), np.arange(i0, i0 + g))
            for i0 in range(0, ipc, g) for c0 in range(0, num_classes, config.batch_size)]


def recover_all(config: RecoverConfig, model: Any, variables: Any,
                key: PRNGKey, num_classes: int, ipc: int, image_shape: tuple[int, int, int],
                bounds: tuple[Any, Any] | None = None,
                x_init_KxIxHWC: jax.Array | None = None,
                on_batch: Callable[[int, int, Metrics], None] | None = None,
                conv_targets: Sequence[ConvStat] | None = None
                ) -> tuple[jax.Array, jax.Array]:
    """All batches of `batch_layout` (for SRe2L: IPC index i, classes in chunks of
    `config.batch_size`, 1 image per class), each a fresh batch (new noise, new Adam, T
    steps, one compiled scan).

    Batch (i0, c0) uses key fold_in(fold_in(key, i0), c0), so any batch can be rerun alone.
    Returns (x_NHWC, y_N) ordered by class (class-major, IPC-minor) like every SynState.
    """
    h, w, c = image_shape
    out = np.zeros((num_classes, ipc, h, w, c), np.float32)
    for i0, cls, ipcs in batch_layout(config, num_classes, ipc):
        if x_init_KxIxHWC is not None:
            x0 = jnp.asarray(x_init_KxIxHWC)[cls][:, ipcs].reshape(-1, h, w, c)
        else:
            x0 = jnp.zeros((len(cls) * len(ipcs), h, w, c), jnp.float32)
        y = jnp.asarray(np.repeat(cls, len(ipcs)), jnp.int32)
        k = jax.random.fold_in(jax.random.fold_in(key, i0), int(cls[0]))
        x, metrics = recover_batch_jit(config, model, variables, k, x0, y, bounds, conv_targets)
        out[cls[:, None], ipcs[None, :]] = np.asarray(x).reshape(len(cls), len(ipcs), h, w, c)
        if on_batch is not None:
            on_batch(i0, int(cls[0]), metrics)
    y = np.repeat(np.arange(num_classes, dtype=np.int32), ipc)
    return jnp.asarray(out.reshape(num_classes * ipc, h, w, c)), jnp.asarray(y)
