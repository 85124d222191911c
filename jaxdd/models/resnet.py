"""ResNets with BatchNorm in torchvision's layout: ResNet-18 (BasicBlock) and ResNet-50
(Bottleneck, v1.5), with the CIFAR stem or the ImageNet stem.

Stems: "cifar" = 3x3 stride-1 conv, no max-pool (the statistics-matching teacher of the
32/64 px references); "imagenet" = torchvision's 7x7 stride-2 conv (pad 3) + BN + ReLU +
3x3 stride-2 max-pool (pad 1, padded with -inf as PyTorch). Both end in a global average
pool, so a net accepts any H x W; with the ImageNet stem use H, W >= 32 (the maps are
1x1 by the last stage at 32 px; smaller inputs run but see no more than one pixel there).

`dtype` is the compute dtype (None = float32): bfloat16 on GPU/TPU keeps the parameters
and BN statistics float32 and returns float32 logits.

Submodules keep Flax's automatic names (Conv_0, BatchNorm_0, BasicBlock_3, Dense_0, ...);
`jaxdd.models.convert` maps them to torchvision's state-dict keys.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.models.layers import torch_default_init

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's
STEMS = ("cifar", "imagenet")


def _bn(train: bool, dtype: Any) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=dtype, param_dtype=jnp.float32)


def _conv(features: int, k: int, stride: int, dtype: Any) -> nn.Conv:
    """k x k conv, symmetric padding k // 2 (as torchvision's 1x1 / 3x3 / 7x7), no bias."""
    return nn.Conv(features, (k, k), (stride, stride), padding=k // 2, use_bias=False,
                   kernel_init=_conv_init, dtype=dtype, param_dtype=jnp.float32)


class BasicBlock(nn.Module):
    """Two 3x3 convs; a 1x1 conv + BN shortcut when the shape changes (expansion 1)."""

    features: int
    stride: int = 1
    dtype: Any = None
    expansion = 1
    num_convs = 2  # convs before the shortcut's (torchvision conv1, conv2; downsample.0)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = lambda: _bn(train, self.dtype)  # noqa: E731
        y = nn.relu(bn()(_conv(self.features, 3, self.stride, self.dtype)(x)))
        y = bn()(_conv(self.features, 3, 1, self.dtype)(y))
        return _shortcut_sum(x, y, self.stride, bn, self.dtype)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: 1x1 -> 3x3 (carries the stride) -> 1x1 (x4 channels)."""

    features: int
    stride: int = 1
    dtype: Any = None
    expansion = 4
    num_convs = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = lambda: _bn(train, self.dtype)  # noqa: E731
        y = nn.relu(bn()(_conv(self.features, 1, 1, self.dtype)(x)))
        y = nn.relu(bn()(_conv(self.features, 3, self.stride, self.dtype)(y)))
        y = bn()(_conv(self.features * 4, 1, 1, self.dtype)(y))
        return _shortcut_sum(x, y, self.stride, bn, self.dtype)


def _shortcut_sum(x: jax.Array, y: jax.Array, stride: int, bn, dtype: Any) -> jax.Array:
    """relu(shortcut(x) + y): identity, or 1x1 conv + BN (torchvision's `downsample`) when
    the stride or the channel count changes. Called inside the block's compact scope."""
    if stride != 1 or x.shape[-1] != y.shape[-1]:
        x = bn()(_conv(y.shape[-1], 1, stride, dtype)(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
    """A ResNet with four stages of `stage_sizes` blocks (widths width x 1, 2, 4, 8)."""

    stage_sizes: Sequence[int]
    block: type[nn.Module]        # BasicBlock | Bottleneck
    num_classes: int
    stem: str = "cifar"           # one of STEMS
    width: int = 64               # channels of the stem and of the first stage
    dtype: Any = None             # compute dtype (None: float32); params stay float32
    torch_fc_init: bool = False   # nn.Linear's init for the classifier (torchvision); the
                                  # CIFAR ResNet-18 keeps Flax's, as its teachers were trained

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        if self.stem == "imagenet":
            x = _conv(self.width, 7, 2, self.dtype)(x_NHWC)
            x = nn.relu(_bn(train, self.dtype)(x))
            # reduce_window pads max-pool windows with -inf, as torch.nn.MaxPool2d(3, 2, 1).
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        else:
            x = _conv(self.width, 3, 1, self.dtype)(x_NHWC)
            x = nn.relu(_bn(train, self.dtype)(x))
        for i, n_blocks in enumerate(self.stage_sizes):
            for b in range(n_blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                x = self.block(self.width * 2**i, stride, self.dtype)(x, train)
        feat_NxD = x.mean(axis=(1, 2))
        init = ({"kernel_init": torch_default_init(feat_NxD.shape[-1]),
                 "bias_init": torch_default_init(feat_NxD.shape[-1])}
                if self.torch_fc_init else {})
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                          **init)(feat_NxD)
        return logits.astype(jnp.float32)
