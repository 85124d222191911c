"""ResNet-18 with the CIFAR stem (3x3 stride-1 conv, no max-pool) and BatchNorm.

Used as the statistics-matching teacher and for cross-architecture evaluation.
"""

from __future__ import annotations

import flax.linen as nn
import jax

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")  # torchvision's


def _bn(train: bool) -> nn.BatchNorm:
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)


class BasicBlock(nn.Module):
    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        conv = lambda f, k, s: nn.Conv(f, (k, k), (s, s), padding=k // 2, use_bias=False,
                                       kernel_init=_conv_init)
        y = nn.relu(_bn(train)(conv(self.features, 3, self.stride)(x)))
        y = _bn(train)(conv(self.features, 3, 1)(y))
        if self.stride != 1 or x.shape[-1] != self.features:
            x = _bn(train)(conv(self.features, 1, self.stride)(x))
        return nn.relu(x + y)


class ResNet18(nn.Module):
    num_classes: int
    width: int = 64

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        x = nn.Conv(self.width, (3, 3), padding=1, use_bias=False, kernel_init=_conv_init)(x_NHWC)
        x = nn.relu(_bn(train)(x))
        for i, mult in enumerate((1, 2, 4, 8)):
            for b in range(2):
                stride = 2 if (i > 0 and b == 0) else 1
                x = BasicBlock(self.width * mult, stride)(x, train)
        x = x.mean(axis=(1, 2))
        return nn.Dense(self.num_classes)(x)
