"""Expert buffers: trajectory layout, single-(expert, epoch) reads, exact resume, refusals,
GSAM maths, corrupt-checkpoint errors, device stacking. Tiny: MLP-16 on 8x8x1, 2x3 epochs."""

import dataclasses
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.population import experts as ex
from jaxdd.augment.dsa import dsa
from jaxdd.data import apply as preprocess_apply
from jaxdd.models import get_model
from jaxdd.train.loop import train_epochs, train_init

MODEL = "mlp_w16"
CFG = ex.ExpertConfig(num_experts=2, epochs=3, batch_size=32, dsa="flip")
SEED = 0


def _data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 80).astype(np.int32)
    x = rng.integers(0, 60, (80, 8, 8, 1)).astype(np.uint8)
    for i, c in enumerate(y):
        x[i, (c // 2) * 4:(c // 2) * 4 + 4, (c % 2) * 4:(c % 2) * 4 + 4] += 180
    return x[:64], y[:64], x[64:], y[64:]


def _all_params(out_dir, num_experts=2, epochs=3):
    return [[ex.load_expert_epoch(out_dir, e, t) for t in range(epochs + 1)]
            for e in range(num_experts)]


def _assert_trees_equal(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


class Stop(Exception):
    pass


def _stop_at(n):
    def cb(done, total):
        if done == n:
            raise Stop
    return cb


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
    """The uninterrupted reference buffer (built once for the module)."""
    out = str(tmp_path_factory.mktemp("buf") / "ref")
    calls = []
    info = ex.build_buffer(out, _data(), MODEL, CFG, SEED, preprocess="normalize",
                           progress_cb=lambda d, t: calls.append((d, t)))
    return out, info, calls


def test_trajectory_layout_and_init(buffer):
    out, info, calls = buffer
    assert calls == [(d, 6) for d in range(1, 7)]
    assert info.status == "complete" and info.num_experts == 2 and info.epochs == 3
    assert all(r.complete and r.epochs_done == 3 and 0 <= r.test_accuracy <= 1
               for r in info.experts)
    assert sorted(os.listdir(os.path.join(out, "expert_001"))) == ["0", "1", "2", "3"]
    assert not os.path.exists(os.path.join(out, "resume"))  # dropped once complete
    m = json.load(open(os.path.join(out, "buffer.json")))
    assert m["preprocess"] == "normalize" and m["model"] == MODEL and m["seed"] == SEED
    assert info.preprocess().kind == "normalize"
    model = get_model(MODEL, 3, (8, 8, 1))
    tcfg = CFG.train_config()
    for e in range(2):
        state = train_init(jax.random.fold_in(jax.random.key(SEED), e), model, tcfg, 64)
        _assert_trees_equal(ex.load_expert_epoch(out, e, 0), state.variables["params"])
    # The stored trajectory is the shared loop's: 3 one-epoch chunks == one 3-epoch run.
    x = jnp.asarray(preprocess_apply(info.preprocess(), _data()[0]))  # state: expert 1's
    one_shot = train_epochs(state, model, tcfg, x, jnp.asarray(_data()[1]), 3,
                            lambda k, xb: dsa(k, xb, "flip"))
    for u, v in zip(jax.tree.leaves(one_shot.variables["params"]),
                    jax.tree.leaves(ex.load_expert_epoch(out, 1, 3))):
        np.testing.assert_allclose(u, v, rtol=1e-5, atol=1e-6)


def test_one_expert_epoch_loads_alone(buffer, tmp_path):
    out, _, _ = buffer
    lone = tmp_path / "lone"
    os.makedirs(lone / "expert_001")
    shutil.copy(os.path.join(out, "buffer.json"), lone)
    shutil.copytree(os.path.join(out, "expert_001", "2"), lone / "expert_001" / "2")
    _assert_trees_equal(ex.load_expert_epoch(str(lone), 1, 2), ex.load_expert_epoch(out, 1, 2))
    theta_0, theta_t = ex.load_segment(out, 0, 1, 2)
    _assert_trees_equal(theta_t, ex.load_expert_epoch(out, 0, 3))
    with pytest.raises(ex.BufferError, match="beyond the stored epochs"):
        ex.load_segment(out, 0, 2, 2)
    with pytest.raises(ex.BufferError, match="out of range"):
        ex.load_expert_epoch(out, 2, 0)


def test_resume_is_bit_identical(buffer, tmp_path):
    ref, _, _ = buffer
    out = str(tmp_path / "b")
    with pytest.raises(Stop):  # expert 0 complete, expert 1 stopped after its epoch 1
        ex.build_buffer(out, _data(), MODEL, CFG, SEED, preprocess="normalize",
                        progress_cb=_stop_at(4))
    info = ex.load_buffer(out)
    assert info.status == "incomplete" and info.experts[1].epochs_done == 1
    calls = []
    ex.build_buffer(out, _data(), MODEL, CFG, SEED, preprocess="normalize",
                    progress_cb=lambda d, t: calls.append(d))
    assert calls == [5, 6]  # only the missing epochs were trained
    _assert_trees_equal(_all_params(out), _all_params(ref))
    assert [r.test_accuracy for r in ex.load_buffer(out).experts] == \
        [r.test_accuracy for r in ex.load_buffer(ref).experts]

    # Crash between the trajectory save and the resume-state save: expert restarts cleanly.
    out2 = str(tmp_path / "c")
    with pytest.raises(Stop):
        ex.build_buffer(out2, _data(), MODEL, CFG, SEED, preprocess="normalize",
                        progress_cb=_stop_at(5))
    shutil.rmtree(os.path.join(out2, "resume", "expert_001"))
    ex.build_buffer(out2, _data(), MODEL, CFG, SEED, preprocess="normalize")
    _assert_trees_equal(_all_params(out2), _all_params(ref))


def test_more_experts_extend_the_buffer(buffer, tmp_path):
    out = str(tmp_path / "ext")
    shutil.copytree(buffer[0], out)
    calls = []
    info = ex.build_buffer(out, _data(), MODEL, dataclasses.replace(CFG, num_experts=3), SEED,
                           preprocess="normalize", progress_cb=lambda d, t: calls.append((d, t)))
    assert calls == [(7, 9), (8, 9), (9, 9)] and info.num_experts == 3
    assert info.status == "complete"
    _assert_trees_equal(_all_params(out, 2), _all_params(buffer[0], 2))


def test_gsam_momentum_resume_is_bit_identical(tmp_path):
    """Optimiser state (momentum) travels through the resume state."""
    cfg = ex.ExpertConfig(num_experts=1, epochs=2, batch_size=32, dsa="", momentum=0.9,
                          optimizer="gsam", gsam_rho=0.05)
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ex.build_buffer(a, _data()[:2], MODEL, cfg, SEED)
    with pytest.raises(Stop):
        ex.build_buffer(b, _data()[:2], MODEL, cfg, SEED, progress_cb=_stop_at(1))
    info = ex.build_buffer(b, _data()[:2], MODEL, cfg, SEED)
    assert info.experts[0].test_accuracy is None  # no test split given
    _assert_trees_equal(_all_params(a, 1, 2), _all_params(b, 1, 2))


def test_mismatched_config_refused(buffer):
    out, _, _ = buffer
    with pytest.raises(ex.BufferError, match="lr"):
        ex.build_buffer(out, _data(), MODEL, dataclasses.replace(CFG, lr=0.02),
                        SEED, preprocess="normalize")
    with pytest.raises(ex.BufferError, match="seed"):
        ex.build_buffer(out, _data(), MODEL, CFG, SEED + 1, preprocess="normalize")
    with pytest.raises(ex.BufferError, match="preprocess"):
        ex.build_buffer(out, _data(), MODEL, CFG, SEED, preprocess="none")


def test_gsam_rho0_equals_sgd():
    model = get_model(MODEL, 3, (8, 8, 1))
    tcfg = ex.ExpertConfig(epochs=1, batch_size=32, dsa="").train_config()
    x, y = jnp.asarray(_data()[0] / 255.0, jnp.float32), jnp.asarray(_data()[1])
    state = train_init(jax.random.key(1), model, tcfg, 64)
    sgd = train_epochs(state, model, tcfg, x, y, 1)
    gsam = ex.gsam_train_epochs(state, model, tcfg, x, y, 1, rho=0.0, alpha=0.3)
    for u, v in zip(jax.tree.leaves(sgd.variables), jax.tree.leaves(gsam.variables)):
        np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("adaptive", [True, False])
def test_gsam_direction_on_quadratic(adaptive):
    """L(w) = 0.5 w^T A w, A = diag(1, 3): grad = A w; hand-derived GSAM direction."""
    a = np.array([1.0, 3.0])
    w = {"u": np.array([1.0]), "v": np.array([2.0])}  # two leaves: norms must be global
    rho, alpha = 0.1, 0.3
    g = np.array([1.0, 6.0])
    wf = np.array([1.0, 2.0])
    if adaptive:  # e = rho g w^2 / ||w g||, ||w g|| = ||(1, 12)|| = sqrt(145)
        e = rho * g * wf**2 / np.sqrt(145.0)
    else:         # e = rho g / ||g||, ||g|| = sqrt(37)
        e = rho * g / np.sqrt(37.0)
    gp = a * (wf + e)
    cos = g @ gp / (np.linalg.norm(g) * np.linalg.norm(gp))
    g_vert = g - cos * np.linalg.norm(g) * gp / np.linalg.norm(gp)
    assert abs(g_vert @ gp) < 1e-9  # orthogonal to the perturbed gradient
    want = gp - alpha * g_vert

    grad_fn = lambda p: {"u": a[0] * p["u"], "v": a[1] * p["v"]}
    w32 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), w)
    got = ex.gsam_direction(grad_fn, w32, grad_fn(w32), rho=rho, alpha=alpha, adaptive=adaptive)
    np.testing.assert_allclose([got["u"][0], got["v"][0]], want, rtol=1e-6)


# On a failed read, tensorstore finishes its other pending reads after Orbax's event loop
# closed; Python reports that as an unraisable exception. Harmless, and not ours.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupt_and_missing_checkpoints_named(buffer, tmp_path):
    out = str(tmp_path / "copy")
    shutil.copytree(buffer[0], out)
    step = os.path.join(out, "expert_000", "2")
    for root, _, files in os.walk(step):
        for f in files:
            if root.endswith("/d"):  # tensorstore chunk files: garble the bytes
                with open(os.path.join(root, f), "r+b") as fh:
                    fh.write(b"\0garbage" * 8)
    with pytest.raises(ex.BufferError, match="expert_000/2"):
        ex.load_expert_epoch(out, 0, 2)
    shutil.rmtree(os.path.join(out, "expert_001", "1"))
    with pytest.raises(ex.BufferError, match="missing checkpoint .*expert_001/1"):
        ex.load_expert_epoch(out, 1, 1)
    os.remove(os.path.join(out, "buffer.json"))
    with pytest.raises(ex.BufferError, match="buffer.json"):
        ex.load_buffer(out)


def test_stack_experts_shapes(buffer):
    out, info, _ = buffer
    stacked = ex.stack_experts(out, max_start_epoch=1, expert_epochs=2)
    model = get_model(MODEL, 3, (8, 8, 1))
    shapes = jax.eval_shape(model.init, jax.random.key(0))["params"]
    for s, a in zip(jax.tree.leaves(shapes), jax.tree.leaves(stacked)):
        assert a.shape == (2, 4, *s.shape) and isinstance(a, jax.Array)
    theta_0, theta_t = jax.jit(ex.take_segment, static_argnums=3)(stacked, 1, 1, 2)
    _assert_trees_equal(theta_0, ex.load_expert_epoch(out, 1, 1))
    _assert_trees_equal(theta_t, ex.load_expert_epoch(out, 1, 3))
    with pytest.raises(ex.BufferError, match="beyond the stored epochs"):
        ex.stack_experts(out, max_start_epoch=2, expert_epochs=2)


# ---------------------------------------------------------------------------------------
# Experts trained together (experts_per_program > 1): the same checkpoints as one at a time.

GROUP_CASES = {  # model, config of both runs, group size, group mode
    "mlp_2": ("mlp_w16", CFG, 2, "unroll"),
    "convnet_3of4": ("convnet_d2_w4", dataclasses.replace(CFG, num_experts=4, epochs=2), 3,
                     "unroll"),
    "gsam_momentum": ("convnet_d2_w4", ex.ExpertConfig(
        num_experts=2, epochs=2, batch_size=32, dsa="crop", momentum=0.9, optimizer="gsam",
        gsam_rho=0.05), 2, "unroll"),
    "convnet_vmap_4": ("convnet_d2_w4", dataclasses.replace(CFG, num_experts=4, epochs=2), 4,
                       "vmap"),
}
# vmap: XLA:CPU's batched matmuls block the contraction differently from the lone ones, so
# the last bit may differ; measured max |diff| 1.5e-8 here (params ~0.1; about 1 ulp).
VMAP_ATOL = 1e-6


def _max_diff(a, b):
    return max(float(np.abs(np.asarray(u) - np.asarray(v)).max())
               for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


@pytest.mark.parametrize("case", list(GROUP_CASES))
def test_grouped_experts_equal_one_at_a_time(case, tmp_path):
    """Every trajectory checkpoint, bit for bit with "unroll" (3 of 4 leaves a group of 3
    and one of 1), to VMAP_ATOL with "vmap"; same layout and progress."""
    model, cfg, size, mode = GROUP_CASES[case]
    one, grouped = str(tmp_path / "one"), str(tmp_path / "grouped")
    a = ex.build_buffer(one, _data(), model, cfg, SEED, preprocess="normalize")
    calls = []
    b = ex.build_buffer(grouped, _data(), model,
                        dataclasses.replace(cfg, experts_per_program=size, group_mode=mode),
                        SEED, preprocess="normalize", progress_cb=lambda d, t: calls.append(d))
    n, epochs = cfg.num_experts, cfg.epochs
    assert calls == list(range(1, n * epochs + 1)) and b.status == "complete"
    diff = _max_diff(_all_params(grouped, n, epochs), _all_params(one, n, epochs))
    if mode == "unroll":
        assert diff == 0.0
        assert [r.test_accuracy for r in b.experts] == [r.test_accuracy for r in a.experts]
    else:
        assert diff <= VMAP_ATOL, diff
    assert sorted(os.listdir(grouped)) == sorted(os.listdir(one))
    assert sorted(os.listdir(os.path.join(grouped, "expert_001"))) == \
        sorted(os.listdir(os.path.join(one, "expert_001")))


def test_grouped_resume_is_bit_identical(buffer, tmp_path):
    """A group killed between its members' saves of one epoch resumes all of them (from
    different epochs); a buffer begun one at a time may be finished in groups, and back."""
    ref, _, _ = buffer
    grouped = dataclasses.replace(CFG, experts_per_program=2)
    out = str(tmp_path / "g")
    with pytest.raises(Stop):  # epoch 2 of expert 0 saved, expert 1's not
        ex.build_buffer(out, _data(), MODEL, grouped, SEED, preprocess="normalize",
                        progress_cb=_stop_at(3))
    assert [r.epochs_done for r in ex.load_buffer(out).experts] == [2, 1]
    calls = []
    ex.build_buffer(out, _data(), MODEL, grouped, SEED, preprocess="normalize",
                    progress_cb=lambda d, t: calls.append(d))
    assert calls == [4, 5, 6]
    _assert_trees_equal(_all_params(out), _all_params(ref))

    out2 = str(tmp_path / "mixed")  # stopped one at a time, finished as a group
    with pytest.raises(Stop):
        ex.build_buffer(out2, _data(), MODEL, CFG, SEED, preprocess="normalize",
                        progress_cb=_stop_at(4))
    info = ex.build_buffer(out2, _data(), MODEL, grouped, SEED, preprocess="normalize")
    assert info.config.experts_per_program == 2 and info.status == "complete"
    _assert_trees_equal(_all_params(out2), _all_params(ref))
