"""DCC (`DCConfig.matching = "all_classes"`): the matching term is one layer-wise distance
between the gradients of the CE of all classes together, checked against a direct
computation; it differs from DC's per-class sum; the warm-up runs the per-class step.

Tiny (3 classes, 8x8 grey images, ConvNet-D2 width 8), as tests/test_classic.py.
"""

from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdd.configs import ConfigError, load_config
from jaxdd.methods.dc import DCConfig, dc_all_classes_loss, dc_class_losses, make_dc
from jaxdd.methods.matching import hard_labels, sample_real_batch
from jaxdd.models import get_model

K, IPC, B, HW = 3, 2, 6, 8


@pytest.fixture(scope="module")
def setup():
    model = get_model("convnet_d2_w8", K, (HW, HW, 1))
    x_real = sample_real_batch(jax.random.key(1), jax.random.normal(jax.random.key(0), (K, 10, HW, HW, 1)), B)
    x_syn = x_real[:, :IPC] + 0.3 * jax.random.normal(jax.random.key(2), (K, IPC, HW, HW, 1))
    return model, model.init(jax.random.key(7)), x_real, x_syn


def _hand_distance(g_real, g_syn):
    """DC eq. (10) written out: per layer with >= 2 axes, sum over output units (last axis in
    Flax) of 1 - cos(real unit gradient, synthetic unit gradient), eps 1e-6."""
    total = 0.0
    for r, s in zip(jax.tree.leaves(g_real), jax.tree.leaves(g_syn)):
        r, s = np.asarray(r, np.float64), np.asarray(s, np.float64)
        if r.ndim < 2:
            continue
        for o in range(r.shape[-1]):
            a, b = r[..., o].ravel(), s[..., o].ravel()
            total += 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-6)
    return total


def _total_ce_grad(model, v, x_KxNxHWC):
    x = x_KxNxHWC.reshape(-1, HW, HW, 1)
    y = jnp.repeat(jnp.arange(K), x_KxNxHWC.shape[1])

    def ce(p):
        return optax.softmax_cross_entropy_with_integer_labels(model.apply({**v, "params": p}, x), y).mean()

    return jax.grad(ce)(v["params"])


def test_all_classes_loss_equals_direct_computation(setup):
    model, v, x_real, x_syn = setup
    got = dc_all_classes_loss(model, v, x_real, x_syn, jax.random.key(3))
    want = _hand_distance(_total_ce_grad(model, v, x_real), _total_ce_grad(model, v, x_syn))
    np.testing.assert_allclose(float(got), want, rtol=2e-5)
    # Its gradient w.r.t. the synthetic images is that of the same formula in JAX.
    g = jax.grad(lambda xs: dc_all_classes_loss(model, v, x_real, xs, jax.random.key(3)))(x_syn)

    def direct(xs):
        gr = jax.lax.stop_gradient(_total_ce_grad(model, v, x_real))
        gs = _total_ce_grad(model, v, xs)
        out = 0.0
        for r, s in zip(jax.tree.leaves(gr), jax.tree.leaves(gs)):
            if r.ndim >= 2:
                a, b = r.reshape(-1, r.shape[-1]).T, s.reshape(-1, s.shape[-1]).T
                out += jnp.sum(1 - jnp.sum(a * b, -1) / (jnp.linalg.norm(a, axis=-1) * jnp.linalg.norm(b, axis=-1) + 1e-6))
        return out

    np.testing.assert_allclose(g, jax.grad(direct)(x_syn), rtol=1e-3, atol=1e-6)


def test_all_classes_differs_from_per_class_and_shares_augmentations(setup):
    model, v, x_real, x_syn = setup
    key = jax.random.key(4)
    per_class = float(dc_class_losses(model, v, x_real, x_syn, key).sum())
    together = float(dc_all_classes_loss(model, v, x_real, x_syn, key))
    assert abs(per_class - together) > 1e-2 * max(per_class, together)
    # With DSA: real and synthetic images of a class share their draw, so syn == real -> ~0.
    same = float(dc_all_classes_loss(model, v, x_real, x_real, key, "color_crop"))
    assert same < 5e-3 < float(dc_all_classes_loss(model, v, x_real, x_syn, key, "color_crop"))


