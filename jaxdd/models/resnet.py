"""ResNets with BatchNorm in torchvision's layout: ResNet-18 (BasicBlock) and ResNet-50
(Bottleneck, v1.5), with the CIFAR stem or the ImageNet stem.

Stems: "cifar" = 3x3 stride-1 conv, no max-pool (the statistics-matching teacher of the
32/64 px references); "imagenet" = torchvision's 7x7 stride-2 conv (pad 3) + BN + ReLU +
3x3 stride-2 max-pool (pad 1, padded with -inf as PyTorch). Both end in a global average
pool, so a net accepts any H x W; with the ImageNet stem use H, W >= 32 (the maps are
1x1 by the last stage at 32 px; smaller inputs run but see no more than one pixel there).

`dtype` is the compute dtype (None = float32): bfloat16 on GPU/TPU keeps the parameters
and BN statistics float32 and returns float32 logits.

Variants of DC/DSA/DM's `networks.py` (VICO-UoE/DatasetCondensation), which the
cross-architecture evaluations of MTT, DATM and DataDAM use: `norm="instance"` is its
`ResNet18` (GroupNorm(C, C) everywhere BN is; its `ResNet18BN` is the default "batch"), and
`downsample="avgpool"` its `ResNet18BN_AP` / `ResNet18_AP`: every stride-2 conv becomes a
stride-1 conv followed by a 2x2 average pool (the shortcut: 1x1 conv -> pool -> norm), and the
classifier reads the flattened last feature map (512 x 4 x 4 at 32 px, 512 x 3 x 3 at 28 px)
instead of its average.

Submodules keep Flax's automatic names (Conv_0, BatchNorm_0, BasicBlock_3, Dense_0, ...);
`jaxdd.models.convert` maps them to torchvision's state-dict keys (BN, stride downsampling).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.models.layers import InstanceNorm, avg_pool_2x2, loop_safe_conv, torch_default_init

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's
STEMS = ("cifar", "imagenet")
NORMS = ("batch", "instance")
DOWNSAMPLES = ("stride", "avgpool")


def _bn(train: bool, dtype: Any, norm: str = "batch") -> nn.Module:
    if norm == "instance":  # the references' GroupNorm(C, C): no running statistics
        return InstanceNorm()
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        dtype=dtype, param_dtype=jnp.float32)


def _conv(features: int, k: int, stride: int, dtype: Any) -> nn.Conv:
    """k x k conv, symmetric padding k // 2 (as torchvision's 1x1 / 3x3 / 7x7), no bias."""
    return nn.Conv(features, (k, k), (stride, stride), padding=k // 2, use_bias=False,
                   kernel_init=_conv_init, dtype=dtype, param_dtype=jnp.float32,
                   conv_general_dilated=loop_safe_conv)


class BasicBlock(nn.Module):
    """Two 3x3 convs; a 1x1 conv + BN shortcut when the shape changes (expansion 1)."""

    features: int
    stride: int = 1
    dtype: Any = None
    norm: str = "batch"           # one of NORMS
    downsample: str = "stride"    # one of DOWNSAMPLES
    expansion = 1
    num_convs = 2  # convs before the shortcut's (torchvision conv1, conv2; downsample.0)

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        bn = lambda: _bn(train, self.dtype, self.norm)  # noqa: E731
        pool = self.downsample == "avgpool" and self.stride != 1
        y = _conv(self.features, 3, 1 if pool else self.stride, self.dtype)(x)
        y = nn.relu(bn()(y))
        y = avg_pool_2x2(y) if pool else y
        y = bn()(_conv(self.features, 3, 1, self.dtype)(y))
        return _shortcut_sum(x, y, self.stride, bn, self.dtype, pool)


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck: 1x1 -> 3x3 (carries the stride) -> 1x1 (x4 channels)."""

    features: int
    stride: int = 1
    dtype: Any = None
    norm: str = "batch"
    downsample: str = "stride"    # "stride" only
    expansion = 4
    num_convs = 3

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        if self.downsample != "stride":
            raise ValueError("Bottleneck blocks support downsample='stride' only")
        bn = lambda: _bn(train, self.dtype, self.norm)  # noqa: E731
        y = nn.relu(bn()(_conv(self.features, 1, 1, self.dtype)(x)))
        y = nn.relu(bn()(_conv(self.features, 3, self.stride, self.dtype)(y)))
        y = bn()(_conv(self.features * 4, 1, 1, self.dtype)(y))
        return _shortcut_sum(x, y, self.stride, bn, self.dtype)


def _shortcut_sum(x: jax.Array, y: jax.Array, stride: int, bn, dtype: Any,
                  pool: bool = False) -> jax.Array:
    """relu(shortcut(x) + y): identity, or 1x1 conv + BN (torchvision's `downsample`) when
    the stride or the channel count changes; with `pool`, 1x1 conv -> 2x2 average pool -> BN
    (DC's `_AP` blocks). Called inside the block's compact scope."""
    if stride != 1 or x.shape[-1] != y.shape[-1]:
        x = _conv(y.shape[-1], 1, 1 if pool else stride, dtype)(x)
        x = bn()(avg_pool_2x2(x) if pool else x)
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
    norm: str = "batch"           # one of NORMS (instance: DC's default ResNet18)
    downsample: str = "stride"    # one of DOWNSAMPLES (avgpool: DC's ResNet18[BN]_AP)

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        if self.norm not in NORMS or self.downsample not in DOWNSAMPLES:
            raise ValueError(f"ResNet norm {self.norm!r} / downsample {self.downsample!r}; use "
                             f"one of {NORMS} / {DOWNSAMPLES}")
        if self.stem == "imagenet":
            x = _conv(self.width, 7, 2, self.dtype)(x_NHWC)
            x = nn.relu(_bn(train, self.dtype, self.norm)(x))
            # reduce_window pads max-pool windows with -inf, as torch.nn.MaxPool2d(3, 2, 1).
            x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        else:
            x = _conv(self.width, 3, 1, self.dtype)(x_NHWC)
            x = nn.relu(_bn(train, self.dtype, self.norm)(x))
        for i, n_blocks in enumerate(self.stage_sizes):
            for b in range(n_blocks):
                stride = 2 if (i > 0 and b == 0) else 1
                x = self.block(self.width * 2**i, stride, self.dtype, norm=self.norm,
                               downsample=self.downsample)(x, train)
        if self.downsample == "avgpool":  # DC's _AP classifier reads the whole last map
            if x.shape[1] < 1 or x.shape[2] < 1:
                raise ValueError("ResNet-AP: the input is too small (pooled to nothing); use "
                                 "28 or 32 px images")
            feat_NxD = x.reshape(x.shape[0], -1)
        else:
            feat_NxD = x.mean(axis=(1, 2))
        init = ({"kernel_init": torch_default_init(feat_NxD.shape[-1]),
                 "bias_init": torch_default_init(feat_NxD.shape[-1])}
                if self.torch_fc_init else {})
        logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=jnp.float32,
                          **init)(feat_NxD)
        return logits.astype(jnp.float32)
