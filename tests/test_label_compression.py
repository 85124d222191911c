"""Soft-label compression of relabel: top-k with a uniform remainder, int8 / int4 codes,
label pruning (replayed augmentation epochs), exact label bytes; and the random subset +
soft labels baseline through the CLI."""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import artefact
from jaxdd.cli import main
from jaxdd.labels import relabel as R
from jaxdd.models import get_model
from jaxdd.train.loop import TrainConfig

K = 10


def _linear_teacher(shape, k=K):
    w = jax.random.normal(jax.random.key(11), (int(np.prod(shape)), k)) * 0.5
    return lambda xb: xb.reshape(xb.shape[0], -1) @ w


def _numpy_topk_uniform(logits_BxK, k, temperature):
    """The target of FKD's marginal smoothing, computed directly."""
    z = np.asarray(logits_BxK, np.float64) / temperature
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    out = np.empty_like(p)
    for b in range(len(p)):
        top = np.argsort(-p[b], kind="stable")[:k]
        rest = (1.0 - p[b, top].sum()) / (p.shape[1] - k) if k < p.shape[1] else 0.0
        out[b] = rest
        out[b, top] = p[b, top]
    return out


@pytest.mark.parametrize("k", [1, 3, K])
def test_top_k_uniform_rest_matches_numpy(k):
    logits = np.asarray(jax.random.normal(jax.random.key(0), (6, K)) * 4.0)
    cfg = R.RelabelConfig(top_k=k, temperature=3.0, label_dtype="float32")
    lab = R.teacher_labels(lambda x: x, jnp.asarray(logits), cfg)
    assert lab.values_ExSxBxk.shape == (6, k) and lab.indices_ExSxBxk.dtype == jnp.uint8
    p = np.asarray(R.target_probs(lab, K, cfg), np.float64)
    want = _numpy_topk_uniform(logits, k, 3.0)
    np.testing.assert_allclose(p, want, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
    if k < K:   # the remainder is really spread: every other class gets the same mass > 0
        others = np.sort(p, axis=-1)[:, : K - k]
        np.testing.assert_allclose(others, others[:, :1].repeat(K - k, 1), rtol=1e-5)
        assert (others > 0).all()
    # "drop" keeps the old behaviour: the softmax over the k stored logits only.
    dcfg = R.RelabelConfig(top_k=k, temperature=3.0, label_dtype="float32", top_k_rest="drop")
    pd = np.asarray(R.target_probs(R.teacher_labels(lambda x: x, jnp.asarray(logits), dcfg),
                                   K, dcfg), np.float64)
    z = logits / 3.0
    top = np.argsort(-z, axis=-1, kind="stable")[:, :k]
    ez = np.exp(np.take_along_axis(z, top, 1) - z.max(-1, keepdims=True))
    want_d = np.zeros_like(z)
    np.put_along_axis(want_d, top, ez / ez.sum(-1, keepdims=True), 1)
    np.testing.assert_allclose(pd, want_d, rtol=2e-5, atol=1e-7)
    if k < K:
        assert not np.allclose(pd, p)


@pytest.mark.parametrize("dtype", ["int8", "int4"])
def test_quantised_rows_within_half_a_step(dtype):
    levels = R.CODE_LEVELS[dtype]
    v = np.asarray(jax.random.normal(jax.random.key(1), (7, 13)))
    v = v * np.array([1e-3, 0.1, 1.0, 10.0, 30.0, 1.0, 0.0])[:, None] + np.arange(7)[:, None]
    v[5] = 2.5   # a constant row
    codes, offset, step = R.quantise_rows(jnp.asarray(v, jnp.float32), levels)
    assert codes.dtype == jnp.uint8 and offset.dtype == step.dtype == jnp.float16
    assert int(codes.max()) <= levels
    deq = np.asarray(R.dequantise_rows(codes, offset, step), np.float64)
    half = np.asarray(step, np.float64)[:, None] / 2
    assert (np.abs(deq - v.astype(np.float32)) <= half * (1 + 1e-6) + 1e-6 * np.abs(v)).all()
    # the step is no bigger than the row's range / levels needs (plus float16 rounding)
    rng = v.max(-1) - v.min(-1)
    assert (np.asarray(step, np.float64)[rng > 0] <= rng[rng > 0] / levels * 1.01 + 1e-3).all()
    # Through the label path (int4: two codes a byte), top-k and all classes.
    logits = jnp.asarray(v[:, :K] * 3, jnp.float32)
    for top_k in (0, 3):
        cfg = R.RelabelConfig(label_dtype=dtype, top_k=top_k, top_k_rest="drop")
        lab = R.teacher_labels(lambda x: x, logits, cfg)
        k = top_k or K
        assert lab.values_ExSxBxk.shape == (7, -(-k // 2) if dtype == "int4" else k)
        got = np.asarray(R.target_logits(lab, K, cfg))
        ref = np.asarray(logits, np.float64)
        if top_k:
            idx = np.asarray(lab.indices_ExSxBxk)
            got, ref = np.take_along_axis(got, idx, 1), np.take_along_axis(ref, idx, 1)
        half = np.asarray(lab.step_ExSxB, np.float64)[:, None] / 2
        assert (np.abs(got - ref) <= half * (1 + 1e-6) + 1e-5).all()


def test_label_bytes_exact_for_every_combination(tmp_path):
    x = jax.random.normal(jax.random.key(0), (7, 4, 4, 1))   # 7 images, batch 3: padded
    teacher = _linear_teacher((4, 4, 1))
    key, epochs, bs = jax.random.key(3), 4, 3
    seen = {}
    for dtype, top_k, rest, m in itertools.product(R.LABEL_DTYPES, (0, 1, 3), ("uniform", "drop"),
                                                   (0, 2)):
        if top_k == 0 and rest == "drop":
            continue
        cfg = R.RelabelConfig(label_dtype=dtype, top_k=top_k, top_k_rest=rest, label_epochs=m,
                              crop_min_scale=1.0, flip=False, cutmix_alpha=0.0)
        run = (dtype, top_k, rest) in {("float16", 0, "uniform"), ("int4", 3, "uniform"),
                                       ("int8", 3, "drop"), ("bfloat16", 1, "uniform")}
        if run:
            st = R.generate_labels(teacher, x, key, epochs, bs, cfg)
        else:  # the shapes and dtypes of what would be stored (traced, not run)
            st = jax.eval_shape(lambda x, key: R.generate_labels(teacher, x, key, epochs, bs,
                                                                 cfg), x, key)
        n_ep = 2 if m else epochs
        assert st.values_ExSxBxk.shape[:3] == (n_ep, 3, 3)
        nbytes = R.label_bytes(st)
        assert nbytes == sum(int(np.prod(a.shape)) * np.dtype(a.dtype).itemsize
                             for a in st if a is not None)
        assert nbytes == R.estimate_label_bytes(7, epochs, K, dtype, top_k, label_epochs=m,
                                                batch_size=bs)
        k = top_k or K
        per_value = {"float16": 2, "bfloat16": 2, "float32": 4, "int8": 1}.get(dtype)
        row = (k * per_value if per_value else -(-k // 2)) + (k if top_k else 0) \
            + (4 if dtype in ("int8", "int4") else 0)
        assert nbytes == n_ep * 3 * 3 * row
        seen[(dtype, top_k, m)] = nbytes
        if (dtype, top_k, rest, m) == ("int4", 3, "uniform", 2):  # the file keeps every array
            path = str(tmp_path / "l.npz")
            R.save_labels(path, st, top_k=top_k)
            back, meta = R.load_labels(path)
            assert R.label_bytes(back) == nbytes and int(meta["top_k"]) == 3
            for a, b in zip(st, back):
                np.testing.assert_array_equal(a, b)
    assert seen[("float16", 0, 2)] * 2 == seen[("float16", 0, 0)]   # pruning x2: half
    assert seen[("int8", 0, 0)] < seen[("float16", 0, 0)] and \
        seen[("int4", 0, 0)] < seen[("int8", 0, 0)]


def test_label_pruning_replays_the_stored_augmentations():
    shape, m, epochs, bs = (8, 8, 1), 2, 5, 4
    x = jax.random.normal(jax.random.key(0), (6, *shape))
    teacher = _linear_teacher(shape)
    key = jax.random.key(3)
    cfg = R.RelabelConfig(label_epochs=m, top_k=2, label_dtype="int8")  # crop, flip, CutMix
    full = R.RelabelConfig(top_k=2, label_dtype="int8")
    params = jax.jit(R.aug_params, static_argnums=(3, 4, 5, 6))
    for e in range(epochs):
        for s in range(2):
            p, p0 = params(key, e, s, 6, bs, shape[:2], cfg), params(key, e % m, s, 6, bs,
                                                                      shape[:2], full)
            for a, b in zip(p, p0):   # epoch e's augmentation IS epoch e mod M's
                np.testing.assert_array_equal(a, b)
    p0, p1 = (params(key, e, 0, 6, bs, shape[:2], cfg) for e in (0, 1))
    assert not np.array_equal(p0.box_Bx4, p1.box_Bx4)   # the stored epochs differ
    stored = jax.jit(R.generate_labels, static_argnums=(0, 3, 4, 5))(
        teacher, x, key, epochs, bs, cfg)
    assert stored.values_ExSxBxk.shape[:2] == (m, 2)
    for e in (2, 3, 4):   # a replayed epoch: the teacher on its batch gives the stored labels
        for s in range(2):
            xb = R.apply_aug(x, params(key, e, s, 6, bs, shape[:2], cfg), cfg)
            lab = R.teacher_labels(teacher, xb, cfg)
            for a, b in zip(lab, stored):
                np.testing.assert_array_equal(a, b[e % m, s])
    # A student from the pruned stored labels is the one trained online with the same
    # replay; it differs from the student of fresh augmentations every epoch.
    student = get_model("mlp_w16", K, shape)
    tcfg = TrainConfig(epochs=epochs, batch_size=bs, lr=1e-3, weight_decay=0.01,
                       schedule="cosine", optimizer="adamw")
    train = jax.jit(R.train_student, static_argnums=(1, 2, 3, 5))
    v_st = train(jax.random.key(9), student, tcfg, cfg, x, None, stored, key)
    v_on = train(jax.random.key(9), student, tcfg, cfg, x, teacher, None, key)
    v_fresh = train(jax.random.key(9), student, tcfg, full, x, teacher, None, key)
    for a, b in zip(jax.tree.leaves(v_on), jax.tree.leaves(v_st)):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b)
               for a, b in zip(jax.tree.leaves(v_on), jax.tree.leaves(v_fresh)))
    with pytest.raises(ValueError, match="label_epochs"):  # labels of another pruning
        R.train_student(jax.random.key(9), student, tcfg, full, x, None, stored, key)


def test_bad_options_are_refused():
    for kw, msg in ((dict(top_k_rest="spread"), "top_k_rest"), (dict(label_dtype="int2"), "int8"),
                    (dict(label_epochs=-1), "label_epochs"), (dict(top_k=-1), "top_k")):
        with pytest.raises(ValueError, match=msg):
            R.RelabelConfig(**kw)


CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "sre2l", "fashion_mnist_cpu.py")


def _run(capsys, argv):
    code = main(argv + ["--quiet", "--json"])
    o, e = capsys.readouterr()
    assert code == 0, e
    return json.loads(o.strip().splitlines()[-1])


def test_random_subset_with_soft_labels_baseline(tiny_npz, tmp_path, capsys):
    tdir = str(tmp_path / "teacher")
    sets = [f"dataset=npz:{tiny_npz}", "teacher.model=convnet_d2_w4_bn", f"teacher.dir={tdir}",
            "teacher.epochs=2", "teacher.batch_size=64"]
    _run(capsys, ["teacher", "--config", CONFIG] + sum((["--set", s] for s in sets), []))
    out = str(tmp_path / "rand")
    argv = ["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "3", "--out", out,
            "--relabel", tdir, "--seeds", "2"]
    opts = ["epochs=4", "model='convnet_d2_w4'", "mode='stored'", "top_k=2",
            "label_dtype='int4'", "label_epochs=2", "batch_size=4"]
    r = _run(capsys, argv + sum((["--relabel-set", o] for o in opts), []))
    assert r["baseline"] == "random+kd" and r["method"] == "random" and r["seeds"] == 2
    assert r["protocol"] == "kd-sre2l" and r["mode"] == "stored"
    assert r["top_k"] == 2 and r["top_k_rest"] == "uniform" and r["label_epochs"] == 2
    # 2 stored epochs x 3 steps x 4 rows x (1 byte of two int4 codes + 2 indices + 4)
    assert r["label_bytes"] == r["label_bytes_if_stored"] == 2 * 3 * 4 * 7
    art = artefact.load(out)
    assert art.meta["teacher_dir"] == os.path.abspath(tdir)
    assert art.meta["config"]["relabel"]["label_dtype"] == "int4"
    with open(os.path.join(out, "evaluations.json")) as f:
        assert [e["protocol"] for e in json.load(f)] == ["kd-sre2l"]
    # `jaxdd relabel OUT` later reads the stored options and the teacher: the same students.
    again = _run(capsys, ["relabel", out, "--seeds", "2"])
    assert again["accuracies"] == r["accuracies"] and again["label_bytes"] == r["label_bytes"]
    # Bad input: one error line, nothing written.
    for bad, msg in ((["--relabel-set", "epochs=2"], "needs --relabel"),
                     (["--relabel", tdir, "--relabel-set", "epoch=2"], "unknown field"),
                     (["--relabel", tdir, "--preprocess", "zca"], "teacher")):
        target = str(tmp_path / "bad")
        code = main(["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2",
                     "--out", target, "--quiet"] + bad)
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and msg in err[0], err
        assert not os.path.exists(target)


def test_static_and_projector_labels_refuse_integer_codes():
    """int8 / int4 codes exist for stored per-epoch labels only; static labels (INFER) and
    the projector (HeLlO) are floats, and say so instead of storing codes as labels."""
    from jaxdd.pipelines import sre2l

    for over, what in (({"mode": "static", "label_dtype": "int8"}, "static labels are"),
                       ({"labels": "projector", "label_dtype": "int4"}, "the projector is")):
        with pytest.raises(ValueError, match=f"{what} stored as floats"):
            sre2l.relabel_options({"method": "sre2l"}, over)
    assert sre2l.relabel_options({"method": "sre2l"}, {"mode": "static"})["label_dtype"] == "float16"
