"""Several expert windows per MTT outer step (`MTTConfig.windows_per_step`).

float32, as distillation runs: the vmapped windows are checked against a python loop over
the same windows to 1e-5 (vmap batches the matmuls, so XLA may block their sums
differently: the results agree to float32 rounding, not bit for bit). W = 1 must be the
single-window program itself, bit for bit.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.configs import load_config
from jaxdd.methods.base import SynState
from jaxdd.methods.mtt import (
    MTTConfig,
    make_mtt,
    sample_segment_index,
    sample_windows,
    tesla_assign_labels,
    window_loss_and_grads,
)
from jaxdd.methods.tm_grad import make_inner_schedule, matching_loss_and_grads
from jaxdd.pipelines.mtt import make_batch_fn
from jaxdd.run import driver
from test_mtt import flip_scale_augment, mlp_apply
from test_pipeline_mtt import CONFIG

K, S, W = 3, 6, 3  # classes, synthetic images, windows
BASE = dict(syn_steps=3, expert_epochs=1, max_start=2, batch_syn=4, lr_img=1.0, lr_lr=1e-3,
            lr_init=0.1, lr_y=1.0)


@functools.lru_cache(maxsize=None)
def problem(seed=0, experts=2, epochs=3):
    """Synthetic set and a fake buffer: leaves (E, T, ...), T = epochs + 1 (float32)."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    shapes = {"w1": (16, 8), "b1": (8,), "w2": (8, K), "b2": (K,)}
    walk = {k: np.cumsum(0.3 * rng.normal(size=(experts, epochs + 1) + s), axis=1)
            for k, s in shapes.items()}
    stacked = {k: f32(0.5 * rng.normal(size=(experts, 1) + s) + walk[k]) for k, s in shapes.items()}
    x = f32(rng.normal(size=(S, 4, 4, 1)))
    y_hard = jnp.arange(S, dtype=jnp.int32) % K
    y_logits = f32(rng.normal(size=(S, K)))
    return stacked, x, y_hard, y_logits


def windows_batch(stacked, key, windows, cfg):
    """The pipeline's batch for this key: W segments (or one when W = 1)."""
    return make_batch_fn(cfg, jax.tree.leaves(stacked)[0].shape[0])(stacked, key, jnp.asarray(1))


def syn_state(cfg, x, y_hard, y_logits, stacked):
    if cfg.label_mode == "hard":
        y = y_hard
    elif cfg.label_mode == "learned":
        y = y_logits
    else:
        y = tesla_assign_labels(mlp_apply, jax.tree.map(lambda a: a[0, 1], stacked), x)
    return SynState(x, y, jnp.log(jnp.asarray(0.1, jnp.float32)))


def test_one_window_is_the_single_window_program_bit_for_bit():
    """W = 1: the segment is `sample_segment_index`'s and the loss and gradients are
    `matching_loss_and_grads` on `make_inner_schedule(key)`, as the step was before W."""
    stacked, x, yh, _ = problem()
    cfg = MTTConfig(**BASE, windows_per_step=1)
    kb, ks = jax.random.PRNGKey(1), jax.random.PRNGKey(2)
    e, s = sample_windows(kb, 1, 2, 0, 2)
    e0, s0 = sample_segment_index(kb, 2, 0, 2)
    assert e.shape == () and (int(e), int(s)) == (int(e0), int(s0))
    seg = windows_batch(stacked, kb, 1, cfg)
    syn = syn_state(cfg, x, yh, None, stacked)

    @jax.jit
    def before(syn, seg, key):  # the single-window step's loss and gradients
        idx, keys = make_inner_schedule(key, S, cfg.syn_steps, cfg.batch_syn)
        return matching_loss_and_grads(cfg.grad_mode, mlp_apply, syn.x_syn_NHWC, syn.y_syn,
                                       syn.log_lr, seg.theta_0, seg.theta_target, idx, keys,
                                       augment_fn=flip_scale_augment, label_kind="hard")

    now = jax.jit(lambda syn, seg, key: window_loss_and_grads(
        cfg, mlp_apply, syn, seg, key, flip_scale_augment)[:2])
    jax.tree.map(np.testing.assert_array_equal, now(syn, seg, ks), before(syn, seg, ks))
    # The config default is W = 1: the same step program.
    steps = [make_mtt(c, mlp_apply, flip_scale_augment) for c in (cfg, MTTConfig(**BASE))]
    state = steps[0].init(None, x, yh)
    jaxprs = [str(jax.make_jaxpr(d.step)(state, seg, ks)) for d in steps]
    assert jaxprs[0] == jaxprs[1]


@pytest.mark.parametrize("grad_mode,label_mode", [("bptt", "learned"), ("remat", "learned"),
                                                  ("tesla", "tesla"), ("remat", "hard")])
