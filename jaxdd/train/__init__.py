"""The one compiled training loop: "SGD on a network for k steps".

Used by evaluation students, experts and teachers alike. A run is one jitted `lax.scan`
over epochs (then over the batches of an epoch), so K runs with different seeds are a
`jax.vmap` over keys and cost far less than K separate runs.
"""

from jaxdd.train.loop import (TrainConfig, TrainState, accuracy, soft_cross_entropy,
                              steps_per_epoch, train_epochs, train_init, train_network)

__all__ = ["TrainConfig", "TrainState", "train_init", "train_epochs", "train_network",
           "accuracy", "soft_cross_entropy", "steps_per_epoch"]
