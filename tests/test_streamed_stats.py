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


RDED_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "sre2l",
                           "rded_fashion_mnist_cpu.py")


def _save_teacher(path, dataset: str, classes: int, shape, model="convnet_d2_w4_bn"):
    """A ready (untrained, seeded) BN teacher for `dataset`."""
    from jaxdd.models import get_model
    from jaxdd.population import teachers
    model_ = get_model(model, classes, shape)
    pre = fit_preprocess("normalize", np.zeros((1, *shape), np.uint8), dataset_name=dataset)
    teachers.save_teacher(str(path), model, model_.init(jax.random.key(0)), dataset=dataset,
                          num_classes=classes, input_shape=shape, preprocess=pre, source="test")


def test_rded_streamed_equals_in_memory(tmp_path):
    """The same arrays in memory and streamed at their stored size: the same pools (record
    indices from labels only), the same selected crops, the same artefact."""
    from jaxdd import artefact
    from jaxdd.configs import load_config
    from jaxdd.pipelines import rded as prded
    from jaxdd.pipelines.common import Context
    from jaxdd.pipelines.spec import RunOptions
    x, y = _arrays(30, (8, 8, 1))
    ds, st = _both(x, y, *_arrays(6, (8, 8, 1), seed=1), 3)
    _save_teacher(tmp_path / "t", "toy", 3, (8, 8, 1))
    cfg = load_config(RDED_CONFIG, 2, [f"teacher.dir={str(tmp_path / 't')!r}", "rded.mipc=6",
                                       "rded.num_crop=2", "rded.class_batch=2"])
    arts = []
    for name, data in (("mem", ds), ("st", st)):
        ctx = Context(cfg, str(tmp_path / name), quiet=True, ds=data)
        res = prded.run(ctx, RunOptions(None, None))
        assert res["batches"] == 2 and res["pool_per_class"] == 6
        arts.append(artefact.load(res["artefact"]))
    assert arts[0].x_syn_NHWC.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(arts[1].x_syn_NHWC, arts[0].x_syn_NHWC)
    assert arts[1].meta["final_ce"] == arts[0].meta["final_ce"]


def test_rded_mock_imagenet_reads_only_pool_records(tmp_path, monkeypatch, capsys):
    """RDED on a mocked imagenet2012 at 16 px through `jaxdd distill --no-eval`: each class
    batch reads its own pool images once (2 x 1000 records of 20,000), nothing else."""
    import json

    import tensorflow_datasets as tfds

    from jaxdd import artefact
    from jaxdd.cli import main
    _save_teacher(tmp_path / "t", "imagenet2012", 1000, (16, 16, 3), "convnet_d3_w16_bn")
    reads = []
    real_read = stream.TfdsSource.read
    monkeypatch.setattr(stream.TfdsSource, "read",
                        lambda self, i: reads.append(int(i)) or real_read(self, i))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    out = tmp_path / "run"
    argv = ["distill", "--config", RDED_CONFIG, "--ipc", "1", "--out", str(out), "--no-eval",
            "--quiet", "--json"]
    for s in ("dataset='imagenet2012'", "image_size=16", f"teacher.dir={str(tmp_path / 't')!r}",
              "rded.mipc=2", "rded.num_crop=1", "rded.class_batch=500"):
        argv += ["--set", s]
    with tfds.testing.mock_data(num_examples=20000):   # every class has >= 2 images
        code = main(argv)
    o, e = capsys.readouterr()
    assert code == 0, e
    res = json.loads(o.strip().splitlines()[-1])
    assert res["batches"] == 2 and res["pool_per_class"] == 2
    assert len(reads) == 2000 and len(set(reads)) == 2000   # the pools, each record once
    art = artefact.load(res["artefacts"]["artefact"])
    assert art.x_syn_NHWC.shape == (1000, 16, 16, 3) and np.isfinite(art.x_syn_NHWC).all()
    assert art.meta["method"] == "rded" and art.y_syn.tolist() == list(range(1000))
