"""Trajectory matching: the three gradient modes against each other, and the MTT distiller.

Everything runs in float64 so that exact-gradient comparisons can use tight tolerances.
The models are defined here (tiny MLP on 4x4x1, tiny conv net on 8x8x1) so the tests do not
depend on `jaxdd.models`.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.methods.base import skip_nonfinite
from jaxdd.tree import tree_all_finite

from jaxdd.methods.mtt import (
    ExpertSegment,
    MTTConfig,
    MTTState,
    datm_init_labels,
    datm_upper_bound,
    make_mtt,
    sample_segment_index,
    tesla_assign_labels,
)
from jaxdd.methods.tm_grad import (
    inner_cross_entropy,
    make_inner_schedule,
    matching_loss_and_grads,
    param_distance_loss,
)

K = 3  # classes

# One jitted entry point (compiles once per mode/model/shape); eager dispatch is much slower.
mlg = jax.jit(matching_loss_and_grads, static_argnums=(0, 1),
              static_argnames=("augment_fn", "label_kind", "unroll"))


@pytest.fixture(autouse=True)
def x64():
    """float64 for tight comparisons; restored afterwards so other test files are unaffected."""
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", prev)


# ---------------------------------------------------------------------------------------------
# Tiny models, augmentation and data
# ---------------------------------------------------------------------------------------------


def mlp_init(rng):
    return {"w1": 0.5 * rng.normal(size=(16, 8)), "b1": np.zeros(8),
            "w2": 0.5 * rng.normal(size=(8, K)), "b2": np.zeros(K)}


def mlp_apply(params, x_NHWC):
    h = jnp.tanh(x_NHWC.reshape(x_NHWC.shape[0], -1) @ params["w1"] + params["b1"][None])
    return h @ params["w2"] + params["b2"][None]


def conv_init(rng):
    return {"w": 0.5 * rng.normal(size=(3, 3, 1, 3)), "b": np.zeros(3),
            "wo": 0.5 * rng.normal(size=(3 * 16, K)), "bo": np.zeros(K)}


def conv_apply(params, x_NHWC):
    h = jax.lax.conv_general_dilated(x_NHWC, params["w"], (1, 1), "SAME",
                                     dimension_numbers=("NHWC", "HWIO", "NHWC")) + params["b"][None, None, None]
    h = jax.nn.relu(h)
    n, hh, ww, c = h.shape
    h = h.reshape(n, hh // 2, 2, ww // 2, 2, c).mean(axis=(2, 4))  # 2x2 average pool
    return h.reshape(n, -1) @ params["wo"] + params["bo"][None]


def flip_scale_augment(key, x_NHWC):
    """Keyed, deterministic-given-key augmentation: random horizontal flip and random gain."""
    k_flip, k_gain = jax.random.split(key)
    n = x_NHWC.shape[0]
    flip_N = jax.random.bernoulli(k_flip, 0.5, (n,))
    gain_N = jax.random.uniform(k_gain, (n,), minval=0.5, maxval=1.5)
    x = jnp.where(flip_N[:, None, None, None], x_NHWC[:, :, ::-1, :], x_NHWC)
    return x * gain_N[:, None, None, None]


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-300)


# Schedules are made under jit: compiling one program is much cheaper than eager op-by-op.
schedule = jax.jit(make_inner_schedule, static_argnums=(1, 2, 3))


@functools.lru_cache(maxsize=None)
def setup_problem(model="mlp", num_syn=6, syn_steps=5, batch_syn=4, seed=0):
    """A small matching problem; numpy data (no compiles), cached across tests.

    theta_target is theta_0 plus a random perturbation: the gradient identities tested here
    hold for any target, and real expert targets are exercised in test_mtt_api_example.py.
    """
    init_fn, apply_fn, hw = (mlp_init, mlp_apply, 4) if model == "mlp" else (conv_init, conv_apply, 8)
    rng = np.random.default_rng(seed)
    theta_0 = jax.tree.map(jnp.asarray, init_fn(rng))
    theta_t = jax.tree.map(lambda p: p + 0.3 * jnp.asarray(rng.normal(size=p.shape)), theta_0)
    x = jnp.asarray(rng.normal(size=(num_syn, hw, hw, 1)))
    y_hard = jnp.arange(num_syn) % K
    y_logits = jnp.asarray(rng.normal(size=(num_syn, K)))
    log_lr = jnp.log(jnp.asarray(0.1))
    idx, keys = schedule(jax.random.PRNGKey(seed), num_syn, syn_steps, batch_syn)
    return apply_fn, x, y_hard, y_logits, log_lr, theta_0, theta_t, idx, keys


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def test_param_distance_loss_is_one_ratio_over_all_leaves():
    t0 = {"a": jnp.array([1.0, 1.0]), "b": jnp.array([[2.0]])}
    tt = {"a": jnp.array([0.0, 0.0]), "b": jnp.array([[0.0]])}
    tn = {"a": jnp.array([0.5, 0.0]), "b": jnp.array([[1.0]])}
    # (0.25 + 1) / (1 + 1 + 4), not a per-leaf average of ratios
    np.testing.assert_allclose(param_distance_loss(tn, t0, tt), 1.25 / 6.0)


def test_inner_schedule_is_concatenated_permutations():
    idx, keys = schedule(jax.random.PRNGKey(0), 6, 7, 3)
    assert idx.shape == (7, 3) and keys.shape[0] == 7
    flat = np.asarray(idx).reshape(-1)
    for p in range(3):  # each consecutive block of 6 is a permutation
        block = flat[6 * p: 6 * p + 6]
        if len(block) == 6:
            assert sorted(block) == list(range(6))
    full, _ = schedule(jax.random.PRNGKey(1), 6, 2, None)
    assert full.shape == (2, 6)


# ---------------------------------------------------------------------------------------------
# Gradient modes
# ---------------------------------------------------------------------------------------------


def test_remat_equals_bptt_learned_labels():
    apply_fn, x, _, y, log_lr, t0, tt, idx, keys = setup_problem("mlp")
    args = (apply_fn, x, y, log_lr, t0, tt, idx, keys)
    lb, gb = mlg("bptt", *args, augment_fn=flip_scale_augment)
    lr_, gr = mlg("remat", *args, augment_fn=flip_scale_augment)
    np.testing.assert_allclose(lr_, lb, rtol=1e-10)
    for a, b in zip(gr, gb):
        assert rel_err(a, b) < 1e-6
    assert np.all(np.isfinite(gb.labels)) and np.linalg.norm(gb.labels) > 0


def test_remat_equals_bptt_with_augmentation_conv_hard_labels():
    apply_fn, x, y, _, log_lr, t0, tt, idx, keys = setup_problem("conv", num_syn=6, syn_steps=3, batch_syn=6)
    kw = dict(augment_fn=flip_scale_augment)
    lb, gb = mlg("bptt", apply_fn, x, y, log_lr, t0, tt, idx, keys, **kw)
    lr_, gr = mlg("remat", apply_fn, x, y, log_lr, t0, tt, idx, keys, **kw)
    assert gb.labels is None and gr.labels is None
    np.testing.assert_allclose(lr_, lb, rtol=1e-10)
    assert rel_err(gr.x_syn_NHWC, gb.x_syn_NHWC) < 1e-6
    assert rel_err(gr.log_lr, gb.log_lr) < 1e-6
    # the augmentation really acts and differs between steps (keys are per step)
    aug = [np.asarray(flip_scale_augment(keys[i], x[idx[i]])) for i in range(2)]
    assert not np.allclose(aug[0], np.asarray(x[idx[0]])) and not np.allclose(aug[0], aug[1])


@pytest.mark.parametrize("labels", ["hard", "logits"])
def test_tesla_equals_bptt_for_one_step(labels):
    apply_fn, x, yh, yl, log_lr, t0, tt, idx, keys = setup_problem("mlp", syn_steps=1)
    y = yh if labels == "hard" else yl
    lb, gb = mlg("bptt", apply_fn, x, y, log_lr, t0, tt, idx, keys,
                                     augment_fn=flip_scale_augment)
    lt, gt = mlg("tesla", apply_fn, x, y, log_lr, t0, tt, idx, keys,
                                     augment_fn=flip_scale_augment)
    np.testing.assert_allclose(lt, lb, rtol=1e-10)
    for a, b in zip(gt, gb):
        if b is not None:
            assert rel_err(a, b) < 1e-8


def tesla_first_order_reference(apply_fn, x, y, log_lr, t0, tt, idx, keys, augment_fn):
    """TESLA's formula written independently: python loop, jax.grad / jax.vjp per step."""
    lr = float(np.exp(log_lr))

    def g_at(theta, x_, y_, i):
        xb = augment_fn(keys[i], x_[idx[i]])
        return jax.grad(lambda th: inner_cross_entropy(apply_fn(th, xb), y_[idx[i]], "logits"))(theta)

    flat = lambda t: jnp.concatenate([jnp.ravel(l) for l in jax.tree.leaves(t)])
    thetas, theta = [], t0
    G = jax.tree.map(jnp.zeros_like, t0)
    for i in range(idx.shape[0]):
        thetas.append(theta)
        g = g_at(theta, x, y, i)
        G = jax.tree.map(jnp.add, G, g)
        theta = jax.tree.map(lambda p, gi: p - lr * gi, theta, g)
    D = float(jnp.sum((flat(t0) - flat(tt)) ** 2))
    # L = ||theta_0 - lr G - theta_T||^2 / D  =>  dL/dG = (2/D)(lr (theta_T - theta_0) + lr^2 G)
    v = jax.tree.map(lambda a, b, Gi: (2.0 / D) * (lr * (b - a) + lr**2 * Gi), t0, tt, G)
    gx, gy = jnp.zeros_like(x), jnp.zeros_like(y)
    for i, th in enumerate(thetas):
        _, vjp = jax.vjp(lambda x_, y_: g_at(th, x_, y_, i), x, y)
        dx, dy = vjp(v)
        gx, gy = gx + dx, gy + dy
    r = flat(t0) - lr * flat(G) - flat(tt)
    g_lr = -(2.0 / D) * jnp.dot(r, flat(G))
    return float(jnp.sum(r**2) / D), gx, gy, lr * g_lr


