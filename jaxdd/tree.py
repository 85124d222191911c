"""Pytree numerics that `optax.tree` lacks (norms, vdot, where: use `optax.tree`).

`tree_all_finite`: one boolean for "every leaf is finite" (the NaN/Inf guards of the
methods); `safe_norm`: an L2 norm whose gradient at 0 is 0, not NaN.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["tree_all_finite", "safe_norm"]


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
