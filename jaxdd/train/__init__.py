"""The one compiled training loop: "SGD on a network for k steps".

Used by evaluation students, experts and teachers alike. The whole run is one jitted
function (`lax.scan` over epochs, then over the batches of an epoch), so that K runs with
different seeds are a `jax.vmap` over keys and cost far less than K runs.
"""

from jaxdd.train.loop import TrainConfig, accuracy, soft_cross_entropy, train_network

__all__ = ["TrainConfig", "train_network", "accuracy", "soft_cross_entropy"]
