"""Statistics matching: BN capture, SRe2L loss, recover, CDA, G-VBSM vmap/EMA, DWA, relabel."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.tree import tree_all_finite

from jaxdd.augment.crops import cda_min_scale, random_resized_crop
from jaxdd.labels import relabel as R
from jaxdd.methods.statistics.capture import BNStat, bn_input_stats, bn_layer_paths
from jaxdd.methods.statistics.losses import bn_matching_loss, ema_stats, sre2l_loss
from jaxdd.methods.statistics.recover import (RecoverConfig, make_recover, recover_all,
                                              recover_batch_jit, stack_teachers)
from jaxdd.models import get_model
from jaxdd.models.layers import conv3x3_im2col
from jaxdd.train.loop import TrainConfig
from jaxdd.tree import safe_norm


class TinyBN(nn.Module):
    """1x1 conv -> BN -> dense: the first BN input is x @ W + b, easy to compute by hand."""

    train_mode_bn: bool = False  # build BN in train mode (bn_input_stats must still use eval)

    @nn.compact
    def __call__(self, x_NHWC, train: bool = False):
        h = nn.Conv(3, (1, 1))(x_NHWC)
        h = nn.BatchNorm(use_running_average=not (train or self.train_mode_bn))(h)
        return nn.Dense(4)(nn.relu(h).mean((1, 2)))


@functools.lru_cache(maxsize=None)
def _teacher():
    """convnet_d2_w8_bn on 8x8x3 with non-trivial running statistics (2 train-mode passes)."""
    model = get_model("convnet_d2_w8_bn", 4, (8, 8, 3))
    v = model.init(jax.random.key(0))
    train_pass = jax.jit(model.apply_train)
    for i in range(2):
        x = 1.5 * jax.random.normal(jax.random.key(10 + i), (16, 8, 8, 3)) + 0.3
        _, v = train_pass(v, x)
    return model, v


@functools.lru_cache(maxsize=None)
def _teacher_stats():
    """bn_input_stats of the teacher model, compiled once for all tests."""
    model, _ = _teacher()
    return jax.jit(lambda v, x: bn_input_stats(model, v, x))


def test_capture_equals_hand_computation():
    net = TinyBN()
    x = jax.random.normal(jax.random.key(0), (5, 4, 4, 2))
    v = net.init(jax.random.key(1), x)
    v = {**v, "batch_stats": {"BatchNorm_0": {"mean": jnp.arange(3.0), "var": jnp.arange(1.0, 4.0)}}}
    logits, stats = jax.jit(lambda v, x: bn_input_stats(net, v, x))(v, x)
    k, b = v["params"]["Conv_0"]["kernel"][0, 0], v["params"]["Conv_0"]["bias"]
    h = np.asarray(x).reshape(-1, 2) @ np.asarray(k) + np.asarray(b)
    np.testing.assert_allclose(stats[0].mean_C, h.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(stats[0].var_C, h.var(0), rtol=1e-5, atol=1e-6)  # biased
    np.testing.assert_array_equal(stats[0].running_var_C, jnp.arange(1.0, 4.0))
    np.testing.assert_allclose(logits, net.apply(v, x), rtol=1e-6)  # eval mode
    # A BN built in train mode is still run with its running statistics.
    logits_tm, _ = bn_input_stats(TinyBN(train_mode_bn=True), v, x)
    np.testing.assert_allclose(logits_tm, logits, rtol=1e-5, atol=1e-6)

    # A registry model: the first BN input is the first conv's output.
    model, tv = _teacher()
    xm = jax.random.normal(jax.random.key(2), (8, 8, 8, 3))
    _, st = _teacher_stats()(tv, xm)
    p = tv["params"]["Conv3x3_0"]
    h0 = np.asarray(conv3x3_im2col(xm, p["kernel"], 1) + p["bias"].reshape(1, 1, 1, -1)).reshape(-1, 8)
    np.testing.assert_allclose(st[0].mean_C, h0.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st[0].var_C, h0.var(0), rtol=1e-4, atol=1e-5)
    assert bn_layer_paths(model, tv, xm) == ["BatchNorm_0", "BatchNorm_1"]
    np.testing.assert_array_equal(st[1].running_mean_C, tv["batch_stats"]["BatchNorm_1"]["mean"])


def test_bn_loss_zero_when_matched_and_safe_gradients():
    model, tv = _teacher()
    x = jax.random.normal(jax.random.key(3), (8, 8, 8, 3))
    _, st = _teacher_stats()(tv, x)
    assert float(bn_matching_loss(st)) > 0.1
    # Set the running statistics to this batch's, layer by layer (later inputs depend on
    # earlier layers' normalisation).
    v = tv
    for layer in range(2):
        _, st = _teacher_stats()(v, x)
        name = f"BatchNorm_{layer}"
        v = {**v, "batch_stats": {**v["batch_stats"],
                                  name: {"mean": st[layer].mean_C, "var": st[layer].var_C}}}
    _, st = _teacher_stats()(v, x)
    assert float(bn_matching_loss(st)) < 1e-4
    # Exact zero of the norm: value 0, gradient 0 (a plain sqrt gives NaN).
    z = jnp.zeros(5)
    assert float(safe_norm(z)) == 0.0
    np.testing.assert_array_equal(jax.grad(safe_norm)(z), z)
    np.testing.assert_allclose(safe_norm(jnp.array([3.0, 4.0])), 5.0)
    same = [BNStat(a, b, a, b) for a, b in [(jnp.ones(3), 2 * jnp.ones(3))]]
    g = jax.grad(lambda s: bn_matching_loss(s))(same)
    assert all(bool(jnp.all(jnp.isfinite(leaf))) for leaf in jax.tree.leaves(g))


def test_vmap_over_two_teachers_equals_separate():
    model, tv = _teacher()
    tv2 = jax.tree.map(lambda a: a * 1.1 + 0.01, tv)
    stacked = stack_teachers([tv, tv2])
    x = jax.random.normal(jax.random.key(4), (4, 8, 8, 3))
    y = jnp.arange(4)
    loss_fn = lambda xx, v: sre2l_loss(xx, y, model, v)[0]

    @jax.jit
    def both(xx):
        sep = jnp.stack([loss_fn(xx, tv), loss_fn(xx, tv2)])
        g_sep = jax.grad(lambda z: loss_fn(z, tv) + loss_fn(z, tv2))(xx)
        vm = jax.vmap(loss_fn, in_axes=(None, 0))(xx, stacked)
        g_vm = jax.grad(lambda z: jax.vmap(loss_fn, in_axes=(None, 0))(z, stacked).sum())(xx)
        return sep, g_sep, vm, g_vm

    sep, g_sep, vm, g_vm = both(x)
    np.testing.assert_allclose(vm, sep, rtol=1e-5)
    np.testing.assert_allclose(g_vm, g_sep, rtol=1e-4, atol=1e-6)
    # G-VBSM EMA through the distiller: per-teacher averages, finite step.
    cfg = RecoverConfig(iterations=3, stacked_teachers=True, stat_ema=0.8)
    d = make_recover(cfg, model, stacked)
    state = jax.jit(d.init)(jax.random.key(5), x, y)
    assert state.ema[0][0].shape == (2, 8)  # (teachers, C) per layer
    state, m = jax.jit(d.step)(state, None, jax.random.key(6))
    assert bool(tree_all_finite((m["loss"], state)))
    # matched = ema_new + (stat - sg(stat)): value = new average, gradient = d stat.
    st = [BNStat(jnp.full(2, 2.0), jnp.full(2, 3.0), jnp.zeros(2), jnp.ones(2))]
    matched, new = ema_stats(st, [(jnp.zeros(2), jnp.ones(2))], 0.8)
    np.testing.assert_allclose(matched[0].mean_C, 0.2 * 2.0, rtol=1e-6)
    np.testing.assert_allclose(new[0][1], 0.8 + 0.2 * 3.0, rtol=1e-6)
    g = jax.grad(lambda m: ema_stats([st[0]._replace(mean_C=m)], [(jnp.zeros(2), jnp.ones(2))],
                                       0.8)[0][0].mean_C.sum())(st[0].mean_C)
    np.testing.assert_allclose(g, jnp.ones(2))


def test_cda_schedule_values():
    T, m = 100, 0.5
    for mode, mid in (("cosine", 0.08 + 0.92 * 0.5), ("linear", 0.08 + 0.92 * 0.5), ("step", 1.0)):
        vals = [float(cda_min_scale(t, T, m, mode)) for t in (0, 25, 50, 100)]
        np.testing.assert_allclose(vals, [1.0, mid, 0.08, 0.08], rtol=1e-6)
    assert float(cda_min_scale(0, 10, 1.0, "cosine")) == pytest.approx(1.0)
    # Identity crop: full box, no aspect change.
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
    crop = jax.jit(random_resized_crop, static_argnums=(3,))
    np.testing.assert_allclose(crop(jax.random.key(1), x, 1.0, (1.0, 1.0)), x, atol=1e-5)


def test_recover_deterministic_decreasing_and_finite():
    model, tv = _teacher()
    bounds = (-2 * np.ones(3, np.float32), 2 * np.ones(3, np.float32))
    # batch_size=2 makes recover_all below reuse the same compiled program.
    cfg = RecoverConfig(lr=0.1, iterations=8, crop=True, cda_mode="cosine", r_bn=0.05,
                          batch_size=2)
    run = lambda key, y: recover_batch_jit(cfg, model, tv, key, jnp.zeros((2, 8, 8, 3)), y, bounds)
    y = jnp.array([0, 1])
    x_a, m_a = run(jax.random.key(2), y)
    x_b, _ = run(jax.random.key(2), y)
    np.testing.assert_array_equal(x_a, x_b)  # deterministic per key (noise init + augmentation)
    assert m_a["loss"].shape == (8,) and bool(tree_all_finite((m_a["loss"], x_a)))  # noise init
    assert float(jnp.abs(x_a).max()) <= 2.0  # clipped to the bounds
    # Loss measured without augmentation: the last iterate beats the initial noise.
    eval_loss = jax.jit(lambda x: sre2l_loss(x, y, model, tv, r_bn=0.05)[0])
    x0 = jax.random.normal(jax.random.split(jax.random.key(2))[0], (2, 8, 8, 3))
    assert float(eval_loss(x_a)) < float(eval_loss(x0))
    # recover_all: class-major output; batch (ipc i, first class c0) reproducible alone.
    xs, ys = recover_all(cfg, model, tv, jax.random.key(7), 4, 2, (8, 8, 3), bounds)
    assert xs.shape == (8, 8, 8, 3) and ys.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    k = jax.random.fold_in(jax.random.fold_in(jax.random.key(7), 1), 2)
    x_alone, _ = run(k, jnp.array([2, 3]))
    np.testing.assert_array_equal(xs[5], x_alone[0])  # class 2, ipc 1
    np.testing.assert_array_equal(xs[7], x_alone[1])  # class 3, ipc 1


def test_dwa_perturbation_per_batch_no_leak():
    model, tv = _teacher()
    cfg = RecoverConfig(iterations=2, init="real", dwa_steps=3, dwa_rho=0.015)
    d = make_recover(cfg, model, tv)
    init = jax.jit(d.init)
    x1 = jax.random.normal(jax.random.key(1), (4, 8, 8, 3))
    x2 = jax.random.normal(jax.random.key(2), (4, 8, 8, 3))
    y = jnp.arange(4)
    fresh = init(jax.random.key(0), x2, y).teacher   # batch 2 alone
    t1 = init(jax.random.key(0), x1, y).teacher      # batch 1 first ...
    after = init(jax.random.key(0), x2, y).teacher   # ... does not change batch 2's teacher
    for a, b in zip(jax.tree.leaves(fresh), jax.tree.leaves(after)):
        np.testing.assert_array_equal(a, b)
    assert any(float(jnp.abs(a - b).max()) > 0 for a, b in zip(jax.tree.leaves(t1), jax.tree.leaves(fresh)))
    # Batch 2's perturbation starts from the clean teacher (the reference accumulates stale
    # gradients across batches) and has length <= rho; BN running statistics untouched.
    delta = jax.tree.map(lambda a, b: a - b, fresh["params"], tv["params"])
    dn = float(jnp.sqrt(sum(jnp.sum(jnp.square(l)) for l in jax.tree.leaves(delta))))
    assert 0 < dn <= 0.015 * (1 + 1e-4)  # K steps of length rho / K
    np.testing.assert_array_equal(fresh["batch_stats"]["BatchNorm_0"]["mean"],
                                  tv["batch_stats"]["BatchNorm_0"]["mean"])
    # Recovering against the perturbed teacher runs and stays finite.
    state, m = jax.jit(d.step)(init(jax.random.key(0), x2, y), None, jax.random.key(3))
    assert bool(tree_all_finite((m["loss"], state)))


def test_stored_labels_equal_online(tmp_path):
    x_syn = jax.random.normal(jax.random.key(0), (6, 8, 8, 3))
    tv = TinyBN().init(jax.random.key(1), x_syn)  # a cheap BN teacher (compile time)
    teacher_fn = lambda x: TinyBN().apply(tv, x)
    key, epochs, bs = jax.random.key(3), 2, 4  # 2 steps per epoch, last batch padded
    rcfg = R.RelabelConfig(top_k=2)  # fp16 values + uint8 indices, crop, flip, CutMix
    stored = jax.jit(R.generate_labels, static_argnums=(0, 3, 4, 5))(
        teacher_fn, x_syn, key, epochs, bs, rcfg)
    online = jax.jit(R.online_labels, static_argnums=(0, 5, 6))
    for e in range(epochs):
        for s in range(2):
            v, i, *_ = online(teacher_fn, x_syn, key, e, s, bs, rcfg)
            np.testing.assert_array_equal(stored.values_ExSxBxk[e, s], v)
            np.testing.assert_array_equal(stored.indices_ExSxBxk[e, s], i)
    assert stored.values_ExSxBxk.dtype == jnp.float16
    R.save_labels(str(tmp_path / "labels.npz"), stored, temperature=rcfg.temperature)
    loaded, meta = R.load_labels(str(tmp_path / "labels.npz"))
    np.testing.assert_array_equal(loaded.values_ExSxBxk, stored.values_ExSxBxk)
    np.testing.assert_array_equal(loaded.indices_ExSxBxk, stored.indices_ExSxBxk)
    assert float(meta["temperature"]) == rcfg.temperature
    assert R.label_bytes(stored) == R.estimate_label_bytes(8, epochs, 4, top_k=2) == 8 * 2 * 2 * 3
    assert stored.indices_ExSxBxk.dtype == jnp.uint8
    # A student trained on stored labels is the student trained online.
    student = get_model("mlp_w16", 4, (8, 8, 3))
    cfg = TrainConfig(epochs=epochs, batch_size=bs, lr=1e-3, weight_decay=0.01,
                      schedule="cosine", optimizer="adamw")
    train = jax.jit(R.train_student, static_argnums=(1, 2, 3, 5))
    v_on = train(jax.random.key(9), student, cfg, rcfg, x_syn, teacher_fn, None, key)
    v_st = train(jax.random.key(9), student, cfg, rcfg, x_syn, None, stored, key)
    for a, b in zip(jax.tree.leaves(v_on), jax.tree.leaves(v_st)):
        np.testing.assert_array_equal(a, b)
    assert any(float(jnp.abs(a - b).max()) > 0 for a, b in
               zip(jax.tree.leaves(v_on), jax.tree.leaves(student.init(jax.random.fold_in(jax.random.key(9), 0)))))
    # KL is 0 for identical logits and the T^2 factor scales it.
    s_logits = jnp.array([[1.0, 2.0, 0.5]])
    t_logits = jnp.array([[0.0, 3.0, -jnp.inf]])
    assert float(R.kd_loss(s_logits, s_logits, 20.0)[0]) == pytest.approx(0.0, abs=1e-7)
    kl = R.kd_loss(s_logits, t_logits, 2.0)
    assert bool(jnp.isfinite(kl).all()) and float(kl[0]) > 0
    np.testing.assert_allclose(R.kd_loss(s_logits, t_logits, 2.0, True), 4 * kl, rtol=1e-6)
