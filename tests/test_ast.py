"""AST options of trajectory matching (all off by default) on tiny inputs: each piece against
a direct computation. Distillation: intermediate matching, inner momentum, weight
perturbation, balanced inner loss, k-means initialisation. Experts: per-epoch loss scaling,
input-gradient penalty, the x0.6 lr step.

float64 (as tests/test_mtt.py) so that exact comparisons can be tight; the models are tiny
hand-written ones (no `jaxdd.models`) except in the expert tests.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.methods.base import SynState
from jaxdd.methods.mtt import (ExpertSegment, MTTConfig, ast_balance_factor, ast_perturb_weights,
                               kmeans_representatives, window_loss_and_grads)
from jaxdd.methods.tm_grad import (inner_cross_entropy, intermediate_steps, make_inner_schedule,
                                   param_distance_loss, unroll_inner)

K, S, HW = 3, 6, 4


@pytest.fixture(autouse=True)
def x64():
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", prev)


def conv_apply(params, x_NHWC):
    h = jax.lax.conv_general_dilated(x_NHWC, params["w"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["b"][None, None, None]
    return jnp.tanh(h).reshape(x_NHWC.shape[0], -1) @ params["wo"] + params["bo"][None]


def params(seed):
    rng = np.random.default_rng(seed)
    return {"w": 0.5 * rng.normal(size=(3, 3, 1, 2)), "b": 0.1 * rng.normal(size=2),
            "wo": 0.5 * rng.normal(size=(2 * HW * HW, K)), "bo": np.zeros(K)}


@pytest.fixture()
def syn():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(S, HW, HW, 1)))
    return SynState(x, jnp.asarray(np.repeat(np.arange(K), S // K), jnp.int32), jnp.log(jnp.asarray(0.05)))


def _hand_theta(x, y, lr, theta, idx_NxB, momentum=0.0, scale=1.0, upto=None):
    """The inner loop written as a Python loop: theta -= lr * (m b + grad(scale * CE))."""
    buf = jax.tree.map(jnp.zeros_like, theta)
    out = []
    for i, idx in enumerate(idx_NxB[:upto]):
        g = jax.grad(lambda th: scale * inner_cross_entropy(conv_apply(th, x[idx]), y[idx], "hard"))(theta)
        buf = jax.tree.map(lambda b, gi: momentum * b + gi, buf, g)
        theta = jax.tree.map(lambda p, b: p - lr * b, theta, buf)
        out.append(theta)
    return out


def _cfg(**kw):
    base = dict(syn_steps=4, expert_epochs=2, max_start=4, grad_mode="remat", image_chunks=1)
    return MTTConfig(**{**base, **kw})


def test_intermediate_steps_positions():
    assert intermediate_steps(20, 3) == (6, 12) and intermediate_steps(10, 2) == (5,)
    assert intermediate_steps(10, 1) == () and intermediate_steps(2, 3) == ()


def test_intermediate_matching(syn):
    key = jax.random.key(3)
    th0, thm, tht = params(1), params(2), params(3)
    seg = ExpertSegment(th0, tht, jax.tree.map(lambda a: a[None], thm))
    # One expert epoch: no intermediate term, the plain MTT loss and gradients exactly.
    one = _cfg(expert_epochs=1)
    plain, g_plain, _ = window_loss_and_grads(one, conv_apply, syn, seg, key)
    inter, g_inter, _ = window_loss_and_grads(dataclass_replace(one, ast_intermediate=True), conv_apply, syn, seg, key)
    assert float(plain) == float(inter)
    np.testing.assert_array_equal(g_plain.x_syn_NHWC, g_inter.x_syn_NHWC)
    # Two epochs: plain loss + ||theta_{N/2} - traj[s+1]||^2 / ||theta_0 - traj[s+1]||^2.
    cfg = _cfg(ast_intermediate=True)
    loss, grads, _ = window_loss_and_grads(cfg, conv_apply, syn, seg, key)
    idx, _ = make_inner_schedule(key, S, 4, None)
    thetas = _hand_theta(syn.x_syn_NHWC, syn.y_syn, 0.05, th0, idx)
    want = param_distance_loss(thetas[-1], th0, tht) + param_distance_loss(thetas[1], th0, thm)
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-10)
    base, _, _ = window_loss_and_grads(_cfg(), conv_apply, syn, seg, key)
    assert float(loss) > float(base) + 1e-3
    # bptt and remat agree with the extra term too.
    loss_b, grads_b, _ = window_loss_and_grads(dataclass_replace(cfg, grad_mode="bptt"), conv_apply, syn, seg, key)
    np.testing.assert_allclose(grads.x_syn_NHWC, grads_b.x_syn_NHWC, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="tesla"):
        _cfg(ast_intermediate=True, grad_mode="tesla")


def dataclass_replace(cfg, **kw):
    import dataclasses
    return dataclasses.replace(cfg, **kw)


def test_inner_momentum_is_heavy_ball(syn):
    key = jax.random.key(4)
    th0, tht = params(1), params(3)
    loss, _, _ = window_loss_and_grads(_cfg(inner_momentum=0.9), conv_apply, syn, ExpertSegment(th0, tht), key)
    idx, _ = make_inner_schedule(key, S, 4, None)
    theta_N = _hand_theta(syn.x_syn_NHWC, syn.y_syn, 0.05, th0, idx, momentum=0.9)[-1]
    np.testing.assert_allclose(float(loss), float(param_distance_loss(theta_N, th0, tht)), rtol=1e-10)
    plain = unroll_inner(conv_apply, syn.x_syn_NHWC, syn.y_syn, syn.log_lr, th0, idx,
                         jax.random.split(key, 4), label_kind="hard")
    assert float(param_distance_loss(plain, th0, tht)) != pytest.approx(float(loss), rel=1e-3)


def test_weight_perturbation():
    th = params(5)
    np.testing.assert_array_equal(ast_perturb_weights(jax.random.key(0), th, 0.0)["w"], th["w"])
    p = ast_perturb_weights(jax.random.key(0), th, 0.7)
    for k in ("b", "wo", "bo"):   # only 4-D (convolution) kernels move
        np.testing.assert_array_equal(p[k], th[k])
    # (w' - w) / w = alpha d / ||d||_F: Frobenius norm alpha.
    np.testing.assert_allclose(np.linalg.norm((p["w"] - th["w"]) / th["w"]), 0.7, rtol=1e-10)
    q = ast_perturb_weights(jax.random.key(0), th, 0.7)
    np.testing.assert_array_equal(p["w"], q["w"])
    assert not np.allclose(ast_perturb_weights(jax.random.key(1), th, 0.7)["w"], p["w"])


def test_balanced_inner_loss(syn):
    h = 4 // 2
    np.testing.assert_allclose(ast_balance_factor(3, 4), np.log(3 - h + 8) / np.log(5), rtol=1e-6)
    np.testing.assert_allclose(ast_balance_factor(0, 4), np.log(5) / np.log(h + 8), rtol=1e-6)
    key = jax.random.key(6)
    th0, tht = params(1), params(3)
    for s in (0, 3):
        seg = ExpertSegment(th0, tht, None, jnp.asarray(s))
        loss, grads, _ = window_loss_and_grads(_cfg(ast_balance=True), conv_apply, syn, seg, key)
        idx, _ = make_inner_schedule(key, S, 4, None)
        c = float(ast_balance_factor(s, 4))
        theta_N = _hand_theta(syn.x_syn_NHWC, syn.y_syn, 0.05, th0, idx, scale=c)[-1]
        np.testing.assert_allclose(float(loss), float(param_distance_loss(theta_N, th0, tht)), rtol=1e-10)
    with pytest.raises(ValueError, match="start epoch"):
        window_loss_and_grads(_cfg(ast_balance=True), conv_apply, syn, ExpertSegment(th0, tht), key)


def test_kmeans_representatives():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    feats = np.concatenate([c + 0.3 * rng.normal(size=(20, 2)) for c in centres])
    idx = np.asarray(kmeans_representatives(jax.random.key(0), feats, 3))
    assert sorted(i // 20 for i in idx) == [0, 1, 2]           # one point of every cluster
    np.testing.assert_array_equal(idx, kmeans_representatives(jax.random.key(0), feats, 3))
    many = np.asarray(kmeans_representatives(jax.random.key(1), feats, 7))
    assert len(set(many.tolist())) == 7                      # distinct picks
    with pytest.raises(ValueError, match="k-means"):
        kmeans_representatives(jax.random.key(0), feats, 61)


def test_kmeans_init_images_are_of_their_class():
    from jaxdd import data as jdata
    from jaxdd.pipelines.mtt import init_kmeans_images

    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(K), 12)
    x = rng.integers(0, 255, size=(len(y), HW, HW, 1), dtype=np.uint8)
    pre = jdata.fit_preprocess("none", x)
    ds = types.SimpleNamespace(class_indices=[np.flatnonzero(y == k) for k in range(K)],
                               x_train=x, num_classes=K)
    ctx = types.SimpleNamespace(cfg={"ipc": 2, "init": "real"}, ds=ds, pre=pre)
    p32 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params(7))
    x0, y0 = init_kmeans_images(ctx, jax.random.key(0), conv_apply, p32)
    assert x0.shape == (K * 2, HW, HW, 1) and y0.tolist() == [0, 0, 1, 1, 2, 2]
    x01 = jdata.apply(pre, x)
    for img, c in zip(x0, y0):   # every picked image is a training image of its class
        assert np.any(np.all(x01[y == c] == img, axis=(1, 2, 3)))
    x1, _ = init_kmeans_images(ctx, jax.random.key(0), conv_apply, p32)
    np.testing.assert_array_equal(x0, x1)


# ------------------------------------------------------------------------------------------
# Experts
# ------------------------------------------------------------------------------------------


def test_ast_schedule_steps_lr_by_0_6_after_mid_training():
    from jaxdd.train.loop import TrainConfig, make_optimizer

    cfg = TrainConfig(epochs=6, lr=0.1, momentum=0.0, weight_decay=0.0, schedule="ast")
    tx = make_optimizer(cfg, 6 * 3)   # 3 steps per epoch
    p = {"w": jnp.zeros(())}
    st, lrs = tx.init(p), []
    for _ in range(18):
        u, st = tx.update({"w": jnp.ones(())}, st, p)
        lrs.append(-float(u["w"]))
    # AST buffer.py: epochs 0..E//2+1 (= 4) at lr, from epoch 5 on at 0.6 lr.
    np.testing.assert_allclose(lrs, [0.1] * 15 + [0.06] * 3, rtol=1e-6)


class _Linear:
    """logits = flatten(x) @ W: d sum(logits) / dx = sum_k W[:, k] for every image."""
    num_classes = K
    has_batch_stats = False
    name = "linear"

    def apply_train(self, v, x, mask_B=None):  # the Model signature (no BN: mask unused)
        return x.reshape(x.shape[0], -1) @ v["params"]["w"], v

    def apply(self, v, x):
        return self.apply_train(v, x)[0]


def test_input_gradient_penalty_direct():
    from jaxdd.train.loop import input_gradient_penalty

    rng = np.random.default_rng(2)
    w = rng.normal(size=(HW * HW * 2, K))
    x = jnp.asarray(rng.normal(size=(5, HW, HW, 2)))
    mask = jnp.asarray([1.0, 1.0, 1.0, 1.0, 0.0])
    got = input_gradient_penalty(_Linear().apply_train, {"params": {"w": jnp.asarray(w)}}, x, mask)
    g_HWC = w.sum(1).reshape(HW, HW, 2)                       # same for every image
    want = np.mean((np.linalg.norm(g_HWC, axis=-1) - 1.0) ** 2)
    np.testing.assert_allclose(float(got), want, rtol=1e-6)


def test_expert_loss_scale_and_penalty_in_the_training_loop():
    from jaxdd.train.loop import TrainConfig, input_gradient_penalty, train_epochs, train_init

    rng = np.random.default_rng(3)
    x = jnp.asarray(rng.normal(size=(12, HW, HW, 1)))
    y = jnp.asarray(np.repeat(np.arange(K), 4))
    model = _Linear()
    model.init = lambda key: {"params": {"w": 0.1 * jax.random.normal(key, (HW * HW, K))}}
    cfg = TrainConfig(epochs=2, batch_size=12, lr=0.1, momentum=0.0, weight_decay=0.0,
                      schedule="constant", dsa="", image_chunks=1)
    s0 = train_init(jax.random.key(0), model, cfg, 12)
    # Plain SGD: loss x 0.5 in epoch 0 == lr x 0.5 in epoch 0; epoch 1 (past the tuple) x 1.
    scaled = train_epochs(s0, model, cfg, x, y, 1, epoch_loss_scale=(0.5,))
    cfg_half = dataclass_replace(cfg, lr=0.05)
    half = train_epochs(train_init(jax.random.key(0), model, cfg_half, 12), model, cfg_half, x, y, 1)
    np.testing.assert_allclose(scaled.variables["params"]["w"], half.variables["params"]["w"], rtol=1e-9)
    two = train_epochs(scaled, model, cfg, x, y, 1, epoch_loss_scale=(0.5,))
    plain = train_epochs(scaled, model, cfg, x, y, 1)
    np.testing.assert_allclose(two.variables["params"]["w"], plain.variables["params"]["w"], rtol=1e-6)
    # Penalty: one full-batch step = plain step - lr * lambda * d penalty / dW.
    gp = train_epochs(s0, model, cfg, x, y, 1, grad_penalty=2.0)
    base = train_epochs(s0, model, cfg, x, y, 1)
    w0 = s0.variables["params"]["w"]
    dpen = jax.grad(lambda w: input_gradient_penalty(model.apply_train, {"params": {"w": w}}, x, jnp.ones(12)))(w0)
    lr = float(np.float32(0.1))   # the optimiser's injected lr is float32
    np.testing.assert_allclose(gp.variables["params"]["w"], base.variables["params"]["w"] - lr * 2.0 * dpen,
                               rtol=1e-9, atol=1e-12)
    assert float(jnp.abs(dpen).max()) > 1e-3   # the penalty really moves the weights


def test_expert_config_checks():
    from jaxdd.population.experts import ExpertConfig

    cfg = ExpertConfig(loss_scales=[0.5, 0.55], grad_penalty=2.0)
    assert cfg.loss_scales == (0.5, 0.55) and hash(cfg)
    with pytest.raises(ValueError, match="loss_scales"):
        ExpertConfig(loss_scales=(0.5, 0.0))
    with pytest.raises(ValueError, match="grad_penalty"):
        ExpertConfig(grad_penalty=-1.0)
    with pytest.raises(ValueError, match="gsam"):
        ExpertConfig(optimizer="gsam", grad_penalty=2.0)


def test_default_expert_manifest_has_no_ast_fields(tmp_path):
    """Buffers stored before the AST fields existed must still match a default config."""
    import json

    from jaxdd.population.experts import ExpertConfig, build_buffer

    jax.config.update("jax_enable_x64", False)
    rng = np.random.default_rng(4)
    x, y = rng.random((12, HW, HW, 1)).astype(np.float32), np.arange(12) % K
    cfg = ExpertConfig(num_experts=1, epochs=1, batch_size=12, dsa="")
    build_buffer(str(tmp_path / "b"), (x, y), "mlp_w16", cfg, 0)
    stored = json.load(open(tmp_path / "b" / "buffer.json"))["config"]
    assert "loss_scales" not in stored and "grad_penalty" not in stored
    ast = ExpertConfig(num_experts=1, epochs=1, batch_size=12, dsa="", loss_scales=(0.5,), grad_penalty=2.0)
    build_buffer(str(tmp_path / "a"), (x, y), "mlp_w16", ast, 0)
    stored = json.load(open(tmp_path / "a" / "buffer.json"))["config"]
    assert stored["loss_scales"] == [0.5] and stored["grad_penalty"] == 2.0


@pytest.mark.slow
def test_ast_preset_end_to_end(tiny_npz, tmp_path, capsys):
    import json
    import os

    from jaxdd.cli import main

    jax.config.update("jax_enable_x64", False)
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "mtt", "ast_fashion_mnist_cpu.py")
    argv = ["distill", "--config", path, "--ipc", "1", "--out", str(tmp_path / "out"), "--quiet", "--json"]
    for s in [f"dataset=npz:{tiny_npz}", "model=convnet_d2_w4", f"buffer_dir={tmp_path / 'buf'}",
              "iterations=3", "ckpt_every=3", "experts.batch_size=64", "experts.epochs=3",
              "mtt.syn_steps=4", "mtt.max_start=1", "mtt.dsa_strategy='crop'",
              "eval.protocol=smoke", "eval.seeds=1"]:
        argv += ["--set", s]
    assert main(argv) == 0, capsys.readouterr()[1]
    res = json.loads(capsys.readouterr()[0].strip().splitlines()[-1])
    log = [json.loads(line) for line in open(tmp_path / "out" / "run" / "metrics.jsonl")]
    assert np.isfinite(log[-1]["loss"]) and 0.0 <= res["accuracy_mean"] <= 1.0
    man = json.load(open(tmp_path / "buf" / "buffer.json"))
    assert man["config"]["grad_penalty"] == 2.0 and man["config"]["schedule"] == "ast"


def test_ast_expert_setup_compares_equal_after_a_json_round_trip():
    """A partly built AST buffer must resume: the requested manifest's loss_scales (a
    tuple) equals the stored one (read back from JSON as a list)."""
    import json

    from jaxdd.data import fit_preprocess
    from jaxdd.population.experts import ExpertConfig
    from jaxdd.population.train import new_manifest, setup_diff

    x = np.zeros((4, 8, 8, 1), np.uint8)
    y = np.arange(4) % 2
    cfg = ExpertConfig(loss_scales=(0.5, 0.55), grad_penalty=2.0)
    m = new_manifest("f", 1, "experts", model="m", num_classes=2, input_shape=(8, 8, 1),
                     dataset="d", x_train=x, y_train=y, pre=fit_preprocess("none", x),
                     config=cfg, seed=0, layout="")
    stored = json.loads(json.dumps(m))
    assert setup_diff(stored, m, "num_experts") == {}
    other = new_manifest("f", 1, "experts", model="m", num_classes=2, input_shape=(8, 8, 1),
                         dataset="d", x_train=x, y_train=y, pre=fit_preprocess("none", x),
                         config=ExpertConfig(loss_scales=(0.5, 0.6), grad_penalty=2.0),
                         seed=0, layout="")
    assert set(setup_diff(stored, other, "num_experts")) == {"config.loss_scales"}