def test_tesla_matches_its_first_order_formula_and_deviates_from_bptt():
    apply_fn, x, _, y, log_lr, t0, tt, idx, keys = setup_problem("mlp")
    kw = dict(augment_fn=flip_scale_augment)
    lt, gt = mlg("tesla", apply_fn, x, y, log_lr, t0, tt, idx, keys, **kw)
    l_ref, gx_ref, gy_ref, glr_ref = tesla_first_order_reference(
        apply_fn, x, y, log_lr, t0, tt, idx, keys, flip_scale_augment)
    np.testing.assert_allclose(lt, l_ref, rtol=1e-10)
    assert rel_err(gt.x_syn_NHWC, gx_ref) < 1e-9
    assert rel_err(gt.labels, gy_ref) < 1e-9
    assert rel_err(gt.log_lr, glr_ref) < 1e-9

    _, gb = mlg("bptt", apply_fn, x, y, log_lr, t0, tt, idx, keys, **kw)
    dev = {name: rel_err(a, b) for name, a, b in zip(gb._fields, gt, gb)}
    cos_x = float(jnp.vdot(gt.x_syn_NHWC, gb.x_syn_NHWC)
                  / (jnp.linalg.norm(gt.x_syn_NHWC) * jnp.linalg.norm(gb.x_syn_NHWC)))
    print(f"\ntesla vs bptt (N=5, lr=0.1) relative deviation: {dev}, cos(x grads) = {cos_x:.4f}")
    # First-order: drops the Hessian chain, so it must differ from the exact gradient ...
    assert all(d > 1e-4 for d in dev.values())
    # ... but it is still a descent-aligned approximation on this small problem.
    assert cos_x > 0.5


