"""RDED: crop scoring keeps the lowest-CE crops, the tiling layout, determinism per key,
clear IPC errors, and the CLI path (teacher -> rded -> artefact -> relabel / evaluate)."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import artefact
from jaxdd.cli import main
from jaxdd.methods import rded

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "sre2l",
                      "rded_fashion_mnist_cpu.py")


def brightness_teacher(sign: float = 1.0):
    """2 classes; logit_1 - logit_0 = sign * 4 * mean(x): CE(class 1) = softplus(-sign 4 m)."""
    def fn(x_NHWC):
        m = x_NHWC.reshape(x_NHWC.shape[0], -1).mean(-1)
        return jnp.stack([jnp.zeros_like(m), sign * 4.0 * m], axis=-1)
    return fn


def const_pool(values, hw=(8, 8)):
    v = jnp.asarray(values, jnp.float32)
    return jnp.broadcast_to(v.reshape(-1, 1, 1, 1), (len(values), *hw, 1))


def test_scoring_keeps_lowest_ce_crops():
    # Constant images: every crop of image p has mean v_p, so CE = softplus(-4 v_p) and the
    # brightest images must be kept, brightest first, with exactly that score.
    vals = [0.1, 0.5, 0.3, 0.9, 0.7, 0.2]
    cfg = rded.RDEDConfig(num_crop=3, mipc=6)
    sel = jax.jit(rded.select_class, static_argnums=(1, 4, 5))(
        jax.random.key(0), brightness_teacher(), const_pool(vals), 1, 3, cfg)
    np.testing.assert_array_equal(np.asarray(sel.src_n), [3, 4, 1])
    expected = np.log1p(np.exp(-4 * np.array([0.9, 0.7, 0.5])))
    np.testing.assert_allclose(np.asarray(sel.ce_n), expected, rtol=1e-5)

    # Within one image the kept box is the argmin of the candidates' CE: a left-to-right ramp
    # makes crops differ; recompute every candidate's CE with the same key and compare.
    ramp = jnp.broadcast_to(jnp.linspace(0, 1, 8).reshape(1, 1, 8, 1), (2, 8, 8, 1))
    key, m = jax.random.key(1), 6
    cfg = rded.RDEDConfig(num_crop=m, mipc=2)
    teacher = brightness_teacher()
    sel = jax.jit(lambda k, x: rded.select_class(k, teacher, x, 1, 1, cfg))(key, ramp)

    @jax.jit
    def all_candidates(k, x):
        boxes = rded.sample_boxes(k, 2, m, 8, 8, cfg)
        src = jnp.repeat(jnp.arange(2), m)
        return boxes, rded.crop_ce(teacher, x, src, boxes.reshape(-1, 4), 1, cfg)

    boxes, ce = all_candidates(key, ramp)
    ce = np.asarray(ce)
    best = int(np.argmin(ce))
    assert int(sel.src_n[0]) == best // m
    np.testing.assert_allclose(np.asarray(sel.box_nx4[0]), np.asarray(boxes[best // m, best % m]))
    np.testing.assert_allclose(float(sel.ce_n[0]), ce.min(), rtol=1e-6)
    assert float(boxes[best // m, best % m][1]) > 0  # a crop shifted towards the bright side


def test_tiling_layout():
    assert rded.tile_layout(9, 9, 2) == [(0, 0, 5, 5), (0, 5, 5, 4), (5, 0, 4, 5), (5, 5, 4, 4)]
    assert rded.tile_layout(32, 32, 1) == [(0, 0, 32, 32)]
    # Pool value p = p; CE grows with brightness (sign -1), so the ascending order is 0..7.
    # IPC 2, factor 2: tile k of image t holds crop k * 2 + t.
    pool = const_pool(np.arange(8) / 10.0)
    cfg = rded.RDEDConfig(factor=2, num_crop=2, mipc=8)
    teacher = brightness_teacher(-1.0)
    x, ce = jax.jit(lambda k, p: rded.rded_class(k, teacher, p, 1, 2, cfg))(jax.random.key(0), pool)
    assert x.shape == (2, 8, 8, 1) and ce.shape == (8,)
    assert np.all(np.diff(np.asarray(ce)) > 0)
    x = np.asarray(x)[..., 0]
    for t in range(2):
        for k, (y0, x0) in enumerate([(0, 0), (0, 4), (4, 0), (4, 4)]):
            np.testing.assert_allclose(x[t, y0:y0 + 4, x0:x0 + 4], (k * 2 + t) / 10.0, atol=1e-6)


def test_deterministic_per_key_and_batching():
    x_pool = jax.random.uniform(jax.random.key(5), (3, 6, 8, 8, 1))
    w = jax.random.normal(jax.random.key(6), (64, 3))
    teacher = lambda xb: xb.reshape(xb.shape[0], -1) @ w
    cfg = rded.RDEDConfig(num_crop=4, mipc=6, score_batch=5)
    run = jax.jit(lambda k, xp, lab: rded.rded(k, teacher, xp, lab, 2, cfg))
    labels = jnp.arange(3)
    a, ca = run(jax.random.key(0), x_pool, labels)
    b, cb = run(jax.random.key(0), x_pool, labels)
    c, _ = run(jax.random.key(1), x_pool, labels)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.allclose(np.asarray(a), np.asarray(c))
    # Class c uses fold_in(key, c): its images do not depend on its position in the batch
    # (the pipeline's class chunks), nor on how many classes are vmapped together.
    rev, _ = run(jax.random.key(0), x_pool[::-1], labels[::-1])
    np.testing.assert_allclose(np.asarray(rev[::-1]), np.asarray(a), atol=1e-6)
    vm, cvm = jax.jit(lambda k: rded.rded(k, teacher, x_pool, labels, 2, cfg, vmap_classes=3))(
        jax.random.key(0))
    np.testing.assert_allclose(np.asarray(vm), np.asarray(a), atol=1e-5)
    np.testing.assert_allclose(np.asarray(cvm), np.asarray(ca), rtol=1e-5)


def test_ipc_too_large_errors():
    pool = const_pool([0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="keeps 4 crops per class"):
        rded.rded_class(jax.random.key(0), brightness_teacher(), pool, 1, 1,
                        rded.RDEDConfig(factor=2, mipc=3))
    with pytest.raises(ValueError, match="score_input"):
        rded.RDEDConfig(score_input="stretch")


def _run(capsys, argv):
    code = main(argv + ["--quiet", "--json"])
    o, e = capsys.readouterr()
    assert code == 0, e
    return json.loads(o.strip().splitlines()[-1])


def _sets(npz, tdir):
    """The cpu preset shrunk: tiny data, tiny BN teacher, small pool, few epochs."""
    return [f"dataset=npz:{npz}", "teacher.model=convnet_d2_w4_bn", f"teacher.dir={tdir}",
            "teacher.epochs=2", "teacher.batch_size=64", "rded.mipc=12", "rded.num_crop=2",
            "rded.class_batch=1", "relabel.epochs=2", "relabel.seeds=1",
            "relabel.model=convnet_d2_w4", "relabel.batch_size=6"]


def test_cli_rded_artefact(tiny_npz, tmp_path, capsys):
    tdir = str(tmp_path / "teacher")
    sets = sum((["--set", s] for s in _sets(tiny_npz, tdir)), [])

    # IPC larger than the pool allows: one error line, before any teacher is trained.
    code = main(["recover", "--config", CONFIG, "--ipc", "1000", "--out", str(tmp_path / "bad"),
                 "--quiet"] + sets)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "IPC 1000 is larger than class 0" in err[0]
    assert not os.path.exists(tdir)

    out = str(tmp_path / "run")
    r = _run(capsys, ["recover", "--config", CONFIG, "--ipc", "2", "--out", out] + sets)
    assert r["method"] == "rded" and r["batches"] == 3 and r["pool_per_class"] == 12
    art = artefact.load(r["artefact"])
    assert art.x_syn_NHWC.shape == (6, 8, 8, 1) and art.meta["method"] == "rded"
    assert art.meta["label_kind"] == "hard" and art.y_syn.tolist() == [0, 0, 1, 1, 2, 2]
    assert art.meta["teacher_dir"] == os.path.abspath(tdir)
    assert art.meta["config"]["relabel"]["recipe"] == "rded"

    # Restart from a checkpoint after the first class chunk (the driver's resume); same images.
    again = str(tmp_path / "again")
    part = _run(capsys, ["distill", "--config", CONFIG, "--ipc", "2", "--out", again,
                         "--stop-after", "1", "--no-eval"] + sets)
    assert part["stopped_early"] and not os.path.exists(os.path.join(again, "artefact"))
    _run(capsys, ["recover", "--config", CONFIG, "--ipc", "2", "--out", again] + sets)
    np.testing.assert_array_equal(artefact.load(os.path.join(again, "artefact")).x_syn_NHWC,
                                  art.x_syn_NHWC)

    rl = _run(capsys, ["relabel", out])  # teacher and recipe from the artefact
    assert rl["recipe"] == "rded" and rl["cosine_span"] == 0.5 and rl["seeds"] == 1
    assert rl["accuracies"] == [rl["accuracy_mean"]]
    ev = _run(capsys, ["evaluate", r["artefact"], "--protocol", "smoke", "--seeds", "1"])
    assert ev["accuracies"] == [ev["accuracy_mean"]] and ev["method"] == "rded"
    evs = json.load(open(os.path.join(r["artefact"], "evaluations.json")))
    assert [e["accuracy_mean"] for e in evs] == [rl["accuracy_mean"], ev["accuracy_mean"]]


# ---------------------------------------------------------------------------------------
# The student augmentation at factor > 1: ShufflePatches + RandomResizedCrop(1/f, 1)


def test_shuffle_patches_permutes_tiles():
    from jaxdd.augment import shuffle_patches
    from jaxdd.labels import relabel as jr
    x = jax.random.normal(jax.random.key(0), (8, 6, 3))
    perm = jnp.array([[1, 0], [1, 0]], jnp.int32)  # rows and columns of tiles swapped
    got = np.asarray(shuffle_patches(x, perm))
    xn = np.asarray(x)
    np.testing.assert_array_equal(got[:4, :3], xn[4:, 3:])
    np.testing.assert_array_equal(got[4:, :3], xn[:4, 3:])
    np.testing.assert_array_equal(np.sort(got, axis=None), np.sort(xn, axis=None))
    np.testing.assert_array_equal(shuffle_patches(x, jnp.array([[0, 1], [0, 1]])), x)
    with pytest.raises(ValueError, match="divisible by 4"):
        shuffle_patches(x, jnp.tile(jnp.arange(4), (2, 1)))
    # in the relabel augmentation: per image, a pure function of the key
    xs = jax.random.normal(jax.random.key(1), (5, 8, 8, 2))
    cfg = jr.RelabelConfig(shuffle_patches=2, crop_min_scale=1.0, flip=False, cutmix_alpha=0.0)
    p = jr.aug_params(jax.random.key(2), 0, 0, 5, 5, (8, 8), cfg)
    assert p.patch_perm_Bx2xF.shape == (5, 2, 2)
    q = jr.aug_params(jax.random.key(2), 0, 0, 5, 5, (8, 8), cfg)
    np.testing.assert_array_equal(p.patch_perm_Bx2xF, q.patch_perm_Bx2xF)
    out = np.asarray(jr.apply_aug(xs, p, cfg))
    for b in range(5):  # each output image holds the pixels of its source image
        np.testing.assert_array_equal(np.sort(out[b], axis=None),
                                      np.sort(np.asarray(xs[p.idx_B[b]]), axis=None))
    perms = np.concatenate([np.asarray(jr.aug_params(jax.random.key(2), e, 0, 5, 5, (8, 8),
                                                     cfg).patch_perm_Bx2xF) for e in range(4)])
    assert (perms[..., 0] == 1).any() and (perms[..., 0] == 0).any()  # shuffles happen
    off = jr.RelabelConfig(crop_min_scale=1.0, flip=False, cutmix_alpha=0.0)  # factor 1
    p1 = jr.aug_params(jax.random.key(2), 0, 0, 5, 5, (8, 8), off)
    np.testing.assert_array_equal(jr.apply_aug(xs, p1, off), xs[p1.idx_B])


def test_rded_recipe_follows_the_factor():
    from jaxdd.pipelines import sre2l as sm
    meta = lambda f: {"config": {"rded": {"factor": f}, "relabel": {"recipe": "rded"}}}  # noqa: E731
    o1 = sm.relabel_options(meta(1), {})
    assert (o1["shuffle_patches"], o1["crop_min_scale"]) == (1, 1.0)
    o2 = sm.relabel_options(meta(2), {})
    assert (o2["shuffle_patches"], o2["crop_min_scale"]) == (2, 0.5)
    o3 = sm.relabel_options(meta(2), {"shuffle_patches": 1, "crop_min_scale": 0.08})
    assert (o3["shuffle_patches"], o3["crop_min_scale"]) == (1, 0.08)  # explicit values win
    o4 = sm.relabel_options(meta(2), {"recipe": "sre2l"})
    assert o4["shuffle_patches"] == 1  # only RDED's recipe
