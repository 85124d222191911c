"""DATM as its reference code does it: images an expert classifies correctly, label logits of
the final expert checkpoints, the reference presets, and the evaluation batch size."""

import os

import jax
import numpy as np
import pytest
from conftest import write_tiny_npz
from test_pipeline_mtt import _tiny_sets

from jaxdd import data as jdata
from jaxdd.configs import ConfigError, load_config
from jaxdd.methods.mtt import MTTConfig, datm_pick_correct
from jaxdd.pipelines import common
from jaxdd.pipelines.common import dataclass_from
from jaxdd.pipelines import mtt as pmtt
from jaxdd.population import experts as jexperts

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "mtt")
DATM10 = os.path.join(CONFIGS, "datm_cifar10.py")
DATM100 = os.path.join(CONFIGS, "datm_cifar100.py")
FINAL, WINDOW = 3, 2   # expert epochs; window end = max_start 1 + expert_epochs 1


def _context(tmp, sets):
    """The DATM CIFAR-10 preset at IPC 10 shrunk onto the tiny npz (3 classes, 8x8x1)."""
    cfg = load_config(DATM10, 10, _tiny_sets(str(tmp / "tiny.npz"), str(tmp / "buf")) + [
        f"experts.epochs={FINAL}", "mtt.current_max_start=None", "mtt.expansion_end=None",
        "mtt.batch_syn=None", "eval.seeds=1"] + sets)
    return common.context(cfg, str(tmp / "out"), quiet=True)


def _prepare(tmp, sets):
    ctx = _context(tmp, sets)
    return ctx, pmtt.prepare(ctx)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("datm")
    write_tiny_npz(tmp / "tiny.npz")
    return tmp


def _logits_E(ctx, epoch, x_NHWC):
    """Each expert's logits at `epoch` (float64), one expert at a time as DATM.py:282-297."""
    path = ctx.cfg["buffer_dir"]
    info = jexperts.load_buffer(path)
    model = info.model()
    return np.stack([np.asarray(model.apply({"params": jexperts.load_expert_epoch(path, e, epoch)},
                                            x_NHWC), np.float64)
                     for e in info.complete_experts])


def _datm_average(logits_ExNxK, y_N):
    """DATM.py:298-306: the mean of the logits of the experts that predict the label (an
    image no expert gets right, where DATM divides by zero, gets the mean of all)."""
    mask = (logits_ExNxK.argmax(-1) == y_N[None])[..., None]
    n = mask.sum(0)
    return np.where(n > 0, (logits_ExNxK * mask).sum(0) / np.maximum(n, 1), logits_ExNxK.mean(0))


def test_init_correct_only_draws_among_images_the_expert_gets_right(tiny):
    ctx, prep = _prepare(tiny, [])
    assert ctx.cfg["mtt"]["init_correct_only"] and ctx.cfg["mtt"]["label_expert_epoch"] == "final"
    x0 = np.asarray(prep.state.syn.x_syn_NHWC)
    pool = jdata.apply(ctx.pre, ctx.ds.x_train)
    # Which training image each synthetic one is (all distinct, class-major).
    idx = np.array([int(np.flatnonzero(np.all(pool == x, axis=(1, 2, 3)))[0]) for x in x0])
    assert len(set(idx.tolist())) == len(idx)
    np.testing.assert_array_equal(ctx.ds.y_train[idx], np.repeat(np.arange(3), 10))
    # The experts at their final checkpoint pick them: expert 0 where it gets >= IPC images of
    # the class right (all picks among those), else all it gets right plus ones expert 1 gets
    # right (DATM.py:218-225). These tiny experts have both cases.
    right_ExN = _logits_E(ctx, FINAL, pool).argmax(-1) == ctx.ds.y_train[None]
    cases = set()
    for c in range(3):
        pick, of_c = idx[c * 10:(c + 1) * 10], ctx.ds.y_train == c
        if (right_ExN[0] & of_c).sum() >= 10:
            assert right_ExN[0, pick].all()
            cases.add("expert 0")
        else:
            assert set(np.flatnonzero(right_ExN[0] & of_c)) <= set(pick)
            assert (right_ExN[0, pick] | right_ExN[1, pick]).all()
            cases.add("expert 1")
    assert cases == {"expert 0", "expert 1"}
    # Off: MTT's random real images, unchanged.
    x_mtt, _ = common.init_images(ctx, jax.random.fold_in(ctx.key, 0))
    assert not np.array_equal(x_mtt, x0)


def test_pick_correct_is_uniform_among_correct_and_falls_back_as_datm():
    class_indices = [np.arange(0, 40), np.arange(40, 80)]
    label = np.repeat([0, 1], 40)
    right0 = (np.arange(80) % 4 == 0)          # expert 0 gets every 4th image right
    right1 = (np.arange(80) % 2 == 1)          # expert 1 gets the odd ones right

    def predict(e, idx):
        ok = (right0 if e == 0 else right1)[idx]
        return np.where(ok, label[idx], 1 - label[idx])

    seen = set()
    for s in range(30):
        idx = datm_pick_correct(jax.random.key(s), class_indices, 3, predict, 2, chunk=7)
        assert idx.shape == (6,) and len(set(idx.tolist())) == 6
        assert (label[idx] == [0, 0, 0, 1, 1, 1]).all() and right0[idx].all()
        seen |= set(idx.tolist())
    assert seen == set(np.flatnonzero(right0).tolist())   # every correct image can be drawn
    # 10 right per class for expert 0: IPC 14 takes all 10, then 4 that expert 1 gets right.
    idx = datm_pick_correct(jax.random.key(0), class_indices, 14, predict, 2, chunk=7)
    assert right0[idx].sum() == 20 and (right0 | right1)[idx].all()
    with pytest.raises(ValueError, match="class 0: only 30 of its 40"):
        datm_pick_correct(jax.random.key(0), class_indices, 31, predict, 2)


