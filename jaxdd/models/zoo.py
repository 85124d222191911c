"""The cross-architecture zoo of the distillation references, as Flax linen modules.

Layouts (channel counts, kernels, paddings, norms, pooling) follow the references'
PyTorch definitions; the modules are jaxdd's own:
- LeNet, AlexNet (+BN), VGG-11 (instance norm / BN): DC/DSA/DM's `networks.py`
  (VICO-UoE/DatasetCondensation), the pool MTT, DATM and DataDAM evaluate with.
- MobileNetV2, WRN-D-W, ShuffleNetV2: the CIFAR models of G-VBSM's teachers
  (shaoshitong/G_VBSM_Dataset_Condensation `models/`, from RepDistiller).
(The ResNet-18 variants, AP included, are `jaxdd.models.resnet.ResNet`.)

Grey 28 px inputs (MNIST, Fashion-MNIST): the DC references add 2 pixels of padding to the
first convolution when `channel == 1` (LeNet 0 -> 2, AlexNet 2 -> 4, VGG 1 -> 3), so a
28 px image is processed like a 32 px one; jaxdd adds those 2 pixels when the input is
28 px, which is the same for every dataset the references run. The G-VBSM models hard-code
3 input channels and (MobileNetV2, WRN's 8x8 average pool) 32 px; jaxdd takes the input's
channels and pools globally, which is the reference's function at 32 px and makes 28 px
inputs work without resizing.

Initialisation follows each reference: PyTorch's default (U(+-1/sqrt(fan_in)) for weights
and biases) for the DC models and ShuffleNetV2; N(0, 2 / (k^2 * out)) convolutions for
MobileNetV2 and WRN (their `_initialize_weights`), BN weight 1 and bias 0 everywhere.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.models.layers import InstanceNorm, TorchDense, loop_safe_conv, torch_default_init

_fan_out_normal = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
NORMS = ("instance", "batch", "none")


def grey28_pad(x_NHWC: jax.Array) -> int:
    """Extra first-layer padding: 2 for 28 px inputs (the references' `channel == 1` case)."""
    return 2 if x_NHWC.shape[1] == 28 else 0


def norm_layer(norm: str, train: bool) -> nn.Module | None:
    """instance: GroupNorm(C, C) of the references; batch: BatchNorm2d (PyTorch momentum 0.1 ==
    Flax 0.9, eps 1e-5); none: no layer."""
    if norm == "instance":
        return InstanceNorm()
    if norm == "batch":
        return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)
    if norm == "none":
        return None
    raise ValueError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")


def _apply_norm(norm: str, train: bool, x: jax.Array) -> jax.Array:
    layer = norm_layer(norm, train)
    return x if layer is None else layer(x)


def torch_conv(features: int, k: int, in_features: int, stride: int = 1, padding: int = 0,
               groups: int = 1, bias: bool = True) -> nn.Conv:
    """A conv with PyTorch's default init (fan_in = k^2 * in / groups)."""
    init = torch_default_init(k * k * in_features // groups)
    return nn.Conv(features, (k, k), (stride, stride), padding=padding, feature_group_count=groups,
                   use_bias=bias, kernel_init=init, bias_init=init,
                   conv_general_dilated=loop_safe_conv)


def he_conv(features: int, k: int, stride: int = 1, padding: int = 0, groups: int = 1) -> nn.Conv:
    """A bias-free conv with the N(0, 2 / (k^2 * out)) init of MobileNetV2 / WRN."""
    return nn.Conv(features, (k, k), (stride, stride), padding=padding, feature_group_count=groups,
                   use_bias=False, kernel_init=_fan_out_normal,
                   conv_general_dilated=loop_safe_conv)


def _bn(train: bool) -> nn.Module:
    return norm_layer("batch", train)


def max_pool_2x2(x_NHWC: jax.Array) -> jax.Array:
    """MaxPool2d(2, 2): floors odd sizes as PyTorch."""
    return nn.max_pool(x_NHWC, (2, 2), (2, 2))


def flatten_checked(x_NHWC: jax.Array, name: str) -> jax.Array:
    """Flatten (N, H, W, C) for a classifier; refuse an input the net pooled to nothing."""
    if x_NHWC.shape[1] < 1 or x_NHWC.shape[2] < 1:
        raise ValueError(f"{name}: the input is too small for this network (its feature map "
                         f"is {x_NHWC.shape[1]}x{x_NHWC.shape[2]}); use 28 or 32 px images")
    return x_NHWC.reshape(x_NHWC.shape[0], -1)


class LeNet(nn.Module):
    """conv5(6) -> ReLU -> max2 -> conv5(16) -> ReLU -> max2 -> fc 120 -> fc 84 -> fc K."""

    num_classes: int
    norm: str = "none"

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        cin = x_NHWC.shape[-1]
        x = max_pool_2x2(nn.relu(torch_conv(6, 5, cin, padding=grey28_pad(x_NHWC))(x_NHWC)))
        x = max_pool_2x2(nn.relu(torch_conv(16, 5, 6)(x)))
        x = flatten_checked(x, "LeNet")   # 16 x 5 x 5 at 28 and 32 px
        x = nn.relu(TorchDense(120)(x))
        x = nn.relu(TorchDense(84)(x))
        return TorchDense(self.num_classes)(x)


class AlexNet(nn.Module):
    """DC's CIFAR AlexNet: conv5(128) max2, conv5(192) max2, conv3(256), conv3(192), conv3(192)
    max2, fc K (from 192 x 4 x 4); `norm="batch"` is DC's AlexNetBN."""

    num_classes: int
    norm: str = "none"

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        x, cin = x_NHWC, x_NHWC.shape[-1]
        # (features, kernel, padding, max-pool after)
        for i, (c, k, p, pool) in enumerate(((128, 5, 2, True), (192, 5, 2, True), (256, 3, 1, False),
                                             (192, 3, 1, False), (192, 3, 1, True))):
            pad = p + (grey28_pad(x_NHWC) if i == 0 else 0)
            x = nn.relu(_apply_norm(self.norm, train, torch_conv(c, k, cin, padding=pad)(x)))
            x = max_pool_2x2(x) if pool else x
            cin = c
        return TorchDense(self.num_classes)(flatten_checked(x, "AlexNet"))


VGG_CFGS = {"vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")}


