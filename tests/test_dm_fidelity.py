"""DM against the reference's operations (issue #14: the DM equal-budget gap).

- one jaxdd DM step = the reference's `optimizer_img.step()`: SGD with PyTorch momentum on the
  SUM over classes of ||mean emb(real_c) - mean emb(syn_c)||^2 (a mean would divide the
  effective lr by K), with a network freshly drawn from the step's key;
- the DM Fashion-MNIST `cpu` preset keeps the reference's values (main_DM.py) except its
  named reductions;
- the PyTorch DSA of benchmarks/dm_vs_torch.py applies jaxdd's transforms (needs torch).
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.configs import load_config
from jaxdd.methods.dm import DMConfig, make_dm
from jaxdd.methods.matching import forward_features
from jaxdd.models import get_model

K, IPC, B = 3, 2, 4
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


def _reference_grad(model, key, x_real, x_syn_N):
    """d/dx_syn of sum_c ||mean_b e(real_c,b) - mean_i e(syn_c,i)||^2, written as main_DM.py's
    class loop, with the network the jaxdd step draws from `key`."""
    k_net, _ = jax.random.split(key)
    v = model.init(k_net)

    def loss(x):
        total = 0.0
        for c in range(K):
            e_r = forward_features(model, v, x_real[c], True).emb_BxD
            e_s = forward_features(model, v, x[c * IPC:(c + 1) * IPC], True).emb_BxD
            total = total + jnp.sum((jax.lax.stop_gradient(e_r).mean(0) - e_s.mean(0)) ** 2)
        return total

    return jax.grad(loss)(x_syn_N)


def test_dm_step_is_torch_sgd_momentum_on_the_class_sum():
    model = get_model("mlp_w16", K, (8, 8, 1))
    lr, mom = 0.7, 0.5
    dist = make_dm(DMConfig(lr_img=lr, momentum_img=mom, dsa_strategy="none", batch_real=B), model, K)
    kx, kr1, kr2 = jax.random.split(jax.random.key(0), 3)
    x0 = jax.random.normal(kx, (K * IPC, 8, 8, 1))
    y0 = jnp.repeat(jnp.arange(K), IPC)
    reals = [jax.random.normal(k, (K, B, 8, 8, 1)) + 0.5 for k in (kr1, kr2)]
    keys = [jax.random.key(1), jax.random.key(2)]
    step = jax.jit(dist.step)
    state = dist.init(jax.random.key(3), x0, y0)
    state, m1 = step(state, reals[0], keys[0])
    state, _ = step(state, reals[1], keys[1])
    # torch.optim.SGD(momentum=m, dampening=0): buf = g; then buf = m * buf + g; x -= lr * buf
    g1 = _reference_grad(model, keys[0], reals[0], x0)
    x1 = x0 - lr * g1
    g2 = _reference_grad(model, keys[1], reals[1], x1)
    x2 = x1 - lr * (mom * g1 + g2)
    np.testing.assert_allclose(state.syn.x_syn_NHWC, x2, rtol=1e-4, atol=1e-6)
    # (a per-class mean, or optax's momentum on a different convention, would fail this)
    assert float(m1["loss"]) > 0


def test_dm_cpu_preset_keeps_the_reference_values():
    """main_DM.py defaults: lr_img 1 (:23), momentum 0.5 (:102), init 'real' (:27); DSA
    strategy with flip (:28; readme.md:113 drops flip for MNIST / SVHN only, not for
    FashionMNIST); reductions named in the preset: 500 iterations, batch_real 64, width 32."""
    cfg = load_config("classic/dm_fashion_mnist_cpu", 10)
    dm = cfg["dm"]
    assert (dm["lr_img"], dm.get("momentum_img", DMConfig.momentum_img)) == (1.0, 0.5)
    assert dm.get("init", DMConfig.init) == "real"
    assert dm["dsa_strategy"] == "color_crop_cutout_flip_scale_rotate"  # readme.md:113
    assert (cfg["iterations"], dm["batch_real"], cfg["model"]) == (500, 64, "convnet_d3_w32")


@pytest.mark.parametrize("preset,section", [
    ("classic/dsa_fashion_mnist", "dsa"), ("classic/dsa_fashion_mnist_cpu", "dsa"),
    ("classic/dcc_fashion_mnist_cpu", "dsa"), ("classic/datadam_fashion_mnist", "datadam"),
    ("classic/datadam_fashion_mnist_cpu", "datadam"), ("classic/dm_fashion_mnist", "dm")])
def test_fashion_mnist_presets_keep_dsa_flip(preset, section):
    """The DatasetCondensation readme (DSA section) uses flip for FashionMNIST and CIFAR and
    drops it only for the digit sets; DM, DataDAM and DCC build on that code."""
    for ipc in (1, 10, 50):
        assert load_config(preset, ipc)[section]["dsa_strategy"] == "color_crop_cutout_flip_scale_rotate"


def test_benchmark_torch_dsa_equals_jaxdd_transforms():
    torch = pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import dm_vs_torch
    finally:
        sys.path.pop(0)
    errs = dm_vs_torch.check_dsa(torch, np)
    assert set(errs) == {"color", "crop", "cutout", "scale", "rotate"}
    assert max(errs.values()) <= dm_vs_torch.DSA_CHECK_TOL, errs


@pytest.mark.parametrize("method", ["dm", "datadam"])
def test_section_iterations_is_refused_not_ignored(method, tiny_npz, tmp_path, capsys):
    """`dm.iterations` records the reference's `Iteration`; the run's length is the top-level
    `iterations`, so a different value in the section is an error, not a silent no-op."""
    from jaxdd.cli import main
    out = tmp_path / method
    argv = ["distill", "--config", os.path.join(ROOT, "configs", "classic", f"{method}_fashion_mnist_cpu.py"),
            "--ipc", "10", "--out", str(out), "--quiet", "--no-eval",
            "--set", f"dataset=npz:{tiny_npz}", "--set", "model=convnet_d2_w4",
            "--set", "iterations=2", "--set", f"{method}.iterations=7"]
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert f"{method}.iterations=7 is not read" in err and "iterations=7 instead" in err
    assert not out.exists()
