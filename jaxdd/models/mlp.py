"""A small MLP: the fastest model for tests and smoke runs."""

from __future__ import annotations

import flax.linen as nn
import jax

from jaxdd.models.layers import TorchDense


class MLP(nn.Module):
    num_classes: int
    width: int = 128
    depth: int = 2

    @nn.compact
    def __call__(self, x_NHWC: jax.Array, train: bool = False) -> jax.Array:
        x = x_NHWC.reshape(x_NHWC.shape[0], -1)
        for _ in range(self.depth):
            x = nn.relu(TorchDense(self.width)(x))
        return TorchDense(self.num_classes)(x)