def test_step_uses_the_option_after_the_warmup(setup):
    model, _, x_real, x_syn = setup
    x0, y0 = x_syn.reshape(-1, HW, HW, 1), hard_labels(K, IPC)
    common = dict(outer_loop=1, inner_loop=1, init="real")
    dc = make_dc(DCConfig(**common), model, K)
    dcc = make_dc(DCConfig(matching="all_classes", dcc_warmup_iterations=1, **common), model, K)
    key = jax.random.key(5)
    s_dc, s_dcc = dc.init(key, x0, y0), dcc.init(key, x0, y0)
    step_dc, step_dcc = jax.jit(dc.step), jax.jit(dcc.step)
    # Iteration 0 is in the warm-up: DCC runs DC's per-class step (same math; the two
    # compiled programs may round differently in the last bit).
    a, ma = step_dc(s_dc, x_real, key)
    b, mb = step_dcc(s_dcc, x_real, key)
    np.testing.assert_allclose(a.syn.x_syn_NHWC, b.syn.x_syn_NHWC, rtol=0, atol=1e-6)
    np.testing.assert_allclose(float(ma["loss"]), float(mb["loss"]), rtol=1e-6)
    # From iteration 1 on, the all-classes loss drives the update.
    a2, ma2 = step_dc(a, x_real, key)
    b2, mb2 = step_dcc(a, x_real, key)
    assert not np.allclose(a2.syn.x_syn_NHWC, b2.syn.x_syn_NHWC)
    net = jax.random.split(key, 3)[0]
    v = model.init(net)
    want = dc_all_classes_loss(model, v, x_real, a.syn.x_syn_NHWC.reshape(K, IPC, HW, HW, 1),
                               jax.random.split(key, 3)[1])
    np.testing.assert_allclose(float(mb2["loss"]), float(want), rtol=1e-5)


def test_bad_matching_is_a_config_error():
    with pytest.raises(ValueError, match="matching"):
        DCConfig(matching="both")
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "classic", "dcc_fashion_mnist_cpu.py")
    cfg = load_config(path, ipc=1)
    assert cfg["dsa"]["matching"] == "all_classes" and cfg["dsa"]["dcc_warmup_iterations"] == 75
    with pytest.raises(ConfigError, match="dsa.matching"):
        load_config(path, ipc=1, sets=["dsa.matching='classwise'"])
    with pytest.raises(ConfigError, match="dcc_warmup_outer"):
        load_config(path, ipc=1, sets=["dsa.dcc_warmup_outer=-1"])


@pytest.mark.slow
def test_dcc_preset_distills_end_to_end(tiny_npz, tmp_path, capsys):
    from jaxdd.cli import main

    out = str(tmp_path / "dcc")
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "classic", "dcc_fashion_mnist_cpu.py")
    argv = ["distill", "--config", path, "--ipc", "1", "--out", out, "--quiet", "--json"]
    for s in [f"dataset=npz:{tiny_npz}", "model=convnet_d2_w4", "iterations=3", "ckpt_every=3",
              "dsa.batch_real=8", "dsa.dsa_strategy='crop'", "dsa.dcc_warmup_iterations=1",
              "eval.protocol=smoke", "eval.seeds=1"]:
        argv += ["--set", s]
    assert main(argv) == 0, capsys.readouterr()[1]
    res = json.loads(capsys.readouterr()[0].strip().splitlines()[-1])
    log = [json.loads(line) for line in open(os.path.join(out, "run", "metrics.jsonl"))]
    assert np.isfinite(log[-1]["loss"]) and 0.0 <= res["accuracy_mean"] <= 1.0