# ---------------------------------------------------------------------------------------------
# The distiller
# ---------------------------------------------------------------------------------------------


# Shared configs, so each distiller step is compiled once for the whole file.
LEARNED_FTD = dict(label_mode="learned", ema_decay=0.9, max_loss=1e9)


@functools.lru_cache(maxsize=None)
def _distiller(guard=False, **overrides):
    cfg = MTTConfig(**{**dict(syn_steps=3, expert_epochs=1, max_start=2, batch_syn=4, lr_img=1.0,
                              lr_lr=1e-3, lr_init=0.1, lr_y=1.0), **overrides})
    apply_fn, x, yh, yl, _, t0, tt, _, _ = setup_problem("mlp")
    dist = make_mtt(cfg, apply_fn, augment_fn=flip_scale_augment)
    y0 = {"hard": yh, "learned": yl, "tesla": tesla_assign_labels(apply_fn, tt, x)}[cfg.label_mode]
    state = dist.init(jax.random.PRNGKey(0), x, y0)
    dist = skip_nonfinite(dist) if guard else dist
    return jax.jit(dist.step), state, ExpertSegment(t0, tt)


def assert_trees_equal(a, b):
    jax.tree.map(lambda u, v: np.testing.assert_array_equal(u, v), a, b)


def test_step_deterministic_and_updates_everything_learned_ftd():
    step, s0, seg = _distiller(**LEARNED_FTD)
    key = jax.random.PRNGKey(3)
    s1, m1 = step(s0, seg, key)
    assert_trees_equal((s1, m1), step(s0, seg, key))
    s2, _ = step(s0, seg, jax.random.PRNGKey(4))
    assert not np.array_equal(s1.syn.x_syn_NHWC, s2.syn.x_syn_NHWC)  # key matters (batch_syn < S)
    assert isinstance(s1, MTTState) and int(s1.iteration) == 1
    assert not bool(m1["skipped"]) and bool(tree_all_finite((m1["loss"], s1)))  # 1e9: no gate
    assert not np.array_equal(s1.syn.x_syn_NHWC, s0.syn.x_syn_NHWC)
    assert not np.array_equal(s1.syn.y_syn, s0.syn.y_syn)
    assert float(s1.syn.log_lr) != float(s0.syn.log_lr) and float(m1["lr"]) > 0
    # FTD EMA after the update: ema = d * ema + (1 - d) * x_new
    np.testing.assert_allclose(s1.x_ema_NHWC, 0.9 * s0.x_ema_NHWC + 0.1 * s1.syn.x_syn_NHWC, rtol=1e-12)
    assert all(np.isfinite(float(m1[k])) for k in ("loss", "grad_norm_img", "grad_norm_y", "grad_norm_log_lr"))


