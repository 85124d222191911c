"""ConvNet-D{3,4,5}: the standard student of dataset distillation.

depth x [conv3x3 -> norm -> ReLU -> avgpool2] -> flatten -> linear (spec section 7).
Grey 28 px inputs are zero-padded to 32 by a first-layer padding of 3, as the references.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.models.layers import (CHANNEL_MAJOR_IMPLS, BatchNorm, Conv3x3, InstanceNorm, TorchDense,
                                 avg_pool_2x2, avg_pool_2x2_cm)

NORMS = ("instance", "batch", "none")


class ConvNet(nn.Module):
    num_classes: int
    width: int = 128
    depth: int = 3
    norm: str = "instance"      # instance | batch | none
    # im2col | im2col_cm | lax: same parameters, same function. im2col_cm keeps activations
    # channel-major (C, N, H, W) between input and classifier (fastest on XLA:CPU for the MTT
    # inner loop); its intermediate module inputs are then channel-major too.
    conv_impl: str = "im2col"

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        cm = self.conv_impl in CHANNEL_MAJOR_IMPLS
        if cm and self.norm == "batch":
            raise ValueError("conv_impl 'im2col_cm' supports norm 'instance' or 'none'; use 'im2col' with BatchNorm")
        x = jnp.transpose(x_NHWC, (3, 0, 1, 2)) if cm else x_NHWC
        for d in range(self.depth):
            pad = 3 if (d == 0 and x_NHWC.shape[1] == 28) else 1
            x = Conv3x3(self.width, padding=pad, impl=self.conv_impl)(x)
            if self.norm == "instance":
                x = InstanceNorm(channel_major=cm)(x)
            elif self.norm == "batch":
                # PyTorch momentum 0.1 == Flax momentum 0.9; running variance unbiased as
                # PyTorch's (layers.BatchNorm).
                x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5)(x)
            x = nn.relu(x)
            x = avg_pool_2x2_cm(x) if cm else avg_pool_2x2(x)
        if cm:  # back to NHWC so the flatten order (and the classifier's weights) is layout-free
            x = jnp.transpose(x, (1, 2, 3, 0))
        x = x.reshape(x.shape[0], -1)
        return TorchDense(self.num_classes)(x)
