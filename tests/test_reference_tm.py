"""jaxdd's trajectory matching (MTT, TESLA, DATM) against float64 PyTorch reference fixtures.

The fixtures (tests/fixtures/reference/{mtt,tesla,datm}.npz) are written by
benchmarks/reference/{mtt,tesla,datm}.py, PyTorch programs that follow the reference repositories'
code (named in their docstrings) on a tiny problem: ConvNet depth 2 width 4 with instance norm
(jaxdd `convnet_d2_w4`), 3 classes x 2 images of 8x8x3, an expert trajectory stored as flat
parameter vectors in torch's `net.parameters()` order, start epoch 1, expert_epochs 2,
syn_steps 3, no augmentation. The trajectory's vectors map into jaxdd's parameter tree by
`mtt_import.to_flax` (MTT's buffer import), in float64.

Each test runs jaxdd's own functions, the ones `jaxdd distill` calls, under x64:
- full batch (batch_syn = all): `mtt.window_loss_and_grads` and the distiller's `step` (jaxdd's
  own permutation; the full-batch mean CE does not depend on it);
- minibatches: `tm_grad.matching_loss_and_grads` with the reference's stored step indices.
Compared: the matching loss, its gradient w.r.t. the images (NCHW -> NHWC), the inner lr
(jaxdd differentiates log alpha: dL/dalpha = dL/dlog_alpha / alpha) and, DATM, the label
logits; after a step, images, lr and labels. All float64: rtol 1e-10 (they agree to better
than 1e-12). No torch needed.
"""

from __future__ import annotations

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.methods import mtt, tm_grad
from jaxdd.models import get_model
from jaxdd.population.mtt_import import to_flax, torch_order

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")
MODEL, NUM_CLASSES, SHAPE = "convnet_d2_w4", 3, (8, 8, 3)
RTOL = 1e-10


def load(name: str) -> dict:
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as f:
        return {k: f[k] for k in f.files}


def nhwc(x_NCHW: np.ndarray) -> jax.Array:
    return jnp.asarray(np.transpose(x_NCHW, (0, 2, 3, 1)))


def close(actual, expected, what: str, rtol: float = RTOL) -> None:
    """Relative closeness in the L2 sense (so near-zero entries do not dominate) and elementwise."""
    a, e = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} vs reference {e.shape}"
    err = np.linalg.norm(a - e) / max(np.linalg.norm(e), 1e-300)
    assert err <= rtol, f"{what}: relative L2 error {err:.3e} > {rtol:.0e}"
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-9 * np.abs(e).max(), err_msg=what)


class Problem:
    """The fixture's model, expert window and synthetic set in jaxdd's terms (call under x64)."""

    def __init__(self, f: dict):
        model = get_model(MODEL, NUM_CLASSES, SHAPE)
        order, abstract = torch_order(MODEL, NUM_CLASSES, SHAPE)
        self.apply_fn = lambda p, x: model.apply({"params": p}, x)
        self.theta = lambda v: jax.tree.map(jnp.asarray, to_flax([v], order, abstract, "fixture",
                                                                  dtype=np.float64))
        s, m = int(f["start"]), int(f["expert_epochs"])
        self.segment = mtt.ExpertSegment(self.theta(f["traj"][s]), self.theta(f["traj"][s + m]))
        self.x = nhwc(f["x_syn"])
        self.lr = float(f["syn_lr"])
        self.log_lr = jnp.log(jnp.asarray(self.lr, jnp.float64))
        self.syn_steps = int(f["syn_steps"])

    def cfg(self, f: dict, **kw) -> mtt.MTTConfig:
        return mtt.MTTConfig(syn_steps=self.syn_steps, expert_epochs=int(f["expert_epochs"]),
                             lr_init=self.lr, image_chunks=1, dsa_strategy="", **kw)

    def full(self, cfg: mtt.MTTConfig, y):
        """(loss, grads) of `window_loss_and_grads` and (state, metrics) of one distiller step
        from the fixture's set, as one compiled program."""
        distiller = mtt.make_mtt(cfg, self.apply_fn)

        def both(x, y, log_lr, segment):
            syn = mtt.SynState(x, y, log_lr)
            loss, grads, _ = mtt.window_loss_and_grads(cfg, self.apply_fn, syn, segment, jax.random.key(0))
            state = distiller.init(jax.random.key(0), x, y, lr_init=jnp.exp(log_lr))
            return loss, grads, distiller.step(state, segment, jax.random.key(1))

        return jax.jit(both)(self.x, y, self.log_lr, self.segment)

    def minibatch(self, mode: str, y, idx_NxB, label_kind=None):
        fn = jax.jit(functools.partial(tm_grad.matching_loss_and_grads, mode, self.apply_fn,
                                       label_kind=label_kind))
        keys = jax.random.split(jax.random.key(0), idx_NxB.shape[0])  # unused: no augmentation
        return fn(self.x, y, self.log_lr, self.segment.theta_0, self.segment.theta_target,
                  jnp.asarray(idx_NxB, jnp.int32), keys)


