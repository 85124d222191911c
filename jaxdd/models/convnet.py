"""ConvNet-D{3,4,5}: the standard student of dataset distillation.

depth x [conv3x3 -> norm -> ReLU -> avgpool2] -> flatten -> linear (spec section 7).
Grey 28 px inputs are zero-padded to 32 by a first-layer padding of 3, as the references.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxdd.models.layers import Conv3x3, InstanceNorm, TorchDense, avg_pool_2x2

NORMS = ("instance", "batch", "none")


class ConvNet(nn.Module):
    num_classes: int
    width: int = 128
    depth: int = 3
    norm: str = "instance"      # instance | batch | none
    conv_impl: str = "im2col"   # im2col | lax (same parameters, same function)

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        x = x_NHWC
        for d in range(self.depth):
            pad = 3 if (d == 0 and x.shape[1] == 28) else 1
            x = Conv3x3(self.width, padding=pad, impl=self.conv_impl)(x)
            if self.norm == "instance":
                x = InstanceNorm()(x)
            elif self.norm == "batch":
                # PyTorch momentum 0.1 == Flax momentum 0.9.
                x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
            x = avg_pool_2x2(x)
        x = x.reshape(x.shape[0], -1)
        return TorchDense(self.num_classes)(x)
