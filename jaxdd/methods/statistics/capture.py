"""Statistics capture: BN inputs (SRe2L), conv inputs (G-VBSM); Linen and NNX.

One inference forward pass of the teacher records, in call order, the input statistics of
every BatchNorm (`BNStat`, with the layer's running statistics) and, when asked, of every
convolution (`ConvStat`: channel and cell statistics). Linen models are intercepted with
`flax.linen.intercept_methods`; NNX models get `nnx.BatchNorm` / `nnx.Conv` wrapped for one
forward pass. Equations: see `jaxdd.methods.statistics`.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from jaxdd.models import Model
from jaxdd.models import layers as jlayers
from jaxdd.models.layers import Conv3x3

__all__ = ["CONV_TYPES", "BNStat", "ConvStat", "Captured", "capture", "patch_stats",
           "bn_input_stats", "bn_layer_paths", "conv_input_stats", "conv_layer_paths"]

CONV_TYPES: tuple[type, ...] = (nn.Conv, Conv3x3)


class BNStat(NamedTuple):
    """Statistics of one BN layer's input (all (C,)); running_* are the teacher's."""

    mean_C: jax.Array
    var_C: jax.Array  # biased (divides by N*H*W), as torch var(unbiased=False)
    running_mean_C: jax.Array
    running_var_C: jax.Array


class ConvStat(NamedTuple):
    """Statistics of one convolution's input (G-VBSM), or their dataset targets.

    Channel mean / biased var over (N, H, W): (C,). Patch ("cell") mean / biased var:
    (P,) pooled over (N, h, w, C) per cell as the reference, or (P, C) per channel.
    """

    mean_C: jax.Array
    var_C: jax.Array
    patch_mean_P: jax.Array
    patch_var_P: jax.Array


class Captured(NamedTuple):
    """What one forward pass of the teacher recorded (lists in call order)."""

    logits: jax.Array
    bn: list[BNStat]
    bn_paths: list[tuple[str, ...]]
    conv: list[ConvStat]
    conv_paths: list[tuple[str, ...]]
    first_is_conv: bool  # the first captured layer (call order) is a convolution


def _moments(x: jax.Array, red: tuple[int, ...], w: jax.Array | None = None
             ) -> tuple[jax.Array, jax.Array]:
    """Mean and biased variance over `red`, two-pass in float32 or wider (float64 inputs stay
    float64; no E[x^2] - E[x]^2 loss); with 0/1 weights `w` (x's shape) only the elements of
    weight 1 count (none: 0, 0)."""
    x32 = x.astype(_at_least_f32(x))
    if w is None:
        mean = x32.mean(axis=red, keepdims=True)
        var = jnp.square(x32 - mean).mean(axis=red)
        return mean.reshape(var.shape), var
    count = jnp.maximum(w.sum(axis=red, keepdims=True), 1.0)
    mean = (w * x32).sum(axis=red, keepdims=True) / count
    var = (w * jnp.square(x32 - mean)).sum(axis=red, keepdims=True) / count
    return mean.squeeze(red), var.squeeze(red)


def _at_least_f32(x: jax.Array) -> jnp.dtype:
    """float32 for half/bfloat16/float32 inputs, float64 for float64 ones (x64 fixtures)."""
    return jnp.promote_types(x.dtype, jnp.float32)


def _image_weights(mask_N: jax.Array | None, shape: tuple[int, ...]) -> jax.Array | None:
    """0/1 float weights of shape (N, ...) from a per-image mask (None: all count)."""
    if mask_N is None:
        return None
    m = jnp.asarray(mask_N, jnp.float32).reshape((shape[0],) + (1,) * (len(shape) - 1))
    return jnp.broadcast_to(m, shape)


def patch_stats(x_NHWC: jax.Array, patch_size: int = 16, per_channel: bool = False,
                mask_N: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
    """Mean / biased var of each patch_size x patch_size spatial cell (cells row-major).

    Each axis is first bilinearly resized (half-pixel centres, no antialiasing) up to the
    next multiple of `patch_size` when it is not one, as the reference's `F.interpolate`
    to `div_four_mul` sizes (G-VBSM recover/utils.py ConvFeatureHook, 4-px cells): an
    axis shorter than a cell becomes one
    upsampled cell (a 2x2 map with 4-px cells: one 4x4 cell). Pooled over (N, h, w, C) ->
    (P,), or per channel (P, C); with `mask_N` only the images where it is True count.
    """
    n, h, w, c = x_NHWC.shape

    def grid(size: int) -> tuple[int, int]:  # (resized length, cell length)
        return -(-size // patch_size) * patch_size, patch_size

    (h2, ph), (w2, pw) = grid(h), grid(w)
    x = x_NHWC.astype(_at_least_f32(x_NHWC))
    if (h2, w2) != (h, w):
        x = jax.image.resize(x, (n, h2, w2, c), "linear", antialias=False)
    u, v = h2 // ph, w2 // pw

    def as_cells(a):
        a = a.reshape(n, u, ph, v, pw, c).transpose(1, 3, 0, 2, 4, 5)
        return a.reshape(u * v, n * ph * pw, c) if per_channel else a.reshape(u * v, -1)

    w = _image_weights(mask_N, x.shape)
    return _moments(as_cells(x), (1,), None if w is None else as_cells(w))


def conv_input_stat(x_NHWC: jax.Array, patch_size: int = 16, per_channel: bool = False,
                    mask_N: jax.Array | None = None) -> ConvStat:
    """Channel and cell statistics of one convolution input (eq. 2's mean, var, pm, pv),
    over the images where `mask_N` is True (default: all)."""
    if x_NHWC.ndim != 4:
        raise ValueError(f"conv statistics need NHWC inputs (2-D convolutions); got shape "
                         f"{x_NHWC.shape}")
    mean, var = _moments(x_NHWC, (0, 1, 2), _image_weights(mask_N, x_NHWC.shape))
    return ConvStat(mean, var, *patch_stats(x_NHWC, patch_size, per_channel, mask_N))


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


def _feature_axes(axis: int | Sequence[int], ndim: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(feature axes, reduction axes) of a norm layer's `axis` for an ndim input."""
    feat = (axis,) if isinstance(axis, int) else tuple(axis)
    feat = tuple(a % ndim for a in feat)
    return feat, tuple(a for a in range(ndim) if a not in feat)


def capture(model_or_module: Any, variables: Any, x_NHWC: jax.Array,
             apply_kwargs: dict | None, patch: tuple[int, bool] | None = None,
             mask_N: jax.Array | None = None) -> Captured:
    """One inference forward pass recording every BN input (and, with `patch` = (cell side,
    per_channel), every convolution input). `mask_N`: the conv statistics count only these
    images (padding and skipped slots of a streamed batch; inference mode keeps images
    independent)."""
    if isinstance(model_or_module, nnx.Module):
        return _capture_nnx(model_or_module, variables, x_NHWC, apply_kwargs, patch, mask_N)
    module, kwargs = _module_and_kwargs(model_or_module, apply_kwargs)
    stats: list[BNStat] = []
    paths: list[tuple[str, ...]] = []
    convs: list[ConvStat] = []
    conv_paths: list[tuple[str, ...]] = []
    order: list[str] = []

    def grab(next_fun, args, kw, context):
        mod = context.module
        if context.method_name != "__call__":
            return next_fun(*args, **kw)
        if patch is not None and isinstance(mod, CONV_TYPES):
            x = args[0] if args else next(iter(kw.values()))
            convs.append(conv_input_stat(jlayers.to_nhwc(mod, x), *patch, mask_N))
            conv_paths.append(tuple(mod.scope.path))
            order.append("conv")
            return next_fun(*args, **kw)
        if not isinstance(mod, nn.BatchNorm):
            return next_fun(*args, **kw)
        bn = mod
        x = args[0]
        feat, red = _feature_axes(bn.axis, x.ndim)
        mean, var = _moments(x, red)
        path = tuple(bn.scope.path)
        running = _lookup(variables["batch_stats"], path)
        stats.append(BNStat(mean, var, running["mean"], running["var"]))
        paths.append(path)
        order.append("bn")
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
    return Captured(logits, stats, paths, convs, conv_paths, bool(order) and order[0] == "conv")


# NNX has no method interceptor: the capture swaps nnx.BatchNorm.__call__ (and
# nnx.Conv.__call__) for the length of one Python-level forward pass (trace time under jit).
# The lock keeps two threads from tracing with each other's wrappers.
_NNX_LOCK = threading.RLock()


@contextlib.contextmanager
def _nnx_wrapped(cls: type, wrapper: Callable) -> Any:
    original = cls.__call__
    cls.__call__ = wrapper(original)
    try:
        yield
    finally:
        cls.__call__ = original


def _capture_nnx(model: nnx.Module, state: Any, x_NHWC: jax.Array, apply_kwargs: dict | None,
                 patch: tuple[int, bool] | None, mask_N: jax.Array | None = None) -> Captured:
    """`capture` for a flax.nnx model: same statistics, BN forced to running averages,
    Dropout deterministic; `state` (an nnx.State, e.g. vmapped or perturbed) replaces the
    model's own when given."""
    if state is not None:
        model = nnx.merge(nnx.graphdef(model), state)
    if any(isinstance(m, nnx.Dropout) for _, m in nnx.iter_modules(model)):
        model = nnx.view(model, only=nnx.Dropout, deterministic=True)
    _, kwargs = _module_and_kwargs(model, apply_kwargs)
    names = {id(m): tuple(str(p) for p in path) for path, m in nnx.iter_modules(model)}
    stats: list[BNStat] = []
    paths: list[tuple[str, ...]] = []
    convs: list[ConvStat] = []
    conv_paths: list[tuple[str, ...]] = []
    order: list[str] = []

    def wrap_bn(original):
        def call(self, x, use_running_average=None, *, mask=None):
            if mask is not None:
                raise NotImplementedError("statistics matching of a masked nnx.BatchNorm")
            _, red = _feature_axes(self.axis, x.ndim)
            mean, var = _moments(x, red)
            stats.append(BNStat(mean, var, self.mean[...], self.var[...]))
            paths.append(names.get(id(self), ("?",)))
            order.append("bn")
            return original(self, x, use_running_average=True)  # inference mode
        return call

    def wrap_conv(original):
        def call(self, inputs, *args, **kw):
            convs.append(conv_input_stat(inputs, *patch, mask_N))
            conv_paths.append(names.get(id(self), ("?",)))
            order.append("conv")
            return original(self, inputs, *args, **kw)
        return call

    with _NNX_LOCK, contextlib.ExitStack() as stack:
        stack.enter_context(_nnx_wrapped(nnx.BatchNorm, wrap_bn))
        if patch is not None:
            stack.enter_context(_nnx_wrapped(nnx.Conv, wrap_conv))
        logits = model(x_NHWC, **kwargs)
    return Captured(logits, stats, paths, convs, conv_paths, bool(order) and order[0] == "conv")


def bn_input_stats(model_or_module: Model | nn.Module | nnx.Module, variables: Any,
                   x_NHWC: jax.Array, apply_kwargs: dict | None = None
                   ) -> tuple[jax.Array, list[BNStat]]:
    """Inference logits and, for every BatchNorm call in order, its input statistics and
    running statistics (Linen: matched by scope path in `variables['batch_stats']`; NNX:
    the layer's own `mean` / `var`, `variables` = an nnx.State or None).

    `apply_kwargs` defaults to {'train': False} when the module's `__call__` takes `train`.
    """
    cap = capture(model_or_module, variables, x_NHWC, apply_kwargs)
    if not cap.bn:
        raise ValueError("the model called no BatchNorm (flax.linen.BatchNorm or "
                         "flax.nnx.BatchNorm): statistics matching needs a teacher with BN "
                         "layers (e.g. convnet_bn, resnet18)")
    return cap.logits, cap.bn


def bn_layer_paths(model_or_module: Model | nn.Module | nnx.Module, variables: Any,
                   x_NHWC: jax.Array, apply_kwargs: dict | None = None) -> list[str]:
    """Scope paths ('layer1_0/bn1') of the BN calls, in the order `bn_input_stats` lists them."""
    return _paths(model_or_module, variables, x_NHWC, apply_kwargs, None, "bn_paths")


def _paths(model, variables, x_NHWC, apply_kwargs, patch, field: str) -> list[str]:
    found: list[tuple[str, ...]] = []

    def trace(v, x):
        cap = capture(model, v, x, apply_kwargs, patch)
        found.extend(getattr(cap, field))
        return cap.logits

    jax.eval_shape(trace, variables, x_NHWC)  # shapes only: nothing is computed
    return ["/".join(p) for p in found]


def conv_input_stats(model_or_module: Model | nn.Module | nnx.Module, variables: Any,
                     x_NHWC: jax.Array, patch_size: int = 16, per_channel: bool = False,
                     apply_kwargs: dict | None = None) -> tuple[jax.Array, list[ConvStat]]:
    """Inference logits and the input statistics of every convolution call, in call order
    (Linen: modules of `CONV_TYPES`; NNX: `nnx.Conv`)."""
    cap = capture(model_or_module, variables, x_NHWC, apply_kwargs, (patch_size, per_channel))
    if not cap.conv:
        raise ValueError("the model called no convolution (flax.linen.Conv, jaxdd Conv3x3 or "
                         "flax.nnx.Conv): G-VBSM conv statistics need a convolutional teacher")
    return cap.logits, cap.conv


def conv_layer_paths(model_or_module: Model | nn.Module | nnx.Module, variables: Any,
                     x_NHWC: jax.Array, apply_kwargs: dict | None = None) -> list[str]:
    """Scope paths of the convolution calls, in the order `conv_input_stats` lists them."""
    return _paths(model_or_module, variables, x_NHWC, apply_kwargs, (16, False), "conv_paths")