def check_grads(p: Problem, f: dict, case: str, loss, grads) -> None:
    close(loss, f[f"{case}_loss"], f"{case} loss")
    close(grads.x_syn_NHWC, nhwc(f[f"{case}_grad_x"]), f"{case} d loss / d images")
    close(grads.log_lr / p.lr, f[f"{case}_grad_lr"], f"{case} d loss / d syn_lr")


# ----------------------------------------------------------------------------------------------
# MTT (GeorgeCazenavette/mtt-distillation distill.py)
# ----------------------------------------------------------------------------------------------


def test_mtt_full_batch_loss_grads_and_step():
    f = load("mtt")
    with jax.enable_x64(True):
        p = Problem(f)
        cfg = p.cfg(f, grad_mode="remat", lr_img=float(f["lr_img"]), lr_lr=float(f["lr_lr"]),
                    momentum_img=float(f["momentum"]), momentum_lr=float(f["momentum"]))
        loss, grads, (state, metrics) = p.full(cfg, jnp.asarray(f["y_syn"], jnp.int32))
        assert grads.labels is None
        check_grads(p, f, "full", loss, grads)
        close(metrics["loss"], f["full_loss"], "step loss")
        close(state.syn.x_syn_NHWC, nhwc(f["full_x_next"]), "images after the step")
        close(jnp.exp(state.syn.log_lr), f["full_lr_next"], "syn_lr after the step")


@pytest.mark.parametrize("grad_mode", [pytest.param("bptt", marks=pytest.mark.slow), "remat"])
def test_mtt_minibatch_schedule(grad_mode):
    f = load("mtt")
    with jax.enable_x64(True):
        p = Problem(f)
        loss, grads = p.minibatch(grad_mode, jnp.asarray(f["y_syn"], jnp.int32), f["mb_idx"])
        check_grads(p, f, "mb", loss, grads)


# ----------------------------------------------------------------------------------------------
# TESLA (justincui03/tesla distill.py): grad_mode="tesla". The reference's image gradient is
# half the derivative of its loss (`2 * torch.autograd.grad(...)` repeats a tuple; see
# benchmarks/reference/tesla.py), so jaxdd's image gradient is compared with 2 x the stored one
# and jaxdd's step with lr_img / 2 with the reference's step.
# ----------------------------------------------------------------------------------------------


def check_tesla(p: Problem, f: dict, case: str, loss, grads) -> None:
    close(loss, f[f"{case}_loss"], f"{case} loss")
    close(grads.x_syn_NHWC, 2.0 * nhwc(f[f"{case}_grad_x"]), f"{case} d loss / d images")
    close(grads.log_lr / p.lr, f[f"{case}_grad_lr"], f"{case} d loss / d syn_lr")


