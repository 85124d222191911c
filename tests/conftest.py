"""Shared test set-up: strict rank promotion, tiny data (and a persistent compile cache only
when $JAXDD_CACHE_DIR names one: reading XLA:CPU executables back from that cache can abort
the process in the installed jaxlib, so the default suite never uses it)."""

import gc
import os

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_rank_promotion", "raise")
if os.environ.get("JAXDD_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.environ["JAXDD_CACHE_DIR"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
    """Drop every compiled program after each test module. Each XLA:CPU executable holds ~6
    memory mappings and the suite compiles thousands: kept for the whole session they pass
    Linux's vm.max_map_count (65530) and the next compile segfaults."""
    yield
    jax.clear_caches()
    gc.collect()


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
