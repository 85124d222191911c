"""Statistics matching, "recover" stage: SRe2L with the CDA, G-VBSM and DWA options.

Pixels are optimised against a frozen BatchNorm teacher f (inference mode):

    L(x) = CE(f(A(x)), y) + r_bn * sum_l w_l (r_var ||var_l - rv_l||_2 + ||mean_l - rm_l||_2)   (1)

mean_l / var_l: per-channel mean and biased variance of the *input* of BN layer l over
(N, H, W) of the augmented batch A(x); rm_l / rv_l: that layer's running statistics;
w_0 = `first_bn_multiplier` (10), w_l = 1 otherwise; r_var = 1 except for DWA.

BN inputs are captured with `flax.linen.intercept_methods` (no model rewrite): any Linen
model whose BN layers are `nn.BatchNorm` works. NNX models: wrap them as Linen with
`flax.nnx.bridge.to_linen` only if their norm layers are Linen BatchNorms; a plain NNX
model's `nnx.BatchNorm` is invisible to the Linen interceptor — there, compute the stats
from the model's intermediates (`nnx.sow` of each BN input) with `bn_matching_loss` below,
which only needs (mean, var, running_mean, running_var) per layer.

Facts carried from the references (VILA-Lab/SRe2L `recover_cifar.py`, `CDA/utils.py`,
`CDA/recover_cda_*.py`): BN hook = input mean over (N, H, W) and `var(unbiased=False)`,
`torch.norm(rv - var, 2) + torch.norm(rm - mean, 2)`; rescale [first_bn_multiplier] +
[1] * (L - 1); Adam(betas (0.5, 0.9), eps 1e-8), lr = 0.5 (1 + cos(pi t / T)) lr0 set
before step t (no warm-up); fresh optimiser and fresh N(0, 1) noise per batch of 100
classes (one image per class per IPC index); jitter = `torch.roll` by (randint(0, j),
randint(0, j)) shared by the batch, after RandomResizedCrop + flip applied to the whole
batch tensor (one box, one flip per iteration); clamp channel c to [-m_c/s_c, (1-m_c)/s_c]
after each step; the last iterate is saved. CDA: s_min(t) cosine/linear/step to 0.08 until
milestone * T.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd.methods.base import Distiller, Metrics, PRNGKey, SynState
from jaxdd.models import Model, Variables

__all__ = [
    "BNStat", "bn_input_stats", "bn_layer_paths", "safe_norm", "bn_matching_loss",
    "sample_crop_box", "crop_resize",
    "sre2l_loss", "ema_stats", "cda_min_scale", "random_resized_crop", "random_flip",
    "random_jitter", "recover_augment", "pixel_bounds", "dwa_perturb", "RecoverConfig",
    "RecoverState", "make_recover", "recover_batch", "recover_batch_jit", "recover_all", "stack_teachers",
]

CDA_FLOOR = 0.08  # torchvision's default RandomResizedCrop lower scale; CDA's end point


# ---------------------------------------------------------------------------------------
# 1. BN statistics capture


class BNStat(NamedTuple):
    """Statistics of one BN layer's input (all (C,)); running_* are the teacher's."""

    mean_C: jax.Array
    var_C: jax.Array  # biased (divides by N*H*W), as torch var(unbiased=False)
    running_mean_C: jax.Array
    running_var_C: jax.Array


def _module_and_kwargs(model_or_module: Model | nn.Module, apply_kwargs: dict | None
                       ) -> tuple[nn.Module, dict]:
    module = model_or_module.module if isinstance(model_or_module, Model) else model_or_module
    if apply_kwargs is not None:
        return module, apply_kwargs
    # Ask for inference mode when the model has the conventional flag (jaxdd models do).
    params = inspect.signature(type(module).__call__).parameters
    return module, ({"train": False} if "train" in params else {})


def _lookup(tree: Any, path: Sequence[str]) -> Any:
    for name in path:
        tree = tree[name]
    return tree


def _bn_inference(bn: nn.BatchNorm, x: jax.Array, feat: tuple[int, ...], running: Any,
                  params: Any) -> jax.Array:
    """BN in inference mode for a layer built with use_running_average=False (train mode)."""
    shape = [x.shape[a] if a in feat else 1 for a in range(x.ndim)]
    y = (x - running["mean"].reshape(shape)) * jax.lax.rsqrt(running["var"].reshape(shape)
                                                              + bn.epsilon)
    if bn.use_scale:
        y = y * params["scale"].reshape(shape)
    if bn.use_bias:
        y = y + params["bias"].reshape(shape)
    return y.astype(bn.dtype or x.dtype)


def _capture(model_or_module: Model | nn.Module, variables: Variables, x_NHWC: jax.Array,
             apply_kwargs: dict | None) -> tuple[jax.Array, list[BNStat], list[tuple[str, ...]]]:
    module, kwargs = _module_and_kwargs(model_or_module, apply_kwargs)
    stats: list[BNStat] = []
    paths: list[tuple[str, ...]] = []

    def grab(next_fun, args, kw, context):
        bn = context.module
        if not (isinstance(bn, nn.BatchNorm) and context.method_name == "__call__"):
            return next_fun(*args, **kw)
        x = args[0]
        feat = (bn.axis,) if isinstance(bn.axis, int) else tuple(bn.axis)
        feat = tuple(a % x.ndim for a in feat)
        red = tuple(a for a in range(x.ndim) if a not in feat)
        x32 = x.astype(jnp.float32)
        mean = x32.mean(axis=red, keepdims=True)
        var = jnp.square(x32 - mean).mean(axis=red)  # two-pass, biased
        path = tuple(bn.scope.path)
        running = _lookup(variables["batch_stats"], path)
        stats.append(BNStat(mean.reshape(var.shape), var, running["mean"], running["var"]))
        paths.append(path)
        # The teacher always normalises with its running statistics (eval mode), whatever
        # flag the model passed: the statistics only enter the penalty (1).
        if bn.use_running_average is None:
            kw = {k: v for k, v in kw.items() if k != "use_running_average"}
            return next_fun(x, use_running_average=True, **kw)
        if bn.use_running_average:
            return next_fun(*args, **kw)
        return _bn_inference(bn, x, feat, running, _lookup(variables.get("params", {}), path))

    with nn.intercept_methods(grab):
        logits = module.apply(variables, x_NHWC, **kwargs)
    return logits, stats, paths


def bn_input_stats(model_or_module: Model | nn.Module, variables: Variables, x_NHWC: jax.Array,
                   apply_kwargs: dict | None = None) -> tuple[jax.Array, list[BNStat]]:
    """Inference logits and, for every `nn.BatchNorm` call in order, its input statistics
    and running statistics (matched by the layer's scope path in `variables['batch_stats']`).

    `apply_kwargs` defaults to {'train': False} when the module's `__call__` takes `train`.
    """
    logits, stats, _ = _capture(model_or_module, variables, x_NHWC, apply_kwargs)
    if not stats:
        raise ValueError("the model called no flax.linen.BatchNorm: statistics matching needs "
                         "a teacher with BN layers (e.g. convnet_bn, resnet18)")
    return logits, stats


def bn_layer_paths(model_or_module: Model | nn.Module, variables: Variables, x_NHWC: jax.Array,
                   apply_kwargs: dict | None = None) -> list[str]:
    """Scope paths ('layer1_0/bn1') of the BN calls, in the order `bn_input_stats` lists them."""
    found: list[tuple[str, ...]] = []

    def trace(v, x):
        logits, _, paths = _capture(model_or_module, v, x, apply_kwargs)
        found.extend(paths)
        return logits

    jax.eval_shape(trace, variables, x_NHWC)  # shapes only: nothing is computed
    return ["/".join(p) for p in found]


# ---------------------------------------------------------------------------------------
# 2. The SRe2L loss


def safe_norm(v: jax.Array) -> jax.Array:
    """||v||_2 with gradient 0 (not NaN) at v = 0; exact value everywhere (double where)."""
    sq = jnp.sum(jnp.square(v))
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def bn_matching_loss(stats: Sequence[BNStat], first_bn_multiplier: float = 10.0,
                     r_var: float = 1.0) -> jax.Array:
    """sum_l w_l (r_var ||var_l - rv_l|| + ||mean_l - rm_l||), w_0 = first_bn_multiplier (eq. 1)."""
    terms = [r_var * safe_norm(s.var_C - s.running_var_C) + safe_norm(s.mean_C - s.running_mean_C)
             for s in stats]
    weights = [first_bn_multiplier] + [1.0] * (len(terms) - 1)
    return sum(w * t for w, t in zip(weights, terms))


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


def sre2l_loss(x_aug_NHWC: jax.Array, y_B: jax.Array, model: Model | nn.Module,
               variables: Variables, *, r_bn: float = 0.01, first_bn_multiplier: float = 10.0,
               r_var: float = 1.0, ema: Sequence[tuple[jax.Array, jax.Array]] | None = None,
               ema_alpha: float = 0.8) -> tuple[jax.Array, dict[str, Any]]:
    """Eq. (1) on an already augmented batch: (loss, {'ce', 'bn', 'ema'}).

    y_B: int class labels. With `ema` (G-VBSM) the statistics are moving averages and the
    updated averages come back in aux['ema'].
    """
    logits_BxK, stats = bn_input_stats(model, variables, x_aug_NHWC)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits_BxK.astype(jnp.float32), y_B).mean()
    new_ema = None
    if ema is not None:
        stats, new_ema = ema_stats(stats, ema, ema_alpha)
    bn = bn_matching_loss(stats, first_bn_multiplier, r_var)
    return ce + r_bn * bn, {"ce": ce, "bn": bn, "ema": new_ema}


# ---------------------------------------------------------------------------------------
# 3. Augmentation: (CDA-scheduled) random-resized-crop, flip, jitter — pure in the key


def cda_min_scale(t: jax.Array | int, total: int, milestone: float = 1.0,
                  mode: str = "cosine") -> jax.Array:
    """CDA lower crop scale at iteration t of T (easy -> hard), 0.08 from m*T on.

    cosine: 0.08 + 0.92 (1 + cos(pi t / (m T))) / 2 ; linear: 0.08 + 0.92 (1 - t / (m T)) ;
    step: 1.
    """
    t = jnp.asarray(t, jnp.float32)
    end = milestone * total
    frac = t / max(end, 1e-12)
    if mode == "cosine":
        s = CDA_FLOOR + (1 - CDA_FLOOR) * (1 + jnp.cos(jnp.pi * frac)) / 2
    elif mode == "linear":
        s = CDA_FLOOR + (1 - CDA_FLOOR) * (1 - frac)
    elif mode == "step":
        s = jnp.ones_like(t)
    else:
        raise ValueError(f"unknown CDA mode {mode!r}; use cosine, linear or step")
    return jnp.where(t < end, s, CDA_FLOOR)


def sample_crop_box(key: PRNGKey, h: int, w: int, min_scale: jax.Array | float,
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
    """(y0, x0, ch, cw) of a crop with area fraction U(min_scale, 1) and log-uniform aspect
    ratio. torchvision retries out-of-range boxes 10 times then centre-crops; we clip the
    sides to the image instead (pure, no loop)."""
    k_s, k_r, k_y, k_x = jax.random.split(key, 4)
    area = jax.random.uniform(k_s, (), minval=min_scale, maxval=1.0) * (h * w)
    log_r = jax.random.uniform(k_r, (), minval=math.log(ratio[0]), maxval=math.log(ratio[1]))
    r = jnp.exp(log_r)
    cw = jnp.clip(jnp.sqrt(area * r), 1.0, w)
    ch = jnp.clip(jnp.sqrt(area / r), 1.0, h)
    y0 = jax.random.uniform(k_y, ()) * (h - ch)
    x0 = jax.random.uniform(k_x, ()) * (w - cw)
    return jnp.stack([y0, x0, ch, cw])


def crop_resize(x_HWC: jax.Array, box_4: jax.Array) -> jax.Array:
    """Bilinear resize of the box back to (H, W): output = (input - y0) * H / ch."""
    h, w = x_HWC.shape[0], x_HWC.shape[1]
    scale = jnp.stack([h / box_4[2], w / box_4[3]])
    trans = -box_4[:2] * scale
    return jax.image.scale_and_translate(x_HWC, x_HWC.shape, (0, 1), scale, trans, "linear",
                                         antialias=True)


def random_resized_crop(key: PRNGKey, x_NHWC: jax.Array, min_scale: jax.Array | float = 0.08,
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        per_image: bool = False) -> jax.Array:
    """RandomResizedCrop(scale=(min_scale, 1), ratio) back to the input size; one box for the
    whole batch (as the references) or one per image. `min_scale` may be traced (CDA)."""
    n, h, w = x_NHWC.shape[:3]
    if per_image:
        boxes = jax.vmap(lambda k: sample_crop_box(k, h, w, min_scale, ratio))(jax.random.split(key, n))
        return jax.vmap(crop_resize)(x_NHWC, boxes)
    box = sample_crop_box(key, h, w, min_scale, ratio)
    return jax.vmap(crop_resize, in_axes=(0, None))(x_NHWC, box)


def random_flip(key: PRNGKey, x_NHWC: jax.Array, per_image: bool = False) -> jax.Array:
    """Horizontal mirror with p = 0.5 (one decision per batch, or per image)."""
    n = x_NHWC.shape[0]
    flip = jax.random.bernoulli(key, 0.5, (n,) if per_image else ())
    flip_N111 = jnp.broadcast_to(flip, (n,)).reshape(n, 1, 1, 1)
    return jnp.where(flip_N111, x_NHWC[:, :, ::-1], x_NHWC)


def random_jitter(key: PRNGKey, x_NHWC: jax.Array, shift_range: tuple[int, int] = (0, 4),
                  per_image: bool = False) -> jax.Array:
    """Circular shift by (dy, dx), each uniform on the inclusive range (torch.roll + randint)."""
    lo, hi = shift_range
    if hi == lo == 0:
        return x_NHWC
    if per_image:
        keys = jax.random.split(key, x_NHWC.shape[0])
        return jax.vmap(lambda k, x: random_jitter(k, x[None], shift_range)[0])(keys, x_NHWC)
    d = jax.random.randint(key, (2,), lo, hi + 1)
    return jnp.roll(x_NHWC, (d[0], d[1]), axis=(1, 2))


# ---------------------------------------------------------------------------------------
# 4. The recover distiller


@dataclasses.dataclass(frozen=True)
class RecoverConfig:
    """Defaults: the SRe2L CIFAR-100 preset (spec table; recover_cifar.sh)."""

    lr: float = 0.25                 # Adam step on the normalised pixels at t = 0
    iterations: int = 1000           # T: steps per batch (cosine lr to 0 over T, no warm-up)
    r_bn: float = 0.01               # weight of the BN term in eq. (1)
    first_bn_multiplier: float = 10.0  # w_0 of the first BN layer (the stem)
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
    batch_size: int = 100            # classes per batch in recover_all (1 image per class)
    # G-VBSM / ensembles: `variables` has a leading teacher axis (see stack_teachers); the
    # per-teacher losses are computed with vmap and reduced by teacher_reduce.
    stacked_teachers: bool = False
    teacher_reduce: str = "mean"     # mean | sum over teachers
    stat_ema: float | None = None    # G-VBSM moving-average statistics a (0.8 CIFAR, 0.4 IN-1K)
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
        if self.iterations < 1:
            raise ValueError("iterations must be >= 1")


class RecoverState(NamedTuple):
    syn: SynState              # the batch being optimised (B, H, W, C), int labels (B,)
    opt: optax.OptState        # Adam state (fresh per batch)
    iteration: jax.Array       # int32 steps done on this batch
    teacher: Variables | None  # DWA-perturbed teacher of this batch, else None
    ema: Any                   # G-VBSM moving averages [(mean_C, var_C)] per layer, else None


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


def _ce_apply(model: Model | nn.Module, variables: Variables, x_NHWC: jax.Array,
              y_B: jax.Array) -> jax.Array:
    logits, _, _ = _capture(model, variables, x_NHWC, None)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y_B).mean()


def dwa_perturb(model: Model | nn.Module, variables: Variables, x_NHWC: jax.Array,
                y_B: jax.Array, rho: float = 0.015, steps: int = 12) -> Variables:
    """DWA: theta <- theta + (rho / K) g / ||g||, K times, g = grad of this batch's CE
    (teacher in inference mode). Pure: depends only on (variables, x, y)."""
    if steps <= 0:
        return variables
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
    """A(x) at iteration t: [RRC (CDA-scheduled) + flip] then circular jitter."""
    k_crop, k_flip, k_jit = jax.random.split(key, 3)
    if config.crop:
        s_min = (cda_min_scale(t, config.iterations, config.cda_milestone, config.cda_mode)
                 if config.cda_mode else config.crop_min_scale)
        x_NHWC = random_resized_crop(k_crop, x_NHWC, s_min, config.crop_ratio, config.per_image_aug)
        x_NHWC = random_flip(k_flip, x_NHWC, config.per_image_aug)
    return random_jitter(k_jit, x_NHWC, config.jitter, config.per_image_aug)


def make_recover(config: RecoverConfig, model: Model | nn.Module, variables: Variables,
                 bounds: tuple[Any, Any] | None = None) -> Distiller:
    """Recover distiller for ONE batch of images (a fresh `init` per batch, as the references).

    init(key, x_init_NHWC, y_B) -> RecoverState: N(0, 1) noise of x_init's shape
    (config.init='noise') or x_init itself ('real'); DWA perturbs the teacher here.
    step(state, batch, key) -> (state, metrics): one Adam iteration on eq. (1); `batch` is
    unused (recovery needs no real data) and may be None.
    bounds: per-channel (lo_C, hi_C) in model space (see `pixel_bounds`) or None (no clip).
    """
    tx = optax.adam(optax.cosine_decay_schedule(config.lr, config.iterations),
                    b1=config.adam_b1, b2=config.adam_b2, eps=config.adam_eps)
    lo_C, hi_C = (None, None) if bounds is None else (jnp.asarray(bounds[0], jnp.float32),
                                                      jnp.asarray(bounds[1], jnp.float32))
    over_teachers = (lambda f: jax.vmap(f)) if config.stacked_teachers else (lambda f: f)

    def clip(x_NHWC):
        if lo_C is None:
            return x_NHWC
        return jnp.clip(x_NHWC, lo_C.reshape(1, 1, 1, -1), hi_C.reshape(1, 1, 1, -1))

    def init(key: PRNGKey, x_init_NHWC: jax.Array, y_B: jax.Array) -> RecoverState:
        x_init_NHWC = jnp.asarray(x_init_NHWC, jnp.float32)
        y_B = jnp.asarray(y_B, jnp.int32)
        x = (jax.random.normal(key, x_init_NHWC.shape, jnp.float32) if config.init == "noise"
             else x_init_NHWC)
        teacher = None
        if config.dwa_steps > 0:
            teacher = over_teachers(lambda v: dwa_perturb(model, v, x, y_B, config.dwa_rho,
                                                          config.dwa_steps))(variables)
        ema = None
        if config.stat_ema is not None:  # start the averages at the initial batch's statistics
            tv = variables if teacher is None else teacher
            ema = over_teachers(lambda v: [(s.mean_C, s.var_C)
                                           for s in bn_input_stats(model, v, x)[1]])(tv)
        return RecoverState(SynState(x, y_B, None), tx.init(x), jnp.zeros((), jnp.int32),
                            teacher, ema)

    def step(state: RecoverState, batch: Any, key: PRNGKey) -> tuple[RecoverState, Metrics]:
        del batch
        teacher = variables if state.teacher is None else state.teacher
        t = state.iteration

        def loss_fn(x_NHWC):
            x_aug = recover_augment(config, key, x_NHWC, t)
            per = lambda v, em: sre2l_loss(x_aug, state.syn.y_syn, model, v, r_bn=config.r_bn,
                                           first_bn_multiplier=config.first_bn_multiplier,
                                           r_var=config.r_var, ema=em,
                                           ema_alpha=config.stat_ema or 0.0)
            loss, aux = over_teachers(per)(teacher, state.ema)
            red = jnp.mean if config.teacher_reduce == "mean" else jnp.sum
            return red(loss), (red(aux["ce"]), red(aux["bn"]), aux["ema"])

        x = state.syn.x_syn_NHWC
        (loss, (ce, bn, ema)), g = jax.value_and_grad(loss_fn, has_aux=True)(x)
        updates, opt = tx.update(g, state.opt, x)
        x = clip(optax.apply_updates(x, updates))
        new = RecoverState(state.syn._replace(x_syn_NHWC=x), opt, t + 1, state.teacher, ema)
        finite = jnp.isfinite(loss) & jnp.all(jnp.isfinite(g))
        return new, {"loss": loss, "ce": ce, "bn": bn, "finite": finite}

    return Distiller(init, step)


def recover_batch(config: RecoverConfig, model: Model | nn.Module, variables: Variables,
                  key: PRNGKey, x_init_NHWC: jax.Array, y_B: jax.Array,
                  bounds: tuple[Any, Any] | None = None) -> tuple[jax.Array, Metrics]:
    """All `config.iterations` steps on one batch in one lax.scan (jit this; config and
    model static). Returns the last iterate and per-iteration metrics (T,)."""
    d = make_recover(config, model, variables, bounds)
    k_init, k_loop = jax.random.split(key)
    state = d.init(k_init, x_init_NHWC, y_B)

    def body(s, t):
        return d.step(s, None, jax.random.fold_in(k_loop, t))

    state, metrics = jax.lax.scan(body, state, jnp.arange(config.iterations))
    return state.syn.x_syn_NHWC, metrics


# One compiled program per (config, model, shapes), shared by every caller.
recover_batch_jit = jax.jit(recover_batch, static_argnums=(0, 1))


def recover_all(config: RecoverConfig, model: Model | nn.Module, variables: Variables,
                key: PRNGKey, num_classes: int, ipc: int, image_shape: tuple[int, int, int],
                bounds: tuple[Any, Any] | None = None,
                x_init_KxIxHWC: jax.Array | None = None,
                on_batch: Callable[[int, int, Metrics], None] | None = None
                ) -> tuple[jax.Array, jax.Array]:
    """SRe2L batching: for IPC index i, classes in chunks of `config.batch_size` (1 image
    per class), each a fresh batch (new noise, new Adam, T steps, one compiled scan).

    Batch (i, c0) uses key fold_in(fold_in(key, i), c0), so any batch can be rerun alone.
    Returns (x_NHWC, y_N) ordered by class (class-major, IPC-minor) like every SynState.
    """
    h, w, c = image_shape
    out = np.zeros((num_classes, ipc, h, w, c), np.float32)
    for i in range(ipc):
        for c0 in range(0, num_classes, config.batch_size):
            cls = np.arange(c0, min(c0 + config.batch_size, num_classes))
            if x_init_KxIxHWC is not None:
                x0 = jnp.asarray(x_init_KxIxHWC)[cls, i]
            else:
                x0 = jnp.zeros((len(cls), h, w, c), jnp.float32)
            k = jax.random.fold_in(jax.random.fold_in(key, i), c0)
            x, metrics = recover_batch_jit(config, model, variables, k, x0, jnp.asarray(cls, jnp.int32), bounds)
            out[cls, i] = np.asarray(x)
            if on_batch is not None:
                on_batch(i, c0, metrics)
    y = np.repeat(np.arange(num_classes, dtype=np.int32), ipc)
    return jnp.asarray(out.reshape(num_classes * ipc, h, w, c)), jnp.asarray(y)
