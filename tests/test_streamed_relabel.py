"""Relabel on streamed data (issue #13 leftovers): `report="best"` trains the students in
segments resumed from their carry (the same students as one compiled run) and evaluates
them between segments with the eval loader; on a small dataset streamed at its stored size
the curve, the chosen epochs and the final accuracies equal the in-memory path's."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import artefact
from jaxdd.data import load_dataset, stream
from jaxdd.data.preprocess import fit_preprocess
from jaxdd.labels import relabel as jr
from jaxdd.models import get_model
from jaxdd.pipelines import sre2l as sm
from jaxdd.population import teachers
from jaxdd.train.loop import TrainConfig


def test_segments_give_the_one_run_student():
    """[0, 2) + [2, 4) + [4, 5) epochs from the carry == train_student over 5 epochs, bit for
    bit (the lr schedule, CutMix boxes and crops depend only on (aug_key, epoch, step))."""
    k_cls, shape = 3, (8, 8, 1)
    student = get_model("convnet_d2_w4_bn", k_cls, shape)
    x = jax.random.normal(jax.random.key(0), (7, *shape))   # batches of 3: the last padded
    y = jnp.array([0, 0, 1, 1, 2, 2, 0])
    w = jax.random.normal(jax.random.key(1), (64, k_cls))
    teacher = lambda xb: 3.0 * xb.reshape(xb.shape[0], -1) @ w  # noqa: E731
    cfg = TrainConfig(epochs=5, batch_size=3, lr=3e-2, optimizer="adamw", weight_decay=0.01,
                      schedule="cosine", dsa="")
    rcfg = jr.RelabelConfig(loss="mse_ce", crop_min_scale=0.5)   # + CutMix (default)
    key = jax.random.key(3)
    aug_key = jax.random.fold_in(key, 1)
    one = jax.jit(lambda k: jr.train_student(k, student, cfg, rcfg, x, teacher_fn=teacher,
                                             y_syn=y))(key)
    seg = jax.jit(lambda c, e0, num: jr.train_student_epochs(
        c, aug_key, student, cfg, rcfg, x, e0, num, teacher_fn=teacher, y_syn=y),
        static_argnums=2)
    carry = jr.init_student(key, student, cfg, rcfg)
    for e0, num in ((0, 2), (2, 2), (4, 1)):
        carry = seg(carry, jnp.int32(e0), num)
    leaves_one, leaves_seg = jax.tree.leaves(one), jax.tree.leaves(carry[0])
    assert len(leaves_one) == len(leaves_seg) > 0
    for a, b in zip(leaves_one, leaves_seg):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # and the students did move away from their initialisation
    init = jax.tree.leaves(jr.init_student(key, student, cfg, rcfg)[0])
    assert any(not np.array_equal(a, b) for a, b in zip(init, leaves_one))


def _toy_artefact(tmp_path, tiny_npz):
    """A random 4-per-class subset of the tiny npz dataset as an artefact, and an untrained
    (seeded) BN teacher of that dataset in the same pixel space."""
    name = f"npz:{tiny_npz}"
    ds = load_dataset(name, seed=0)
    pre = fit_preprocess("normalize", ds.x_train, dataset_name=name)
    tdir = str(tmp_path / "teacher")
    tmodel = get_model("convnet_d2_w4_bn", ds.num_classes, ds.image_shape)
    teachers.save_teacher(tdir, "convnet_d2_w4_bn", tmodel.init(jax.random.key(0)),
                          dataset=name, num_classes=ds.num_classes,
                          input_shape=ds.image_shape, preprocess=pre, source="test")
    idx = np.concatenate([ix[:4] for ix in ds.class_indices])
    from jaxdd import data as jdata
    art = str(tmp_path / "art")
    artefact.save(art, jdata.apply(pre, ds.x_train[idx]), ds.y_train[idx], preprocess=pre,
                  method="random", dataset=name, num_classes=ds.num_classes, ipc=4, seed=0,
                  config={}, extra={"teacher_dir": tdir})
    return name, art, tdir


def test_streamed_report_best_equals_in_memory(tiny_npz, tmp_path):
    """The same artefact and teacher, evaluated in memory (inside the compiled loop) and
    streamed (segments + eval-loader passes over test and val): the same curves, the same
    val-selected epochs, the same final accuracies. Both validation splits come from the
    same seeded split of the labels."""
    name, art, tdir = _toy_artefact(tmp_path, tiny_npz)
    over = {"report": "best", "select": "val", "eval_every": 2, "epochs": 5, "seeds": 2,
            "model": "convnet_d2_w4", "batch_size": 5, "recipe": "sre2l"}
    mem = sm.relabel(art, tdir, over, quiet=True)
    st = stream.open_streamed(name, None, seed=0)      # stored size: the same pixels
    streamed = sm.relabel(art, tdir, over, quiet=True, ds=st)
    assert mem["eval_epochs"] == streamed["eval_epochs"] == [2, 4, 5]
    for k in ("test_curve", "val_curve"):
        c = np.asarray(mem[k])
        assert c.shape == (2, 3) and np.ptp(c) > 0          # a curve that moves
        np.testing.assert_allclose(streamed[k], c, atol=1e-6)
    assert streamed["best_epochs"] == mem["best_epochs"]
    for k in ("best_accuracies", "accuracies"):
        np.testing.assert_allclose(streamed[k], mem[k], atol=1e-6)
    np.testing.assert_allclose(streamed["val_accuracy_mean"], mem["val_accuracy_mean"],
                               atol=1e-6)
    assert streamed["best_label"] == "best (val-selected)"
    np.testing.assert_allclose(streamed["accuracies"], np.asarray(streamed["test_curve"])[:, -1])


def test_streamed_select_val_without_a_validation_split_is_refused(tiny_npz, tmp_path):
    name, art, tdir = _toy_artefact(tmp_path, tiny_npz)
    st = stream.open_streamed(name, None, seed=0, val_per_class=0)
    with pytest.raises(ValueError, match="select='val' needs a validation split"):
        sm.relabel(art, tdir, {"report": "best", "select": "val", "epochs": 1}, quiet=True,
                   ds=st)


# ---------------------------------------------------------------------------------------
# `jaxdd baseline random --relabel TEACHER_DIR --image-size S`: the subset from labels only


def test_streamed_random_subset_is_the_in_memory_one(tiny_npz):
    """The draw from the streamed labels is `select("random")`'s: the same records, the same
    pixels at the stored size."""
    from jaxdd.evaluate.baselines import select, select_streamed
    name = f"npz:{tiny_npz}"
    ds = load_dataset(name, seed=1)
    st = stream.open_streamed(name, None, seed=1)
    key = jax.random.key(5)
    want = select("random", key, ds, None, 3)
    got = select_streamed("random", key, st, 3)
    assert got.shape == (9,)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(stream.read_images(st.train, got, st.image_shape),
                                  ds.x_train[want])
    np.testing.assert_array_equal(st.train.labels()[got], ds.y_train[want])
    with pytest.raises(ValueError, match="needs the dataset in memory"):
        select_streamed("herding", key, st, 3)
    with pytest.raises(ValueError, match="lower --ipc"):
        select_streamed("random", key, st, 10_000)


@pytest.fixture
def folder(tmp_path) -> str:
    """3 classes of variable-size RGB images: 6 train and 2 test images each."""
    from PIL import Image
    root = tmp_path / "imgs"
    rng = np.random.default_rng(0)
    for split, n in (("train", 6), ("test", 2)):
        for c in ("a", "b", "c"):
            os.makedirs(root / split / c)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(10, 30, 2))
                Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
                    root / split / c / f"{i}.png")
    return str(root)


def _folder_teacher(path, name: str) -> None:
    pre = fit_preprocess("normalize", np.random.default_rng(0).integers(
        0, 255, (4, 8, 8, 3)).astype(np.uint8), dataset_name=name)
    model = get_model("convnet_d2_w4_bn", 3, (8, 8, 3))
    teachers.save_teacher(str(path), "convnet_d2_w4_bn", model.init(jax.random.key(0)),
                          dataset=name, num_classes=3, input_shape=(8, 8, 3), preprocess=pre,
                          source="test")


def test_cli_baseline_random_relabel_streamed_reads_only_the_subset(folder, tmp_path,
                                                                     monkeypatch, capsys):
    """Streamed at 8 px: the labels come from the folder names, the only training images
    read are the chosen ones (once each), and each test image is read once per evaluation
    of `report="best"` (2 epochs, evaluated after each)."""
    import collections
    import json

    from jaxdd.cli import main
    from jaxdd.evaluate.baselines import select_streamed
    name = f"folder:{folder}"
    _folder_teacher(tmp_path / "t", name)
    reads = collections.Counter()
    real_read = stream.FolderSource.read
    monkeypatch.setattr(stream.FolderSource, "read",
                        lambda self, i: reads.update([self.paths[int(i)]]) or real_read(self, i))
    out = str(tmp_path / "rand")
    argv = ["baseline", "random", "--dataset", name, "--image-size", "8", "--ipc", "2",
            "--seed", "4", "--out", out, "--relabel", str(tmp_path / "t"), "--seeds", "2",
            "--quiet", "--json"]
    for s in ("epochs=2", "eval_every=1", "report='best'", "model='convnet_d2_w4'",
              "batch_size=3"):
        argv += ["--relabel-set", s]
    code = main(argv)
    o, e = capsys.readouterr()
    assert code == 0, e
    res = json.loads(o.strip().splitlines()[-1])
    assert res["baseline"] == "random+kd" and res["eval_epochs"] == [1, 2]
    assert np.asarray(res["test_curve"]).shape == (2, 2)
    np.testing.assert_allclose(res["accuracies"], np.asarray(res["test_curve"])[:, -1])
    st = stream.open_streamed(name, 8, seed=4)
    chosen = [st.train.describe(i) for i in select_streamed("random", jax.random.key(4), st, 2)]
    train_reads = {p: n for p, n in reads.items() if f"{os.sep}train{os.sep}" in p}
    test_reads = {p: n for p, n in reads.items() if f"{os.sep}test{os.sep}" in p}
    assert train_reads == {p: 1 for p in chosen} and len(chosen) == 6
    assert len(test_reads) == 6 and set(test_reads.values()) == {2}
    art = artefact.load(out)
    assert art.x_syn_NHWC.shape == (6, 8, 8, 3) and art.meta["config"]["image_size"] == 8
    assert art.y_syn.tolist() == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("extra, needle", [
    (["herding"], "use random"),
    (["random"], "needs --relabel TEACHER_DIR"),
    (["random", "--relabel", "T", "--evaluate", "cpu"], "needs --relabel TEACHER_DIR"),
])
def test_cli_baseline_streamed_refusals(folder, tmp_path, capsys, extra, needle):
    from jaxdd.cli import main
    out = tmp_path / "out"
    extra = [str(tmp_path / "t") if a == "T" else a for a in extra]
    code = main(["baseline", *extra[:1], "--dataset", f"folder:{folder}", "--image-size", "8",
                 "--ipc", "1", "--out", str(out), *extra[1:]])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and needle in err[0], err
    assert not out.exists()
