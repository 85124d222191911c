"""FRePo: the kernel-ridge-regression loss against a float64 numpy closed form, the image
gradient (finite differences in float64), the pool's staggered start and resets, and the
CLI end to end (deterministic, bit-exact resume).

Tiny on purpose: 3 classes, 8x8 grey images, ConvNet-D2 of width 8.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import artefact
from jaxdd.cli import main
from jaxdd.methods.frepo import (FRePoBatch, FRePoConfig, centred_targets, features,
                                 frepo_keys, frepo_loss, krr_loss, label_margin_loss,
                                 make_frepo)
from jaxdd.evaluate import get_protocol, label_targets
from jaxdd.models import get_model
from jaxdd.train import TrainConfig, train_network

K, IPC, HW, B = 3, 2, 8, 12
CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "frepo", "fashion_mnist_cpu.py")


@pytest.fixture(scope="module")
def model():
    return get_model("convnet_d2_w8", K, (HW, HW, 1))


def _syn_and_batch(seed=0):
    k = jax.random.split(jax.random.key(seed), 3)
    x_syn = jax.random.normal(k[0], (K * IPC, HW, HW, 1))
    y_cls = jnp.repeat(jnp.arange(K), IPC)
    batch = FRePoBatch(jax.random.normal(k[1], (B, HW, HW, 1)), jnp.arange(B) % K)
    return x_syn, y_cls, batch


def _krr_numpy(fs, ys, ft, yt, reg):
    """The closed form in float64: 1/2 mean_b ||K_ts (K_ss + reg tr(K_ss)/n I)^-1 Y_s - Y_t||^2."""
    fs, ys, ft, yt = (np.asarray(a, np.float64) for a in (fs, ys, ft, yt))
    k_ss, k_ts = fs @ fs.T, ft @ fs.T
    n = len(fs)
    pred = k_ts @ np.linalg.solve(k_ss + reg * np.trace(k_ss) / n * np.eye(n), ys)
    return 0.5 * np.mean(np.sum((pred - yt) ** 2, -1)), pred


@pytest.mark.parametrize("reg", [1e-6, 1e-2])
def test_krr_loss_equals_numpy_float64_closed_form(reg):
    rng = np.random.default_rng(0)
    fs, ft = rng.normal(size=(6, 20)), rng.normal(size=(5, 20))   # n < D: K_ss invertible
    ys = rng.normal(size=(6, K))
    yt = np.asarray(centred_targets(jnp.arange(5) % K, K))
    want, want_pred = _krr_numpy(fs, ys, ft, yt, reg)
    with jax.enable_x64(True):
        got, pred = krr_loss(jnp.asarray(fs), jnp.asarray(ys), jnp.asarray(ft), jnp.asarray(yt), reg)
        assert got.dtype == jnp.float64
        np.testing.assert_allclose(float(got), want, rtol=1e-10)
        np.testing.assert_allclose(np.asarray(pred), want_pred, rtol=1e-8, atol=1e-10)
    got32, _ = jax.jit(krr_loss, static_argnums=4)(*(jnp.asarray(a, jnp.float32)
                                                     for a in (fs, ys, ft, yt)), reg)
    np.testing.assert_allclose(float(got32), want, rtol=1e-4)


def test_targets_and_label_margin():
    y = np.asarray(centred_targets(jnp.array([0, 2]), K))
    np.testing.assert_allclose(y, [[2 / 3, -1 / 3, -1 / 3], [-1 / 3, -1 / 3, 2 / 3]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(centred_targets(jnp.array([1]), 10, scale=True)),
                               np.asarray(centred_targets(jnp.array([1]), 10)), rtol=1e-7)
    # margin top1 - top2: 0.1 (kept) and 2.0 (capped at 1/K)
    labels = jnp.array([[0.5, 0.4, 0.0], [3.0, 1.0, 0.0]])
    np.testing.assert_allclose(float(label_margin_loss(labels)), -(0.1 + 1 / 3) / 2, rtol=1e-5)


def test_image_gradient_nonzero_finite_and_matches_finite_difference(model):
    x_syn, y_cls, batch = _syn_and_batch()
    variables = model.init(jax.random.key(5))
    y_syn = centred_targets(y_cls, K)
    feat_t = features(model, variables, batch.x_real_BxHWC)

    def loss(x):
        return frepo_loss(model, variables, x, y_syn, feat_t, batch.y_real_B, 1e-3, True)[0]

    g = jax.jit(jax.grad(loss))(x_syn)
    assert np.isfinite(np.asarray(g)).all() and float(jnp.abs(g).max()) > 0
    with jax.enable_x64(True):
        v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), variables)
        x64 = jnp.asarray(x_syn, jnp.float64)
        ft64 = jax.jit(features, static_argnums=0)(model, v64,
                                                   jnp.asarray(batch.x_real_BxHWC, jnp.float64))
        y64 = jnp.asarray(y_syn, jnp.float64)

        @jax.jit
        def loss64(x):
            return frepo_loss(model, v64, x, y64, ft64, batch.y_real_B, 1e-3, True)[0]

        g64 = jax.jit(jax.grad(loss64))(x64)
        assert g64.dtype == jnp.float64
        i = tuple(int(a) for a in np.unravel_index(np.argmax(np.abs(np.asarray(g64))), g64.shape))
        eps = 1e-6
        fd = (loss64(x64.at[i].add(eps)) - loss64(x64.at[i].add(-eps))) / (2 * eps)
        np.testing.assert_allclose(float(g64[i]), float(fd), rtol=1e-6)
        # The float32 gradient is the same function.
        np.testing.assert_allclose(np.asarray(g), np.asarray(g64), rtol=2e-2, atol=1e-4)


def test_pool_starts_staggered_and_resets_at_the_configured_step(model):
    cfg = FRePoConfig(pool_size=3, max_online_updates=6, batch_real=B)
    d = make_frepo(cfg, model, K, total_steps=10)
    x_syn, y_cls, batch = _syn_and_batch()
    state = d.init(jax.random.key(1), x_syn, y_cls)
    assert state.pool.steps.tolist() == [0, 2, 4] and state.syn.y_syn.shape == (K * IPC, K)

    # One model: it trains while its count is <= max_online_updates, then is replaced.
    cfg1 = FRePoConfig(pool_size=1, max_online_updates=2, batch_real=B)
    d1 = make_frepo(cfg1, model, K, total_steps=10)
    step = jax.jit(d1.step)
    state = d1.init(jax.random.key(1), x_syn, y_cls)
    counts, resets = [], []
    for t in range(6):
        key = jax.random.key(100 + t)
        before = state.pool.variables
        state, m = step(state, batch, key)
        counts.append(int(state.pool.steps[0]))
        resets.append(int(m["reset"]))
        if m["reset"]:  # exactly a fresh init from the step's reset key
            fresh = model.init(frepo_keys(key)[1])
            jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[0], b),
                         state.pool.variables, fresh)
            assert int(state.pool.opt[0].count[0]) == 0
        else:  # one Adam step moved every parameter
            moved = jax.tree.map(lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
                                 before["params"], state.pool.variables["params"])
            assert all(jax.tree.leaves(moved))
        assert np.isfinite(float(m["loss"]))
    assert counts == [1, 2, 3, 0, 1, 2] and resets == [0, 0, 0, 1, 0, 0]


def test_fixed_labels_and_purity(model):
    x_syn, y_cls, batch = _syn_and_batch()
    d = make_frepo(FRePoConfig(pool_size=2, max_online_updates=4, learn_label=False,
                               batch_real=B, lr_syn=1e-2), model, K, total_steps=5)
    s0 = d.init(jax.random.key(1), x_syn, y_cls)
    step = jax.jit(d.step)
    s1, m1 = step(s0, batch, jax.random.key(3))
    s1b, _ = step(s0, batch, jax.random.key(3))
    np.testing.assert_array_equal(s1.syn.y_syn, s0.syn.y_syn)       # labels fixed
    assert float(m1["label_loss"]) == 0.0
    assert np.abs(np.asarray(s1.syn.x_syn_NHWC - s0.syn.x_syn_NHWC)).max() > 0
    jax.tree.map(np.testing.assert_array_equal, s1, s1b)            # a pure function of the key
    # Learned labels move.
    d2 = make_frepo(FRePoConfig(pool_size=2, max_online_updates=4, batch_real=B, lr_syn=1e-2),
                    model, K, total_steps=5)
    s2, _ = jax.jit(d2.step)(d2.init(jax.random.key(1), x_syn, y_cls), batch, jax.random.key(3))
    assert np.abs(np.asarray(s2.syn.y_syn - s0.syn.y_syn * np.sqrt(10 / K))).max() > 0


# ------------------------------------------------------------------------------------------
# Evaluation with the learned labels (FRePo's script/eval.py: MSE on y_proto)


def test_mse_protocol_uses_learned_targets_as_they_are():
    """The bug: learned FRePo targets were softmaxed (or dropped for the class): a softmax of
    the initial 0.9 / -0.1 targets leaves 0.23 on the class. Under loss "mse" they pass
    through untouched, and hard labels become FRePo's centred one-hot."""
    y = np.array([[0.9, -0.1, -0.1], [-0.3, 0.2, 0.7]], np.float32)
    np.testing.assert_array_equal(np.asarray(label_targets(y, K, "mse")), y)
    np.testing.assert_allclose(np.asarray(label_targets(y, K, "ce")).sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(label_targets(np.array([2]), K, "mse")),
                               np.asarray(centred_targets(jnp.array([2]), K)), rtol=1e-6)
    for name in ("frepo", "frepo_cpu"):
        p = get_protocol(name)
        assert p.train.loss == "mse" and p.train.optimizer == "adamw" and p.train.lr == 3e-4
        assert p.train.weight_decay == 0.0 and p.model.endswith("_none")
    with pytest.raises(ValueError, match="unknown loss"):
        TrainConfig(epochs=1, loss="l1")