class VGG(nn.Module):
    """DC's VGG: [conv3 -> norm -> ReLU | max2] per `cfg`, flatten, fc K. DC's default norm is
    instance norm (`VGG11`); "batch" is its `VGG11BN`."""

    num_classes: int
    cfg: Sequence[int | str] = VGG_CFGS["vgg11"]
    norm: str = "instance"

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        x, cin = x_NHWC, x_NHWC.shape[-1]
        for i, c in enumerate(self.cfg):
            if c == "M":
                x = max_pool_2x2(x)
                continue
            pad = 1 + (grey28_pad(x_NHWC) if i == 0 else 0)
            x = nn.relu(_apply_norm(self.norm, train, torch_conv(c, 3, cin, padding=pad)(x)))
            cin = c
        # The reference's trailing AvgPool2d(1, 1) is the identity; 1 x 1 x 512 at 28/32 px.
        return TorchDense(self.num_classes)(flatten_checked(x, "VGG"))


class InvertedResidual(nn.Module):
    """1x1 expand (x t) -> BN -> ReLU -> 3x3 depthwise (stride) -> BN -> ReLU -> 1x1 -> BN, plus
    the input when the shape is kept. The 1x1 expansion is there for t = 1 too (as G-VBSM's)."""

    features: int
    stride: int
    expand: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        hidden = x.shape[-1] * self.expand
        y = nn.relu(_bn(train)(he_conv(hidden, 1)(x)))
        y = nn.relu(_bn(train)(he_conv(hidden, 3, self.stride, 1, groups=hidden)(y)))
        y = _bn(train)(he_conv(self.features, 1)(y))
        return x + y if self.stride == 1 and x.shape[-1] == self.features else y


# (expansion t, channels c, blocks n, first stride s) of G-VBSM's CIFAR MobileNetV2.
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                      (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(nn.Module):
    """G-VBSM's CIFAR MobileNetV2 (RepDistiller's): 3x3/2 stem of 32w, the seven inverted-
    residual stages, 1x1 conv to 1280 (1280w when w > 1), global average pool, linear.
    `width` 0.5 is G-VBSM's `MobileNetV2` teacher (`mobile_half`)."""

    num_classes: int
    width: float = 1.0
    norm: str = "batch"

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        x = nn.relu(_bn(train)(he_conv(int(32 * self.width), 3, 2, 1)(x_NHWC)))
        for t, c, n, s in MOBILENETV2_STAGES:
            for b in range(n):
                x = InvertedResidual(int(c * self.width), s if b == 0 else 1, t)(x, train)
        last = int(1280 * self.width) if self.width > 1.0 else 1280
        x = nn.relu(_bn(train)(he_conv(last, 1)(x)))
        feat_NxD = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes, kernel_init=nn.initializers.normal(0.01),
                        bias_init=nn.initializers.zeros)(feat_NxD)


