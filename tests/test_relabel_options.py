"""Relabel student options: G-VBSM logit matching (eq. 3) against a hand computation, the
evaluation curve behind `report="best"` (best >= last, best = max of the curve, the same
student as without evaluations), and the validation-selected path end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.cli import main
from jaxdd.labels import relabel as jr
from jaxdd.models import get_model
from jaxdd.pipelines import sre2l as sm
from jaxdd.train.loop import TrainConfig, accuracy

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "sre2l",
                      "rded_fashion_mnist_cpu.py")


def test_logit_match_loss_by_hand():
    s = jnp.array([[1.0, 2.0, 0.0], [0.5, -1.0, 3.0]])
    t = jnp.array([[0.5, 1.0, 1.0], [0.5, 0.0, 1.0]])
    y = jnp.array([1, 0])
    # example 0: MSE (0.25 + 1 + 1) / 3; CE = log(e + e^2 + 1) - 2
    # example 1: MSE (0 + 1 + 4) / 3;    CE = log(e^0.5 + e^-1 + e^3) - 0.5
    mse = np.array([2.25 / 3, 5 / 3])
    ce = np.array([np.log(np.e + np.e ** 2 + 1) - 2,
                   np.log(np.e ** 0.5 + np.e ** -1 + np.e ** 3) - 0.5])
    got = jr.logit_match_loss(s, t, y, 0.1)
    np.testing.assert_allclose(np.asarray(got), mse + 0.1 * ce, rtol=1e-6)
    cfg = jr.RelabelConfig(loss="mse_ce", ce_weight=0.1)
    np.testing.assert_allclose(np.asarray(jr.student_loss(s, t, y, cfg)), np.asarray(got))
    # the batch loss (masked mean of the per-example loss) is torch's F.mse_loss + 0.1 CE
    np.testing.assert_allclose(float(got.mean()), mse.mean() + 0.1 * ce.mean(), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(jr.student_loss(s, t, None, jr.RelabelConfig())),
                               np.asarray(jr.kd_loss(s, t, 20.0)))
    with pytest.raises(ValueError, match="top_k = 0"):
        jr.RelabelConfig(loss="mse_ce", top_k=2)
    with pytest.raises(ValueError, match="student loss"):
        jr.RelabelConfig(loss="l1")


def test_eval_curve_best_and_last():
    k_cls, shape = 3, (8, 8, 1)
    student = get_model("convnet_d2_w4", k_cls, shape)
    x = jax.random.normal(jax.random.key(0), (6, *shape))
    y = jnp.array([0, 0, 1, 1, 2, 2])
    w = jax.random.normal(jax.random.key(1), (64, k_cls))
    teacher = lambda xb: 3.0 * xb.reshape(xb.shape[0], -1) @ w
    x_test = jax.random.normal(jax.random.key(2), (40, *shape))
    y_test = teacher(x_test).argmax(-1)
    cfg = TrainConfig(epochs=5, batch_size=4, lr=3e-2, optimizer="adamw", weight_decay=0.0,
                      schedule="cosine", dsa="")
    rcfg = jr.RelabelConfig(loss="mse_ce", cutmix_alpha=0.0)
    assert jr.eval_epochs(5, 2) == [2, 4, 5] and jr.eval_epochs(4, 2) == [2, 4]
    eval_fn = lambda v: accuracy(student, v, x_test, y_test)

    @jax.jit
    def both(key):
        plain = jr.train_student(key, student, cfg, rcfg, x, teacher_fn=teacher, y_syn=y)
        final, curve = jr.train_student_evals(key, student, cfg, rcfg, x, eval_fn, 2,
                                              teacher_fn=teacher, y_syn=y)
        return plain, final, curve, eval_fn(final)

    plain, final, curve, last = both(jax.random.key(3))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), plain, final)
    curve = np.asarray(curve)
    assert curve.shape == (3,) and curve[-1] == float(last)  # last row = the final student
    rep = sm.best_report(curve.reshape(1, 3, 1), [2, 4, 5], "test")
    assert rep["best_accuracies"] == [curve.max()] and rep["best_accuracy_mean"] >= curve[-1]
    assert rep["best_epochs"] == [[2, 4, 5][int(curve.argmax())]]
    assert rep["best_label"] == "best (test-selected; optimistic)"
    with pytest.raises(ValueError, match="needs y_syn"):
        jr.train_student(jax.random.key(0), student, cfg, rcfg, x, teacher_fn=teacher)


def test_best_report_val_selection():
    # Two seeds, three evaluations; column 0 test, column 1 val. The val peak is not the
    # test peak: the reported best is the test accuracy at the val peak (first max on ties).
    curve = np.array([[[0.50, 0.40], [0.70, 0.45], [0.60, 0.60]],
                      [[0.55, 0.50], [0.52, 0.50], [0.58, 0.30]]])
    rep = sm.best_report(curve, [10, 20, 30], "val")
    assert rep["best_accuracies"] == [0.60, 0.55] and rep["best_epochs"] == [30, 10]
    assert rep["best_label"] == "best (val-selected)" and rep["val_curve"][1] == [0.5, 0.5, 0.3]
    opt = sm.best_report(curve, [10, 20, 30], "test")
    assert opt["best_accuracies"] == [0.70, 0.58] and "val_curve" not in opt


def _run(capsys, argv):
    code = main(argv + ["--quiet", "--json"])
    o, e = capsys.readouterr()
    assert code == 0, e
    return json.loads(o.strip().splitlines()[-1])


def test_cli_report_best_test_and_val(tiny_npz, tmp_path, capsys):
    tdir, out = str(tmp_path / "teacher"), str(tmp_path / "run")
    sets = [f"dataset=npz:{tiny_npz}", "teacher.model=convnet_d2_w4_bn", f"teacher.dir={tdir}",
            "teacher.epochs=1", "teacher.batch_size=64", "rded.mipc=8", "rded.num_crop=1",
            "rded.class_batch=3", "relabel.epochs=4", "relabel.seeds=2",
            "relabel.model=convnet_d2_w4", "relabel.batch_size=6"]
    _run(capsys, ["recover", "--config", CONFIG, "--ipc", "2", "--out", out]
         + sum((["--set", s] for s in sets), []))

    t = _run(capsys, ["relabel", out, "--report", "best", "--eval-every", "2", "--loss", "mse_ce"])
    assert t["best_label"] == "best (test-selected; optimistic)" and t["eval_epochs"] == [2, 4]
    assert t["loss"].startswith("mse_ce") and t["report"].startswith("final epoch + best")
    curve = np.array(t["test_curve"])                             # (seeds, evaluations)
    np.testing.assert_allclose(t["best_accuracies"], curve.max(1))
    np.testing.assert_allclose(t["accuracies"], curve[:, -1])     # last = final evaluation
    assert all(b >= a for b, a in zip(t["best_accuracies"], t["accuracies"]))

    v = _run(capsys, ["relabel", out, "--report", "best", "--eval-every", "2", "--loss", "mse_ce",
                      "--select", "val"])
    tc, vc = np.array(v["test_curve"]), np.array(v["val_curve"])
    assert v["best_label"] == "best (val-selected)" and vc.shape == tc.shape == (2, 2)
    np.testing.assert_allclose(v["best_accuracies"], tc[np.arange(2), vc.argmax(1)])
    np.testing.assert_allclose(v["accuracies"], t["accuracies"])  # same students

    code = main(["relabel", out, "--loss", "mse_ce", "--top-k", "2", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "top_k = 0" in err[0]


# ---------------------------------------------------------------------------------------
# SRe2L's CIFAR relabel recipe: pad-crop + flip per image, MixUp of the images, T 30


def _cifar_rcfg(**kw):
    opts = {k: v for k, v in sm.RECIPES["sre2l_cifar"].items()
            if k in {f.name for f in __import__("dataclasses").fields(jr.RelabelConfig)}}
    return jr.RelabelConfig(**{**opts, **kw})


def test_sre2l_cifar_recipe_values():
    r = sm.RECIPES["sre2l_cifar"]
    assert (r["epochs"], r["batch_size"], r["temperature"], r["pad_crop"], r["mixup_alpha"],
            r["cutmix_alpha"], r["crop_min_scale"], r["flip"]) == (400, 128, 30.0, 4, 0.8,
                                                                   0.0, 1.0, True)
    assert r["optimizer"] == "adamw" and r["lr"] == 1e-3 and r["weight_decay"] == 0.01
    assert r["decay_norms_biases"] and not r["t2_factor"] and r["lr_per_epoch"]
    # the preset uses it, and nothing in its relabel section overrides the recipe's numbers
    from jaxdd.configs import load_config
    cfg = load_config(os.path.join(os.path.dirname(CONFIG), "sre2l_cifar100.py"))
    assert cfg["relabel"]["recipe"] == "sre2l_cifar"
    o = sm.relabel_options({"config": cfg}, {})
    assert (o["epochs"], o["batch_size"], o["temperature"], o["mixup_alpha"]) == (400, 128, 30.0, 0.8)
    for bad, match in ((dict(mixup_alpha=0.8, cutmix_alpha=1.0), "use one mix"),
                       (dict(pad_crop=-1), "pad_crop"), (dict(shuffle_patches=0), "shuffle")):
        with pytest.raises(ValueError, match=match):
            jr.RelabelConfig(**bad)


def test_pad_crop_and_mixup_by_hand():
    x = jax.random.normal(jax.random.key(0), (3, 6, 6, 2))
    rcfg = _cifar_rcfg(pad_crop=2, pad_fill=(-5.0, 7.0), flip=False)
    p = jr.aug_params(jax.random.key(1), 0, 0, 3, 3, (6, 6), rcfg)
    assert p.pad_Bx2.shape == (3, 2) and int(p.pad_Bx2.min()) >= 0 and int(p.pad_Bx2.max()) <= 4
    assert 0.0 < float(p.mix_lam) < 1.0
    # offsets (2, 2) and lambda 1: the gathered images themselves
    ident = p._replace(pad_Bx2=jnp.full((3, 2), 2, jnp.int32), mix_lam=jnp.float32(1.0))
    np.testing.assert_array_equal(jr.apply_aug(x, ident, rcfg), x[p.idx_B])
    # offset (0, 0): the image moves down-right by 2, the top rows are the fill value
    shifted = ident._replace(pad_Bx2=jnp.zeros((3, 2), jnp.int32))
    got = np.asarray(jr.apply_aug(x, shifted, rcfg))
    np.testing.assert_array_equal(got[:, 2:, 2:], np.asarray(x[p.idx_B])[:, :4, :4])
    np.testing.assert_array_equal(got[:, :2, :, 0], -5.0)
    np.testing.assert_array_equal(got[:, :, :2, 1], 7.0)
    # MixUp: lam x + (1 - lam) x[perm] of the cropped images, one lambda per batch
    mixed = np.asarray(jr.apply_aug(x, p._replace(pad_Bx2=ident.pad_Bx2), rcfg))
    xb = np.asarray(x[p.idx_B])
    lam = float(p.mix_lam)
    np.testing.assert_allclose(mixed, lam * xb + (1 - lam) * xb[np.asarray(p.mix_perm_B)],
                               rtol=1e-6, atol=1e-6)
    # the options only add draws: without them, the older parameters are unchanged
    plain = jr.RelabelConfig()
    a = jr.aug_params(jax.random.key(4), 1, 0, 3, 2, (6, 6), plain)
    b = jr.aug_params(jax.random.key(4), 1, 0, 3, 2, (6, 6), _cifar_rcfg(crop_min_scale=0.08,
                                                                        mixup_alpha=0.0,
                                                                        cutmix_alpha=1.0))
    for f in ("idx_B", "box_Bx4", "flip_B", "mix_perm_B", "mix_box_4"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_sre2l_cifar_stored_labels_equal_online():
    k_cls, shape = 3, (8, 8, 2)
    x = jax.random.normal(jax.random.key(0), (7, *shape))
    w = jax.random.normal(jax.random.key(1), (128, 8))
    w2 = jax.random.normal(jax.random.key(2), (8, k_cls))
    teacher = lambda xb: jnp.tanh(xb.reshape(xb.shape[0], -1) @ w) @ w2  # noqa: E731
    rcfg = _cifar_rcfg(pad_fill=(-1.5, 0.5), top_k=2)
    key, epochs, bs = jax.random.key(3), 2, 3  # 3 steps per epoch, the last one padded
    stored = jax.jit(jr.generate_labels, static_argnums=(0, 3, 4, 5))(
        teacher, x, key, epochs, bs, rcfg)
    online = jax.jit(jr.online_labels, static_argnums=(0, 5, 6))
    for e in range(epochs):
        for s in range(3):
            v, i, *_ = online(teacher, x, key, e, s, bs, rcfg)
            np.testing.assert_array_equal(stored.values_ExSxBxk[e, s], v)
            np.testing.assert_array_equal(stored.indices_ExSxBxk[e, s], i)
    student = get_model("convnet_d2_w4", k_cls, shape)
    cfg = TrainConfig(epochs=epochs, batch_size=bs, lr=1e-3, weight_decay=0.01,
                      schedule="cosine", optimizer="adamw", dsa="")
    train = jax.jit(jr.train_student, static_argnums=(1, 2, 3, 5))
    v_on = train(jax.random.key(9), student, cfg, rcfg, x, teacher, None, key)
    v_st = train(jax.random.key(9), student, cfg, rcfg, x, None, stored, key)
    for a, b in zip(jax.tree.leaves(v_on), jax.tree.leaves(v_st)):
        np.testing.assert_array_equal(a, b)
