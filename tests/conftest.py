"""Shared test set-up: strict rank promotion, a persistent compile cache, tiny data."""

import os

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_compilation_cache_dir",
                  os.environ.get("JAXDD_CACHE_DIR", os.path.expanduser("~/.cache/jaxdd/xla-tests")))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def write_tiny_npz(path) -> str:
    """A learnable 3-class, 8x8x1 dataset as an npz: class = which quadrant is bright."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 3, n).astype(np.int32)
        x = rng.integers(0, 60, (n, 8, 8, 1)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 180
        return x, y

    xtr, ytr = make(300)
    xte, yte = make(90)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return str(path)


@pytest.fixture
def tiny_npz(tmp_path):
    return write_tiny_npz(tmp_path / "tiny.npz")


def snapshot(root) -> dict[str, bytes]:
    """Every file under root: relative path -> bytes (for "nothing was touched" checks)."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            with open(p, "rb") as fh:
                out[os.path.relpath(p, root)] = fh.read()
    return out