def test_tesla_full_batch_hard_labels_and_step():
    f = load("tesla")
    with jax.enable_x64(True):
        p = Problem(f)
        cfg = p.cfg(f, grad_mode="tesla", lr_img=float(f["lr_img"]) / 2, lr_lr=float(f["lr_lr"]),
                    momentum_img=float(f["momentum"]), momentum_lr=float(f["momentum"]))
        loss, grads, (state, _) = p.full(cfg, jnp.asarray(f["y_syn"], jnp.int32))
        check_tesla(p, f, "full", loss, grads)
        close(state.syn.x_syn_NHWC, nhwc(f["full_x_next"]), "images after the step (lr_img / 2)")
        close(jnp.exp(state.syn.log_lr), f["full_lr_next"], "syn_lr after the step")


def test_tesla_minibatch_schedule():
    f = load("tesla")
    with jax.enable_x64(True):
        p = Problem(f)
        loss, grads = p.minibatch("tesla", jnp.asarray(f["y_syn"], jnp.int32), f["mb_idx"])
        check_tesla(p, f, "mb", loss, grads)


def test_tesla_teacher_labels():
    """label_mode="tesla": labels = softmax(target expert(x)), assigned in the step."""
    f = load("tesla")
    with jax.enable_x64(True):
        p = Problem(f)
        cfg = p.cfg(f, grad_mode="tesla", label_mode="tesla")
        y0 = jnp.zeros((p.x.shape[0], NUM_CLASSES), jnp.float64)  # overwritten by the assignment
        syn = mtt.SynState(p.x, y0, p.log_lr)
        fn = jax.jit(functools.partial(mtt.window_loss_and_grads, cfg, p.apply_fn))
        loss, grads, log_probs = fn(syn, p.segment, jax.random.key(0))
        close(jnp.exp(log_probs), f["soft_labels"], "assigned soft labels")
        check_tesla(p, f, "soft", loss, grads)


# ----------------------------------------------------------------------------------------------
# DATM (NUS-HPC-AI-Lab/DATM distill/DATM.py): learned label logits (label_mode="learned")
# ----------------------------------------------------------------------------------------------


def test_datm_label_initialisation():
    """datm_init_labels: mean logits of the experts (last timestamps) that get an image right."""
    f = load("datm")
    with jax.enable_x64(True):
        p = Problem(f)
        finals = [p.theta(t[-1]) for t in f["trajs"]]
        stacked = jax.tree.map(lambda *a: jnp.stack(a), *finals)
        logits, num_correct = jax.jit(functools.partial(mtt.datm_init_labels, p.apply_fn))(
            stacked, p.x, jnp.asarray(f["y_syn"], jnp.int32))
        np.testing.assert_array_equal(np.asarray(num_correct), f["num_correct"])
        close(logits, f["init_labels"], "initial label logits")


def check_datm(p: Problem, f: dict, case: str, loss, grads) -> None:
    check_grads(p, f, case, loss, grads)
    close(grads.labels, f[f"{case}_grad_y"], f"{case} d loss / d label logits")


def test_datm_full_batch_loss_grads_and_gated_step():
    f = load("datm")
    with jax.enable_x64(True):
        p = Problem(f)
        cfg = p.cfg(f, grad_mode="remat", label_mode="learned", max_loss=float(f["threshold"]),
                    lr_img=float(f["lr_img"]), lr_lr=float(f["lr_lr"]), lr_y=float(f["lr_y"]),
                    momentum_img=float(f["momentum"]), momentum_lr=float(f["momentum"]),
                    momentum_y=float(f["momentum_y"]))
        loss, grads, (state, metrics) = p.full(cfg, jnp.asarray(f["init_labels"]))
        check_datm(p, f, "full", loss, grads)
        assert not bool(metrics["skipped"])
        close(state.syn.x_syn_NHWC, nhwc(f["full_x_next"]), "images after the step")
        close(jnp.exp(state.syn.log_lr), f["full_lr_next"], "syn_lr after the step")
        close(state.syn.y_syn, f["full_y_next"], "label logits after the step")


def test_datm_minibatch_schedule():
    f = load("datm")
    with jax.enable_x64(True):
        p = Problem(f)
        loss, grads = p.minibatch("remat", jnp.asarray(f["init_labels"]), f["mb_idx"], label_kind="logits")
        check_datm(p, f, "mb", loss, grads)