def test_ftd_init_state_can_be_donated():
    """The EMA images start equal to the images but in their own buffer: the driver's
    donated step would otherwise fail with 'donate the same buffer twice'."""
    cfg = MTTConfig(syn_steps=3, expert_epochs=1, max_start=2, batch_syn=4, lr_img=1.0,
                    lr_lr=1e-3, lr_init=0.1, lr_y=1.0, **LEARNED_FTD)
    apply_fn, x, _, yl, _, _, _, _, _ = setup_problem("mlp")
    x, yl = jnp.array(x, copy=True), jnp.array(yl, copy=True)   # donated below: not shared
    s = make_mtt(cfg, apply_fn, augment_fn=flip_scale_augment).init(jax.random.PRNGKey(0), x, yl)
    np.testing.assert_array_equal(s.x_ema_NHWC, s.syn.x_syn_NHWC)
    assert s.x_ema_NHWC.unsafe_buffer_pointer() != s.syn.x_syn_NHWC.unsafe_buffer_pointer()
    donated = jax.jit(lambda st: jax.tree.map(lambda a: a + 0, st), donate_argnums=0)
    jax.block_until_ready(donated(s))


def test_nan_guard_leaves_state_unchanged_and_flags():
    step, s0, seg = _distiller(guard=True, **LEARNED_FTD)  # as the driver runs it
    bad = ExpertSegment(seg.theta_0, jax.tree.map(lambda p: p.at[..., 0].set(jnp.nan), seg.theta_target))
    s1, m = step(s0, bad, jax.random.PRNGKey(0))
    assert bool(m["nonfinite"]) and bool(m["skipped"])
    assert_trees_equal(s1, s0)  # iteration included: the driver reports the failing iteration


def test_max_loss_gating_skips_update_but_counts_iteration():
    step, s0, seg = _distiller(max_loss=0.0)  # every finite loss is > 0: always skipped
    s1, m = step(s0, seg, jax.random.PRNGKey(0))
    assert bool(m["skipped"]) and bool(tree_all_finite((m["loss"], s1))) and float(m["loss"]) > 0
    assert_trees_equal((s1.syn, s1.opt_img, s1.opt_lr), (s0.syn, s0.opt_img, s0.opt_lr))
    assert int(s1.iteration) == 1


