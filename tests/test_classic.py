"""Classic matchers (DC, DSA, DM, DataDAM): losses vanish at the real statistics, vmap over
classes equals the reference's Python loop, steps are pure functions of their key.

Tiny on purpose (3 classes, 8x8 grey images, ConvNet-D2 of width 8): the whole file must
stay well under a minute on a loaded 2-core CPU, so every jitted function is compiled once
(module-scope fixtures) and DSA uses a single cheap family.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.tree import tree_all_finite

from jaxdd.methods.datadam import (DataDAMConfig, attention_map, datadam_class_losses,
                                   make_datadam)
from jaxdd.methods.dc import DCConfig, dc_class_losses, dc_loops, make_dc
from jaxdd.methods.dm import DMConfig, dm_class_losses, make_dm
from jaxdd.augment import fyi_flip_concat
from jaxdd.methods.matching import (RealBatch, class_index_table, distance_wb,
                                    forward_features, gradient_match_loss, hard_labels,
                                    sample_real_batch)
from jaxdd.models import get_model

K, IPC, B, HW = 3, 2, 6, 8
AUG = "color"  # one cheap DSA family keeps compile times low


@pytest.fixture(scope="module")
def model():
    return get_model("convnet_d2_w8", K, (HW, HW, 1))


@pytest.fixture(scope="module")
def data():
    x_KxNxHWC = jax.random.normal(jax.random.key(0), (K, 10, HW, HW, 1))
    x_real = sample_real_batch(jax.random.key(1), x_KxNxHWC, B)
    x_syn = x_real[:, :IPC] + 0.3 * jax.random.normal(jax.random.key(2), (K, IPC, HW, HW, 1))
    return x_real, x_syn


# ------------------------------------------------------------------------------------------
# Shared pieces
# ------------------------------------------------------------------------------------------


def test_distance_wb_hand_computed():
    # Dense kernel (in=2, out=2): Flax stores (in, out), output units on the last axis.
    gr = jnp.array([[1.0, 0.0], [0.0, 2.0]])  # unit 0: (1, 0); unit 1: (0, 2)
    gs = jnp.array([[1.0, 1.0], [0.0, 2.0]])  # unit 0: (1, 0); unit 1: (1, 2)
    cos1 = 4.0 / (2.0 * np.sqrt(5.0) + 1e-6)
    expected = (1 - 1.0 / (1.0 + 1e-6)) + (1 - cos1)
    np.testing.assert_allclose(distance_wb(gr, gs), expected, rtol=1e-6)
    # Biases / norm scales are ignored; a conv kernel HWIO groups by O.
    assert float(distance_wb(jnp.ones(3), -jnp.ones(3))) == 0.0
    k_real = jnp.ones((3, 3, 2, 4))
    np.testing.assert_allclose(distance_wb(k_real, -k_real), 4 * (1 + 18 / (18 + 1e-6)), rtol=1e-6)
    # A dead unit (zero gradient) gives a finite loss and a finite gradient.
    g = jax.grad(lambda s: distance_wb(gr, s))(jnp.zeros((2, 2)))
    assert np.all(np.isfinite(g))
    for metric in ("ours", "mse", "cos"):
        tree = {"a": gr, "b": jnp.ones(2)}
        assert float(gradient_match_loss(tree, tree, metric)) < 1e-5


def test_sample_real_batch_padded_table():
    y = np.array([0, 1, 0, 2, 1, 0, 2, 2, 1, 0])
    x = jnp.arange(10, dtype=jnp.float32).reshape(10, 1, 1, 1)
    table, counts = class_index_table(y, K)
    xb = np.asarray(jax.jit(sample_real_batch, static_argnums=2)(jax.random.key(3), (x, table, counts), 3))
    assert xb.shape == (K, 3, 1, 1, 1)
    for c in range(K):
        idx = xb[c].reshape(-1).astype(int)
        assert len(set(idx)) == 3 and np.all(y[idx] == c)


def test_forward_features_reads_convnet(model):
    x = jax.random.normal(jax.random.key(4), (2, HW, HW, 1))
    v = model.init(jax.random.key(5))
    f, logits = jax.jit(lambda v, x: (forward_features(model, v, x, train=False),
                                      model.apply(v, x)))(v, x)
    np.testing.assert_allclose(f.logits_BxK, logits, rtol=1e-6)
    assert f.emb_BxD.shape == (2, 8 * (HW // 4) ** 2)
    assert [b.shape for b in f.blocks] == [(2, HW, HW, 8), (2, HW // 2, HW // 2, 8)]
    assert all(float(b.min()) >= 0 for b in f.blocks)  # post-ReLU
    # The embedding really is the classifier's input.
    dense = v["params"]["TorchDense_0"]["Dense_0"]
    np.testing.assert_allclose(f.emb_BxD @ dense["kernel"] + dense["bias"][None, :], f.logits_BxK, rtol=1e-5,
                               atol=1e-6)


def test_attention_map_is_normalised():
    f = jnp.abs(jax.random.normal(jax.random.key(6), (2, 4, 4, 3)))
    a = attention_map(f, power=4.0)
    np.testing.assert_allclose(jnp.linalg.norm(a, axis=-1), 1.0, rtol=1e-6)
    ref = jnp.sum(f ** 4, -1).reshape(2, -1)
    np.testing.assert_allclose(a, ref / jnp.linalg.norm(ref, axis=-1, keepdims=True), rtol=1e-6)


def test_fyi_concat():
    x = jnp.arange(2 * 2 * 3).reshape(2, 2, 3, 1).astype(jnp.float32)
    y = fyi_flip_concat(x)
    assert y.shape == (4, 2, 3, 1)
    np.testing.assert_array_equal(y[:2], x)
    np.testing.assert_array_equal(y[2:], x[:, :, ::-1])


def test_dc_loops_reference_table():
    assert dc_loops(1) == (1, 1) and dc_loops(10) == (10, 50) and dc_loops(50) == (50, 10)
    with pytest.raises(ValueError):
        dc_loops(7)


# ------------------------------------------------------------------------------------------
# Losses: zero at the real statistics, positive otherwise
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def losses(model):
    """All per-class losses of (real, syn) under one network, jitted once."""
    dam_cfg = DataDAMConfig(dsa_strategy=AUG)

    @jax.jit
    def f(x_real, x_syn, key):
        v = model.init(jax.random.key(7))
        return {
            "dm": dm_class_losses(model, v, x_real, x_syn, key, AUG),
            "dc": dc_class_losses(model, v, x_real, x_syn, key, AUG),
            "datadam": sum(datadam_class_losses(model, v, x_real, x_syn, key, dam_cfg)),
        }

    return f


def test_losses_vanish_when_syn_is_real(losses, data):
    x_real, x_syn = data
    key = jax.random.key(8)
    same = losses(x_real, x_real, key)  # same images, same siamese draw -> same statistics
    other = losses(x_real, x_syn, key)
    for name in ("dm", "dc", "datadam"):
        assert same[name].shape == (K,)
        # DC: 1 - |g|^2 / (|g|^2 + 1e-6) per unit, ~0 but not exactly.
        if name == "dc":
            # Identical gradients: per output unit 1 - |g|^2 / (|g|^2 + 1e-6), the reference's
            # epsilon, so the minimum is small but not exactly 0.
            assert float(same[name].max()) < 5e-3
        else:
            np.testing.assert_allclose(same[name], 0.0, atol=1e-6)
        assert float(other[name].min()) > 20 * max(float(same[name].max()), 1e-4), name


def test_dm_vmap_equals_python_loop_over_classes(model, data):
    """The vmapped per-class DM loss equals the reference's loop: per class its own siamese
    DSA draw (key split(key, K)[c]) and its own forward passes."""
    from jaxdd.augment import siamese_dsa

    x_real, x_syn = data
    key = jax.random.key(9)
    v = model.init(jax.random.key(10))

    @jax.jit
    def both(x_real, x_syn):
        vec = dm_class_losses(model, v, x_real, x_syn, key, AUG)
        loop = []
        for c, k_c in enumerate(jax.random.split(key, K)):
            r, s = siamese_dsa(k_c, x_real[c], x_syn[c], AUG)
            e_r = forward_features(model, v, r, True).emb_BxD.mean(0)
            e_s = forward_features(model, v, s, True).emb_BxD.mean(0)
            loop.append(jnp.sum((e_r - e_s) ** 2))
        return vec, jnp.stack(loop)

    vec, loop = both(x_real, x_syn)
    np.testing.assert_allclose(vec, loop, rtol=1e-5)


def test_prepare_pairs_map_equals_vmap_over_classes(data, monkeypatch):
    """`over_classes` runs the classes' DSA draws in a lax.map (one family per class) or a
    vmap (every family computed, then selected): the same images and the same gradient."""
    from jaxdd.methods import matching

    x_real, x_syn = data
    key = jax.random.key(13)
    strategy = "color_crop_cutout_flip_scale_rotate"
    pairs = lambda x_syn: matching.prepare_pairs(x_real, x_syn, key, strategy, False)
    loss = lambda x_syn: sum(jnp.sum(jnp.sin(a)) for a in pairs(x_syn))
    out = {}
    for mode in ("map", "vmap"):
        monkeypatch.setattr(matching, "CLASS_LOOP", mode)
        # new function objects per mode: jit would otherwise reuse the first mode's trace
        out[mode] = (jax.jit(lambda x: pairs(x))(x_syn),
                     jax.jit(lambda x: jax.grad(loss)(x))(x_syn))
    for a, b in zip(out["map"][0], out["vmap"][0]):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out["map"][1], out["vmap"][1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(out["map"][0][1], x_syn)   # the draw changed the images


def test_dm_fyi_is_matching_the_mirrored_union(model, data):
    x_real, x_syn = data
    v = model.init(jax.random.key(11))
    key = jax.random.key(12)
    f = jax.jit(lambda xs, fyi: dm_class_losses(model, v, x_real, xs, key, "none", fyi),
                static_argnums=1)
    union = jax.vmap(fyi_flip_concat)(x_syn)
    np.testing.assert_allclose(f(x_syn, True), f(union, False), rtol=1e-5)


# ------------------------------------------------------------------------------------------
# Distillers: purity, determinism per key, the images move
# ------------------------------------------------------------------------------------------

# (make, config, model name). DM and DC run on an MLP (fast to compile; the embedding is its
# last hidden layer); DC's siamese DSA is covered by the loss tests above.
DISTILLERS = {
    "dm": (make_dm, DMConfig(dsa_strategy=AUG), "mlp_w16"),
    "datadam": (make_datadam, DataDAMConfig(dsa_strategy=AUG), "convnet_d2_w8"),
    # One step = one outer step; outer_loop=2 so that both branches (train / re-init) run.
    "dc_fyi": (make_dc, DCConfig(outer_loop=2, inner_loop=1, fyi=True), "mlp_w16"),
}


@pytest.mark.parametrize("name", list(DISTILLERS))
def test_step_deterministic_per_key(name, data):
    make, cfg, model_name = DISTILLERS[name]
    x_real, x_syn = data
    d = make(cfg, get_model(model_name, K, (HW, HW, 1)), K)
    state = d.init(jax.random.key(13), x_syn.reshape(-1, HW, HW, 1), hard_labels(K, IPC))
    step = jax.jit(d.step)
    s1, m1 = step(state, RealBatch(x_real), jax.random.key(14))
    s1b, _ = step(state, x_real, jax.random.key(14))
    s2, _ = step(state, x_real, jax.random.key(15))
    x0 = state.syn.x_syn_NHWC
    np.testing.assert_array_equal(s1.syn.x_syn_NHWC, s1b.syn.x_syn_NHWC)
    assert not np.allclose(s1.syn.x_syn_NHWC, x0)
    assert not np.allclose(s1.syn.x_syn_NHWC, s2.syn.x_syn_NHWC)
    assert all(np.all(np.isfinite(np.asarray(v))) for v in m1.values())
    assert bool(tree_all_finite((m1["loss"], s1))) and float(m1["loss"]) > 0
    np.testing.assert_array_equal(s1.syn.y_syn, hard_labels(K, IPC))
    assert int(s1.iteration) == 1
    if name == "dc_fyi":
        # Outer step 0 -> 1: the network was trained on the synthetic set (it moved); the step
        # after it closes the iteration (no training) and the next one starts a fresh network.
        assert int(s1.outer_step) == 1
        moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), s1.net, state.net)
        assert max(jax.tree.leaves(moved)) > 0
        s3, m3 = step(s1, x_real, jax.random.key(16))
        assert int(s3.outer_step) == 0 and bool(tree_all_finite((m3["loss"], s3)))


def test_dc_bn_model_and_dead_units_stay_finite():
    """BN ConvNet: BN statistics refreshed from real images; dead units (zero gradient rows)
    must not turn the update into NaN (safe norm)."""
    m = get_model("convnet_d1_w4_bn", 2, (4, 4, 1))
    x_real = jax.random.normal(jax.random.key(17), (2, 4, 4, 4, 1))
    d = make_dc(dataclasses.replace(DCConfig(), outer_loop=1, inner_loop=1), m, 2)
    state = d.init(jax.random.key(18), x_real[:, :1].reshape(-1, 4, 4, 1), hard_labels(2, 1))
    new, metrics = jax.jit(d.step)(state, x_real, jax.random.key(19))
    assert bool(tree_all_finite((metrics["loss"], new)))
    assert int(new.outer_step) == 0  # outer_loop=1: every step is a fresh network


def test_evaluation_result_records_its_protocol(tmp_path):
    """What `distill` appends to evaluations.json names the protocol as it ran: model,
    augmentation, the whole training recipe (overrides applied) and whether it is reduced."""
    from jaxdd import artefact
    from jaxdd.evaluate import get_protocol
    from jaxdd.evaluate.core import EvalData, evaluate_set
    x = np.asarray(jax.random.normal(jax.random.key(0), (6, 8, 8, 1)), np.float32)
    y = np.array([0, 0, 1, 1, 2, 2], np.int32)
    data = EvalData(x, y, x, y, 3, (8, 8, 1))
    for name, augment, over in (("dc", True, {}), ("cpu", False, {"epochs": 2})):
        proto = get_protocol(name, augment=augment, **{"epochs": 1, "batch_size": 4, **over})
        proto = dataclasses.replace(proto, model="mlp_w16")  # cheap stand-in network
        r = evaluate_set(jax.random.key(1), x, y, data, proto, seeds=1)
        assert r["protocol"] == name and r["model"] == "mlp_w16" and r["augment"] is None
        assert r["protocol_train"]["dsa"] == "" and r["protocol_train"]["batch_size"] == 4
        assert r["protocol_train"]["epochs"] == (1 if name == "dc" else 2)
        assert r["protocol_reduced"] == (name == "cpu") and r["protocol_description"]
    # and it survives the artefact's JSON
    art = str(tmp_path / "art")
    os.makedirs(art)
    artefact.add_evaluation(art, r)
    with open(os.path.join(art, "evaluations.json")) as f:
        assert json.load(f)[0]["protocol_train"] == r["protocol_train"]