def test_vmapped_windows_equal_a_python_loop(grad_mode, label_mode):
    stacked, x, yh, yl = problem()
    cfg = MTTConfig(**BASE, grad_mode=grad_mode, label_mode=label_mode, windows_per_step=W)
    one = MTTConfig(**BASE, grad_mode=grad_mode, label_mode=label_mode)
    syn = syn_state(cfg, x, yh, yl, stacked)
    kb, ks = jax.random.PRNGKey(7), jax.random.PRNGKey(8)
    seg = windows_batch(stacked, kb, W, cfg)
    assert jax.tree.leaves(seg)[0].shape[0] == W
    e_W, s_W = sample_windows(kb, W, 2, 0, 2)
    assert len(set(zip(e_W.tolist(), s_W.tolist()))) > 1  # this key draws different windows

    vm = jax.jit(lambda syn, seg, key: window_loss_and_grads(cfg, mlp_apply, syn, seg, key,
                                                             flip_scale_augment))
    single = jax.jit(lambda syn, seg, key: window_loss_and_grads(one, mlp_apply, syn, seg, key,
                                                                 flip_scale_augment))
    loss, grads, y_new = vm(syn, seg, ks)
    per = [single(syn, jax.tree.map(lambda a: a[w], seg), k)
           for w, k in enumerate(jax.random.split(ks, W))]
    np.testing.assert_allclose(loss, np.mean([p[0] for p in per]), rtol=1e-5)
    for name, g in zip(grads._fields, grads):
        if g is None:
            assert name == "labels" and label_mode != "learned"
            continue
        ref = np.mean([np.asarray(getattr(p[1], name)) for p in per], axis=0)
        np.testing.assert_allclose(g, ref, rtol=1e-5, atol=1e-6 * np.abs(ref).max(), err_msg=name)
    # TESLA labels: each window matched with its own target's; window 0's are stored.
    np.testing.assert_allclose(y_new, per[0][2], rtol=1e-5, atol=1e-6)
    if label_mode == "tesla":
        assert not np.allclose(per[0][2], per[1][2]) or not np.allclose(per[0][2], per[2][2])


def test_step_updates_with_the_mean_of_the_windows():
    stacked, x, yh, yl = problem()
    cfg = MTTConfig(**BASE, label_mode="learned", windows_per_step=W)
    dist = make_mtt(cfg, mlp_apply, flip_scale_augment)
    state = dist.init(None, x, yl)
    kb, ks = jax.random.PRNGKey(3), jax.random.PRNGKey(4)
    seg = windows_batch(stacked, kb, W, cfg)
    new, metrics = jax.jit(dist.step)(state, seg, ks)
    loss, grads, _ = jax.jit(lambda s, b, k: window_loss_and_grads(
        cfg, mlp_apply, s, b, k, flip_scale_augment))(state.syn, seg, ks)
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-6)
    # First step, momentum buffers empty: SGD moves by -lr * mean gradient.
    np.testing.assert_allclose(new.syn.x_syn_NHWC, x - cfg.lr_img * grads.x_syn_NHWC, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(new.syn.y_syn, yl - cfg.lr_y * grads.labels, rtol=1e-5, atol=1e-6)


def test_driver_runs_and_resumes_bit_exact_with_windows(tmp_path):
    stacked, x, yh, _ = problem()
    cfg = MTTConfig(**BASE, windows_per_step=W, iterations=4)
    dist = make_mtt(cfg, mlp_apply, flip_scale_augment)
    batch_fn = make_batch_fn(cfg, 2)
    key = jax.random.PRNGKey(11)
    kw = dict(consts=stacked, ckpt_every=2, log_every=1)
    x, yh = np.asarray(x), np.asarray(yh)  # the driver donates the state: fresh copies per run
    init = lambda: dist.init(None, jnp.asarray(x), jnp.asarray(yh))
    full, hist = driver.run(dist, init(), batch_fn, key, 4,
                            run_dir=str(tmp_path / "full"), **kw)
    assert [h["iteration"] for h in hist] == [1, 2, 3, 4] and all(h["nonfinite"] == 0 for h in hist)
    part = str(tmp_path / "part")
    driver.run(dist, init(), batch_fn, key, 4, run_dir=part, stop_after=3, **kw)
    resumed, hist_r = driver.run(dist, init(), batch_fn, key, 4, run_dir=part, **kw)
    assert [h["iteration"] for h in hist_r] == [3, 4]  # resumed from the checkpoint at 2
    jax.tree.map(np.testing.assert_array_equal, resumed, full)
    assert not np.array_equal(full.syn.x_syn_NHWC, x) and int(full.iteration) == 4


def test_windows_per_step_is_a_checked_config_field():
    cfg = load_config(CONFIG, 1, ["mtt.windows_per_step=4"])
    assert cfg["mtt"]["windows_per_step"] == 4
    for bad, msg in (("0", "must be > 0"), ("2.5", "expected int"), ("True", "expected int")):
        with pytest.raises(ValueError, match=msg):
            load_config(CONFIG, 1, [f"mtt.windows_per_step={bad}"])
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="windows_per_step"):
            MTTConfig(windows_per_step=bad)
