"""The functional core shared by every method, in the spirit of optax.

A method is a `Distiller`: two pure, jittable functions with all state passed in and out.
The driver (`jaxdd.run`) is the only place that loops, logs, checkpoints and talks to the
host; research code can call `init`/`step` directly, `jax.jit` them, vmap or shard them.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax

PRNGKey = jax.Array
PyTree = Any
Metrics = dict[str, jax.Array]


class SynState(NamedTuple):
    """The part of every method's state that *is* the distilled set.

    x_syn_NHWC: synthetic images in model (preprocessed) space.
    y_syn: hard labels (N,) int32, or label logits (N, K) when labels are learned/soft.
    log_lr: log of the learned evaluation/inner step size (scalar), or None.
    """

    x_syn_NHWC: jax.Array
    y_syn: jax.Array
    log_lr: jax.Array | None


class Distiller(NamedTuple):
    """init(key, *args) -> state ; step(state, batch, key) -> (state, metrics).

    `state` is any pytree whose field `syn` (a `SynState`) holds the distilled set, so the
    driver can export an artefact from any method without knowing it.
    """

    init: Callable[..., PyTree]
    step: Callable[[PyTree, Any, PRNGKey], tuple[PyTree, Metrics]]