class WideBasic(nn.Module):
    """WRN's pre-activation block: BN -> ReLU -> conv3 (stride) -> BN -> ReLU -> conv3, added
    to the input, or to a 1x1 conv of the pre-activated input when the width changes."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        pre = nn.relu(_bn(train)(x))
        y = nn.relu(_bn(train)(he_conv(self.features, 3, self.stride, 1)(pre)))
        y = he_conv(self.features, 3, 1, 1)(y)
        if x.shape[-1] == self.features:
            return x + y
        return he_conv(self.features, 1, self.stride)(pre) + y


class WideResNet(nn.Module):
    """WRN-depth-width (G-VBSM's `WRN_16_2`): conv3(16), three groups of (depth - 4) / 6 blocks
    of 16w, 32w, 64w channels (strides 1, 2, 2), BN -> ReLU, global average pool, linear."""

    num_classes: int
    depth: int = 16
    widen: int = 2
    norm: str = "batch"

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        if (self.depth - 4) % 6:
            raise ValueError(f"WRN depth {self.depth} must be 6n + 4 (16, 22, 28, 40, ...)")
        n = (self.depth - 4) // 6
        x = he_conv(16, 3, 1, 1)(x_NHWC)
        for g, stride in enumerate((1, 2, 2)):
            for b in range(n):
                x = WideBasic(16 * 2**g * self.widen, stride if b == 0 else 1)(x, train)
        feat_NxD = nn.relu(_bn(train)(x)).mean(axis=(1, 2))
        init = torch_default_init(feat_NxD.shape[-1])
        return nn.Dense(self.num_classes, kernel_init=init, bias_init=nn.initializers.zeros)(feat_NxD)


def channel_shuffle(x_NHWC: jax.Array, groups: int = 2) -> jax.Array:
    """ShuffleNet's shuffle: channel g * (C / groups) + i moves to i * groups + g."""
    n, h, w, c = x_NHWC.shape
    return x_NHWC.reshape(n, h, w, groups, c // groups).swapaxes(3, 4).reshape(n, h, w, c)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit. stride 1: the second half of the channels through 1x1 -> BN -> ReLU ->
    dw3x3 -> BN -> 1x1 -> BN -> ReLU, the first half kept. stride 2 (`DownBlock`): both
    branches see all channels: dw3x3/2 -> BN -> 1x1 -> BN -> ReLU, and 1x1 -> BN -> ReLU ->
    dw3x3/2 -> BN -> 1x1 -> BN -> ReLU, to features/2 each. Then concatenate and shuffle."""

    features: int
    stride: int

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cin = x.shape[-1]
        if self.stride == 1:
            c = cin // 2
            keep, y = x[..., :c], x[..., c:]
            cy = y.shape[-1]
            y = nn.relu(_bn(train)(torch_conv(cy, 1, cy, bias=False)(y)))
            y = _bn(train)(torch_conv(cy, 3, cy, padding=1, groups=cy, bias=False)(y))
            y = nn.relu(_bn(train)(torch_conv(cy, 1, cy, bias=False)(y)))
            return channel_shuffle(jnp.concatenate([keep, y], axis=-1))
        mid = self.features // 2
        left = _bn(train)(torch_conv(cin, 3, cin, 2, 1, groups=cin, bias=False)(x))
        left = nn.relu(_bn(train)(torch_conv(mid, 1, cin, bias=False)(left)))
        right = nn.relu(_bn(train)(torch_conv(mid, 1, cin, bias=False)(x)))
        right = _bn(train)(torch_conv(mid, 3, mid, 2, 1, groups=mid, bias=False)(right))
        right = nn.relu(_bn(train)(torch_conv(mid, 1, mid, bias=False)(right)))
        return channel_shuffle(jnp.concatenate([left, right], axis=-1))


# net size -> (stage channels, blocks after each stage's down-sampling unit, head channels)
SHUFFLENETV2_SIZES = {"0_5": ((48, 96, 192), (3, 7, 3), 1024),
                      "1_0": ((116, 232, 464), (3, 7, 3), 1024),
                      "1_5": ((176, 352, 704), (3, 7, 3), 1024),
                      "2_0": ((224, 488, 976), (3, 7, 3), 2048)}


class ShuffleNetV2(nn.Module):
    """The CIFAR ShuffleNetV2 of G-VBSM (RepDistiller's, from kuangliu/pytorch-cifar): 1x1 stem
    to 24 channels (no stride, no max-pool), three stages of one stride-2 unit + n units, 1x1
    conv head, BN -> ReLU, global average pool, linear. `size` "0_5" is G-VBSM's teacher."""

    num_classes: int
    size: str = "1_0"
    norm: str = "batch"

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        channels, blocks, head = SHUFFLENETV2_SIZES[self.size]
        x = nn.relu(_bn(train)(torch_conv(24, 1, x_NHWC.shape[-1], bias=False)(x_NHWC)))
        for c, n in zip(channels, blocks):
            x = ShuffleUnit(c, 2)(x, train)
            for _ in range(n):
                x = ShuffleUnit(c, 1)(x, train)
        x = nn.relu(_bn(train)(torch_conv(head, 1, x.shape[-1], bias=False)(x)))
        return TorchDense(self.num_classes)(x.mean(axis=(1, 2)))
