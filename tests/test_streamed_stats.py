"""The statistics stages on streamed data (issue #13): G-VBSM's conv targets from one pass
of the eval loader, and RDED reading only its pool images; both equal to the in-memory
path on a small dataset streamed at its stored size."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.data import stream
from jaxdd.data.preprocess import fit_preprocess
from jaxdd.data.sources import Dataset
from jaxdd.methods.statistics.capture import conv_input_stat
from jaxdd.methods.statistics.recover import RecoverConfig
from jaxdd.population import conv_targets as CT


def _arrays(n: int, shape=(8, 8, 2), classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, *shape)).astype(np.uint8)
    y = (np.arange(n) % classes).astype(np.int32)
    return x, y


def _both(x, y, x_test, y_test, classes: int):
    """The same arrays as an in-memory `Dataset` (no validation split) and as a
    `StreamedDataset` of `ArraySource`s at their stored size."""
    names = [f"c{k}" for k in range(classes)]
    ds = Dataset(x_train=x, y_train=y, x_val=x[:0], y_val=y[:0], x_test=x_test, y_test=y_test,
                 num_classes=classes, name="toy", class_names=names,
                 class_indices=[np.flatnonzero(y == k) for k in range(classes)])
    st = stream.StreamedDataset("toy", stream.ArraySource(x, y, "toy train", names),
                                stream.ArraySource(x_test, y_test, "toy test", names),
                                tuple(x.shape[1:]), names, image_size=None, val_per_class=0)
    return ds, st


def test_masked_conv_stat_counts_only_masked_images():
    x = jax.random.normal(jax.random.key(0), (6, 8, 8, 3))
    mask = jnp.array([True, False, True, True, False, True])
    got = conv_input_stat(x, 4, False, mask)
    want = conv_input_stat(x[np.asarray(mask)], 4, False)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    per_c = conv_input_stat(x, 4, True, mask)
    for a, b in zip(per_c, conv_input_stat(x[np.asarray(mask)], 4, True)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    unmasked = conv_input_stat(x, 4, False)
    for a, b in zip(conv_input_stat(x, 4, False, jnp.ones(6, bool)), unmasked):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_streamed_conv_targets_equal_in_memory(tmp_path, monkeypatch):
    from tests.test_gvbsm import _linen
    net, v = _linen()
    x, y = _arrays(13)                 # 13 images in batches of 5: the last one padded
    ds, st = _both(x, y, *_arrays(3, seed=1), 3)
    pre = fit_preprocess("normalize", x, dataset_name="toy")
    cfg = RecoverConfig(patch_size=4, conv_target_batch=5, conv_target_pad=1)
    mem, mem_dirs = CT.teacher_targets(str(tmp_path / "mem"), net, [v], "LinenNet", ds, pre,
                                       cfg, seed=3)
    streamed, st_dirs = CT.teacher_targets(str(tmp_path / "st"), net, [v], "LinenNet", st, pre,
                                           cfg, seed=3)
    assert len(mem) == 2
    for a, b in zip(jax.tree.leaves(streamed), jax.tree.leaves(mem)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    # cached per teacher under its own key (streamed data: labels + image size): reused
    def no_pass(*a, **k):
        raise AssertionError("cached conv targets were recomputed")
    monkeypatch.setattr(CT, "_streamed_targets", no_pass)
    again, dirs2 = CT.teacher_targets(str(tmp_path / "st"), net, [v], "LinenNet", st, pre, cfg,
                                      seed=3)
    assert dirs2 == st_dirs and os.path.basename(st_dirs[0]) != os.path.basename(mem_dirs[0])
    for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(streamed)):
        np.testing.assert_array_equal(a, b)