def test_mse_training_regresses_the_targets():
    """A network trained with loss "mse" fits the regression targets themselves (logits ->
    y), not a softmax of them."""
    model = get_model("mlp_w32", K, (HW, HW, 1))
    x = jax.random.normal(jax.random.key(0), (4, HW, HW, 1))
    y = jnp.array([[0.9, -0.1, -0.8], [-0.3, 0.2, 0.1], [0.0, 0.5, -0.5], [1.5, -1.0, -0.5]])
    cfg = TrainConfig(epochs=300, batch_size=4, lr=1e-2, weight_decay=0.0, schedule="constant",
                      optimizer="adamw", loss="mse", dsa="")
    v = jax.jit(lambda k: train_network(k, model, cfg, x, y))(jax.random.key(1))
    np.testing.assert_allclose(np.asarray(model.apply(v, x)), np.asarray(y), atol=0.05)


# ------------------------------------------------------------------------------------------
# The CLI end to end


def _sets(npz):
    return [f"dataset=npz:{npz}", "model=convnet_d2_w8_bn", "iterations=6", "ckpt_every=2",
            "frepo.batch_real=16", "frepo.pool_size=3", "frepo.max_online_updates=2",
            "frepo.lr_syn=0.01", "frepo.reg=0.001", "eval.protocol=smoke", "eval.seeds=2",
            "eval.overrides={'loss': 'mse'}"]