def test_label_logits_average_the_final_checkpoints(tiny):
    ctx, prep = _prepare(tiny, [])
    x0 = np.asarray(prep.state.syn.x_syn_NHWC)
    y = np.repeat(np.arange(3), 10)
    final = _datm_average(_logits_E(ctx, FINAL, x0), y)
    np.testing.assert_allclose(np.asarray(prep.state.syn.y_syn), final, rtol=1e-5, atol=1e-5)
    window = _datm_average(_logits_E(ctx, WINDOW, x0), y)
    assert np.abs(final - window).max() > 1e-3   # the choice matters here
    # The "window" option: the experts at max_start + expert_epochs, as jaxdd did before.
    ctx_w, prep_w = _prepare(tiny, ["mtt.label_expert_epoch='window'", "mtt.init_correct_only=False"])
    x_w = np.asarray(prep_w.state.syn.x_syn_NHWC)
    np.testing.assert_array_equal(x_w, common.init_images(ctx_w, jax.random.fold_in(ctx_w.key, 0))[0])
    np.testing.assert_allclose(np.asarray(prep_w.state.syn.y_syn),
                               _datm_average(_logits_E(ctx_w, WINDOW, x_w), y), rtol=1e-5, atol=1e-5)


# (file, ipc) -> the reference's values (each preset's docstring cites file and line).
REFERENCE = {
    (DATM10, 1): dict(syn_steps=80, expert_epochs=2, lr_img=100.0, lr_lr=1e-7, lr_init=0.01,
                      batch_syn=10, lr_y=5.0, max_loss=1.1, min_start=0, max_start=4,
                      current_max_start=None, expansion_end=None),
    (DATM10, 10): dict(syn_steps=80, expert_epochs=2, lr_img=100.0, lr_lr=1e-5, lr_init=0.01,
                       batch_syn=100, lr_y=2.0, max_loss=1.0, min_start=0, max_start=20,
                       current_max_start=10, expansion_end=1000),
    (DATM10, 50): dict(syn_steps=80, expert_epochs=2, lr_img=1000.0, lr_lr=1e-5, lr_init=0.01,
                       batch_syn=500, lr_y=2.0, max_loss=1.0, min_start=0, max_start=40,
                       current_max_start=20, expansion_end=2000),
    (DATM100, 10): dict(syn_steps=80, expert_epochs=2, lr_img=1000.0, lr_lr=1e-5, lr_init=0.01,
                        batch_syn=1000, lr_y=10.0, max_loss=1.0, min_start=0, max_start=50,
                        current_max_start=30, expansion_end=2000),
}


@pytest.mark.parametrize("path,ipc", sorted(REFERENCE), ids=lambda v: str(v) if
                         isinstance(v, int) else os.path.basename(v))
def test_datm_presets_carry_the_reference_values(path, ipc):
    cfg = load_config(path, ipc)
    assert {k: cfg["mtt"].get(k) for k in REFERENCE[path, ipc]} == REFERENCE[path, ipc]
    assert cfg["iterations"] == 10000 and cfg["preprocess"] == "zca" and cfg["model"] == "convnet"
    m = dataclass_from(MTTConfig, cfg["mtt"])
    assert (m.label_mode, m.label_expert_epoch, m.init_correct_only, m.momentum_y) == (
        "learned", "final", True, 0.9)
    assert {k: cfg["experts"][k] for k in ("epochs", "optimizer", "gsam_rho", "gsam_alpha",
                                           "lr", "batch_size")} == dict(
        epochs=100, optimizer="gsam", gsam_rho=0.01, gsam_alpha=0.3, lr=0.01, batch_size=256)
    assert cfg["eval"]["protocol"] == "mtt" and cfg["eval"]["overrides"] == {"batch_size": 128}


def test_eval_batch_override_reaches_the_evaluation(tiny, monkeypatch):
    with pytest.raises(ConfigError, match="eval.overrides.batch: unknown field"):
        load_config(DATM10, 10, ["eval.overrides={'batch': 128}"])
    with pytest.raises(ConfigError, match="eval.overrides.batch_size must be > 0"):
        load_config(DATM10, 10, ["eval.overrides={'batch_size': 0}"])
    import jaxdd.evaluate.core as core
    seen = []
    real = core.train_seeds
    monkeypatch.setattr(core, "train_seeds", lambda keys, model, cfg, *a, **k: (
        seen.append(cfg.batch_size), real(keys, model, cfg, *a, **k))[1])
    ctx = _context(tiny, ["eval.overrides={'batch_size': 16}"])
    out = common.evaluate_with_baseline(ctx, {})   # the random real subset, same protocol
    assert seen == [16] and out["random"]["batch_size"] == 16
