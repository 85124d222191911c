"""The functional core shared by every method, in the spirit of optax.

A method is a `Distiller`: two pure, jittable functions with all state passed in and out
(`InitFn`, `StepFn`, as optax's `GradientTransformation` pairs `init` and `update`). The
driver (`jaxdd.run`) is the only place that loops, logs, checkpoints and talks to the host;
research code can call `init`/`step` directly, `jax.jit` them, vmap or shard them.

`skip_nonfinite` (after `optax.apply_if_finite`) wraps any Distiller so that a step whose
loss or new state holds NaN/inf leaves the state unchanged and reports `nonfinite = 1`; the
driver applies it to every method, so no method checks finiteness itself.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

import chex
import jax
import jax.numpy as jnp

from jaxdd.tree import tree_all_finite

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


class InitFn(Protocol):
    """init(key, x_init_NHWC, y_init) -> state, a pytree with a `syn: SynState` field."""

    def __call__(self, key: PRNGKey, x_init_NHWC: jax.Array, y_init: jax.Array) -> PyTree:
        ...


class StepFn(Protocol):
    """step(state, batch, key) -> (state, metrics); `batch` is the method's input (an expert
    segment, real images, nothing), `metrics` a dict of scalars with at least `loss`."""

    def __call__(self, state: PyTree, batch: Any, key: PRNGKey) -> tuple[PyTree, Metrics]:
        ...


class Distiller(NamedTuple):
    """init(key, x_init_NHWC, y_init) -> state ; step(state, batch, key) -> (state, metrics).

    `state` is any pytree whose field `syn` (a `SynState`) holds the distilled set, so the
    driver can export an artefact from any method without knowing it.
    """

    init: InitFn
    step: StepFn


def check_init(x_init_NHWC: jax.Array, y_init: jax.Array) -> None:
    """chex checks at every Distiller's `init`: NHWC images and one label (class id, or a
    row of logits) per image. Static shapes only, so it also holds under jit."""
    chex.assert_rank(x_init_NHWC, 4)
    chex.assert_rank(y_init, {1, 2})
    chex.assert_equal_shape_prefix([x_init_NHWC, y_init], 1)


def step_keys(key: PRNGKey, t: jax.Array | int) -> tuple[PRNGKey, PRNGKey]:
    """(batch key, step key) of iteration t (1-based) under run key `key`: the one key
    schedule of the driver, so a loop written by hand reproduces a driven run exactly."""
    k_batch, k_step = jax.random.split(jax.random.fold_in(key, t))
    return k_batch, k_step


def skip_nonfinite(distiller: Distiller) -> Distiller:
    """The same Distiller, whose step keeps the old state when the loss or any leaf of the
    new state is NaN/inf. metrics["nonfinite"] is 1 for a skipped step, else 0."""

    def step(state: PyTree, batch: Any, key: PRNGKey) -> tuple[PyTree, Metrics]:
        new, metrics = distiller.step(state, batch, key)
        ok = tree_all_finite(new) & tree_all_finite(metrics.get("loss", 0.0))
        kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, state)
        return kept, {**metrics, "nonfinite": (~ok).astype(jnp.int32)}

    return Distiller(distiller.init, step)