def _distill(capsys, out, sets, *extra):
    argv = ["distill", "--config", CONFIG, "--ipc", "10", "--out", str(out), "--quiet", "--json"]
    for s in sets:
        argv += ["--set", s]
    code = main(argv + list(extra))
    o, e = capsys.readouterr()
    assert code == 0, e
    return json.loads(o.strip().splitlines()[-1])


def test_cli_distill_is_deterministic_and_resumes_bit_exactly(tiny_npz, tmp_path, capsys):
    sets = _sets(tiny_npz)
    full = _distill(capsys, tmp_path / "full", sets)
    art = artefact.load(full["artefacts"]["artefact"])
    assert art.meta["method"] == "frepo" and art.x_syn_NHWC.shape == (30, 8, 8, 1)
    # The learned regression targets are exported (FRePo saves y_proto) and the evaluation
    # trains on them with MSE, as FRePo's script/eval.py.
    assert art.y_syn.shape == (30, 3) and art.y_syn.dtype == np.float32 and art.lr is None
    assert art.y_syn.argmax(-1).tolist() == sorted(art.y_syn.argmax(-1).tolist())
    assert [len(full["evaluations"][k]["accuracies"]) for k in ("artefact", "random")] == [2, 2]
    assert {full["evaluations"][k]["loss"] for k in ("artefact", "random")} == {"mse"}
    log = [json.loads(line) for line in open(tmp_path / "full" / "run" / "metrics.jsonl")]
    assert log[-1]["iteration"] == 6 and np.isfinite(log[-1]["loss"])
    assert not any(m.get("nonfinite") for m in log)

    # Same seed, another directory: identical arrays.
    again = _distill(capsys, tmp_path / "again", sets, "--no-eval")
    art2 = artefact.load(again["artefacts"]["artefact"])
    np.testing.assert_array_equal(art2.x_syn_NHWC, art.x_syn_NHWC)
    np.testing.assert_array_equal(art2.y_syn, art.y_syn)

    # Interrupted after 3 steps (checkpoint at 2: the pool comes back from it), then resumed.
    part = tmp_path / "part"
    assert _distill(capsys, part, sets, "--stop-after", "3", "--no-eval")["stopped_early"]
    res = _distill(capsys, part, sets, "--no-eval")
    art3 = artefact.load(res["artefacts"]["artefact"])
    np.testing.assert_array_equal(art3.x_syn_NHWC, art.x_syn_NHWC)
    np.testing.assert_array_equal(art3.y_syn, art.y_syn)

    # The classes can be exported instead (for cross-entropy protocols).
    lab = _distill(capsys, tmp_path / "class", sets + ["frepo.export_labels='class'",
                                                       "iterations=2"], "--no-eval")
    y = artefact.load(lab["artefacts"]["artefact"]).y_syn
    assert y.shape == (30,) and y.tolist() == sorted(y.tolist())
