"""The one compiled training loop: "SGD on a network for k steps".

Used by evaluation students, experts, teachers and relabel students alike (one minibatch
update, `make_update`, with a pluggable loss). A run is one jitted `lax.scan` over epochs
(then over the batches of an epoch), so K runs with different seeds are a `jax.vmap` over
keys and cost far less than K separate runs.
"""

from jaxdd.train.loop import (LOSSES, TrainConfig, TrainState, accuracy, class_targets,
                              make_update, soft_cross_entropy, squared_error, steps_per_epoch,
                              train_epochs, train_init, train_network)

__all__ = ["TrainConfig", "TrainState", "train_init", "train_epochs", "train_network",
           "make_update", "accuracy", "soft_cross_entropy", "squared_error", "class_targets",
           "LOSSES", "steps_per_epoch"]