def test_tesla_labels_mapping_batch():
    step, s0, seg = _distiller(label_mode="tesla", grad_mode="tesla")
    s1, m1 = step(s0, {"theta_0": seg.theta_0, "theta_target": seg.theta_target}, jax.random.PRNGKey(1))
    assert s1.syn.y_syn.shape == (6, K) and not bool(m1["skipped"])
    np.testing.assert_allclose(jnp.exp(s1.syn.y_syn).sum(-1), 1.0, rtol=1e-12)  # log-probabilities
    # the assigned labels are the target expert's, not learned
    apply_fn, x = setup_problem("mlp")[:2]
    np.testing.assert_allclose(s1.syn.y_syn, tesla_assign_labels(apply_fn, seg.theta_target, x), rtol=1e-12)


@pytest.mark.parametrize("lr_space", ["linear", "log"])
def test_lr_stays_positive(lr_space):
    # a step on alpha that would take it far below zero with the reference's unclipped update
    step, s, seg = _distiller(guard=True, lr_space=lr_space, lr_lr=1e3, lr_img=0.0)
    for i in range(3):
        s, m = step(s, seg, jax.random.PRNGKey(i))
        lr = float(jnp.exp(s.syn.log_lr))
        assert lr > 0 and np.isfinite(float(s.syn.log_lr)), (i, lr, m)
    assert lr != 0.1  # alpha did move


def test_init_validates_labels():
    cfg = MTTConfig(label_mode="learned")
    dist = make_mtt(cfg, mlp_apply)
    with pytest.raises(ValueError, match="logits"):
        dist.init(jax.random.PRNGKey(0), jnp.zeros((3, 4, 4, 1)), jnp.arange(3))
    with pytest.raises(ValueError, match="grad_mode"):
        MTTConfig(grad_mode="fast")
    for bad in (0, -2, 2.5, "many", True):
        with pytest.raises(ValueError, match="image_chunks"):
            MTTConfig(image_chunks=bad)


# ---------------------------------------------------------------------------------------------
# Driver helpers
# ---------------------------------------------------------------------------------------------


def test_datm_upper_bound_schedule():
    # CIFAR-10 IPC 10 window 10 -> 20 over the first 1000 iterations (DATM's formula)
    vals = [datm_upper_bound(it, 10, 20, 1000) for it in (0, 99, 100, 550, 999, 1000, 5000)]
    assert vals == [10, 10, 11, 15, 19, 20, 20]
    assert int(datm_upper_bound(jnp.asarray(550), 10, 20, 1000)) == 15
    assert datm_upper_bound(7, 10, 20, None) == 20


def test_sample_segment_index_ranges():
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    e, s = jax.vmap(lambda k: sample_segment_index(k, 5, 2, 6))(keys)
    assert set(np.asarray(e).tolist()) == set(range(5))
    assert set(np.asarray(s).tolist()) == set(range(2, 6))


def test_datm_init_labels_toy():
    # Linear 'experts' on 2-pixel images: expert e predicts logits x @ W_e.
    apply_fn = lambda W, x: x.reshape(x.shape[0], -1) @ W
    W_E = jnp.stack([jnp.eye(2), jnp.eye(2)[::-1], 2.0 * jnp.eye(2)])  # expert 1 is always wrong
    x = jnp.array([[1.0, 0.0], [0.0, 3.0], [1.0, 0.0]]).reshape(3, 1, 2, 1)
    y = jnp.array([0, 1, 1])  # image 2 is labelled 1 but experts 0, 2 say 0; expert 1 says 1
    logits, n_correct = datm_init_labels(apply_fn, W_E, x, y)
    np.testing.assert_array_equal(n_correct, [2, 2, 1])
    np.testing.assert_allclose(logits[0], (np.array([1, 0]) + np.array([2, 0])) / 2)  # experts 0, 2
    np.testing.assert_allclose(logits[1], (np.array([0, 3]) + np.array([0, 6])) / 2)
    np.testing.assert_allclose(logits[2], [0, 1])  # only expert 1


def test_image_chunks_change_nothing_but_the_schedule():
    """make_mtt applies `image_chunks` (the CPU speed setting): same step, learned labels and
    augmentation included, to float rounding; 4 images per inner step in 3 chunks -> 2+2."""
    step1, s0, seg = _distiller(**LEARNED_FTD)
    step3, _, _ = _distiller(**LEARNED_FTD, image_chunks=3)
    key = jax.random.PRNGKey(5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12),
                 step3(s0, seg, key), step1(s0, seg, key))
    dots = [str(jax.make_jaxpr(f)(s0, seg, key)).count("dot_general") for f in (step1, step3)]
    assert dots[1] > dots[0]   # the chunked student really is a different (chunked) program
