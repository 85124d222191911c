"""Pytree numerics that `optax.tree` lacks (norms, vdot, where: use `optax.tree`).

`tree_all_finite`: one boolean for "every leaf is finite" (the NaN/Inf guards of the
methods); `safe_norm`: an L2 norm whose gradient at 0 is 0, not NaN; `one_cpu_device` and
`map_when_vmapped_on_cpu`: where a batch of networks (classes, seeds) runs one at a time.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

__all__ = ["tree_all_finite", "safe_norm", "one_cpu_device", "map_when_vmapped_on_cpu"]


def tree_all_finite(tree: Any) -> jax.Array:
    """True (a bool scalar) when no leaf holds a NaN or an Inf; True for an empty tree."""
    leaves = [jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def safe_norm(x: jax.Array, axis: int | None = None, keepdims: bool = False) -> jax.Array:
    """L2 norm whose gradient at 0 is 0 (PyTorch's convention) instead of NaN.

    A dead unit (all-zero gradient row, all-zero attention map) is common with BN nets and
    ipc=1, and the statistics-matching norms start at 0 for a matched layer;
    `jnp.linalg.norm` would turn the whole update into NaN there. Exact value everywhere
    (double where).
    """
    sq = jnp.sum(x * x, axis=axis, keepdims=keepdims)
    pos = sq > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def one_cpu_device() -> bool:
    """True when programs run on one XLA:CPU device: there a batch of networks (classes,
    seeds) is faster one after another (`lax.map`) than as one vmapped program (smaller
    activations and patch matrices, and the lax.conv forward layout stays usable); with
    several devices the vmap stays, so GSPMD can split the batch over the mesh."""
    return jax.default_backend() == "cpu" and jax.device_count() == 1


def map_when_vmapped_on_cpu(fn: Callable) -> Callable:
    """`fn` itself, except that under `jax.vmap` on one CPU device it runs over the batch as a
    `lax.map`, its unbatched arguments closed over (not broadcast). Same values; for
    forward-only functions (evaluation): no derivative rule is defined."""
    @jax.custom_batching.custom_vmap
    def wrapped(*args):
        return fn(*args)

    @wrapped.def_vmap
    def _rule(axis_size, in_batched, *args):
        del axis_size
        if not one_cpu_device():
            axes = tuple(jax.tree.map(lambda b: 0 if b else None, b) for b in in_batched)
            return jax.vmap(fn, in_axes=axes)(*args), True
        leaves, treedef = jax.tree.flatten(list(args))
        flags = jax.tree.leaves(list(in_batched))

        def one(mapped):
            it = iter(mapped)
            return fn(*jax.tree.unflatten(treedef, [next(it) if b else x
                                                    for x, b in zip(leaves, flags)]))

        return jax.lax.map(one, [x for x, b in zip(leaves, flags) if b]), True

    return wrapped
