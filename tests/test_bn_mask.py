"""A padded last batch is exact with BatchNorm: the batch statistics (normalisation and
running statistics) cover the real rows only, as PyTorch's smaller last batch
(drop_last=False) does, on one device and data-parallel."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdd.models import get_model
from jaxdd.train.loop import (TrainConfig, make_optimizer, soft_cross_entropy, steps_per_epoch,
                              train_epochs, train_init)

HERE = os.path.dirname(os.path.abspath(__file__))
N, BS, K = 10, 4, 3          # batches of 4, 4 and 2 real images
SHAPE = (8, 8, 1)


def _data():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(N, *SHAPE)), jnp.float32)
    y = jnp.asarray(rng.integers(0, K, N), jnp.int32)
    return x, y


def _unpadded_epoch(model, cfg, state, x, y):
    """Epoch 0 of `train_epochs` written out: the same order, then batches of 4, 4 and 2
    images, each a plain (unpadded, unmasked) forward / backward / SGD step."""
    tx = make_optimizer(cfg, cfg.epochs * steps_per_epoch(N, BS))
    k_perm, _ = jax.random.split(jax.random.fold_in(state.key, 0))
    perm = jax.random.permutation(k_perm, N)
    targets = jax.nn.one_hot(y, K, dtype=jnp.float32)

    def loss(params, rest, xb, tb):
        logits, new = model.apply_train({**rest, "params": params}, xb)
        return soft_cross_entropy(logits, tb).mean(), new

    variables, opt_state = state.variables, state.opt_state
    sizes = []
    for s in range(0, N, BS):
        idx = perm[s:s + BS]
        sizes.append(len(idx))
        params = variables["params"]
        rest = {k: v for k, v in variables.items() if k != "params"}
        grads, new = jax.grad(loss, has_aux=True)(params, rest, x[idx], targets[idx])
        updates, opt_state = tx.update(grads, opt_state, params)
        variables = {**new, "params": optax.apply_updates(params, updates)}
    assert sizes == [4, 4, 2]
    return variables


def _assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), rtol=rtol, atol=atol)


@pytest.mark.parametrize("name", ["convnet_d2_w4_bn", "convnet_d2_w4"])
def test_padded_last_batch_equals_a_smaller_last_batch(name):
    """One epoch of N=10 at batch 4 (last batch padded to 4, two rows masked) equals the
    three unpadded batches 4, 4, 2: params and BN running statistics. The instance-norm
    ConvNet is the control (no batch statistics: it always held)."""
    model = get_model(name, K, SHAPE)
    cfg = TrainConfig(epochs=1, batch_size=BS, lr=0.05, image_chunks=1, dsa="")
    x, y = _data()
    state = train_init(jax.random.key(0), model, cfg, N)
    got = jax.jit(lambda s: train_epochs(s, model, cfg, x, y, 1).variables)(state)
    want = jax.jit(lambda s: _unpadded_epoch(model, cfg, s, x, y))(state)
    assert model.has_batch_stats == ("batch_stats" in got)
    _assert_trees_close(got, want)
    moved = max(float(jnp.abs(u - v).max()) for u, v in
                zip(jax.tree.leaves(got), jax.tree.leaves(state.variables)))
    assert moved > 1e-3   # the epoch did something


# resnet18 at 16 px: at 8 px its last BN sees 1x1 maps of 3 images, a float32 variance so
# ill-conditioned that any change of summation order moves the logits by 1e-2 (float64: exact)
@pytest.mark.parametrize("name,shape", [("convnet_d2_w4_bn", SHAPE), ("resnet18", (16, 16, 3)),
                                        ("wrn_10_1", (28, 28, 1))])
def test_masked_apply_train_is_the_real_rows(name, shape):
    """apply_train(variables, x, mask): real rows' logits and the running statistics are
    those of the real rows alone, whatever the masked rows hold, for every BN family."""
    model = get_model(name, K, shape)
    v = model.init(jax.random.key(1))
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(5, *shape)), jnp.float32)
    mask = jnp.asarray([1, 0, 1, 1, 0], jnp.float32)
    logits, new = jax.jit(model.apply_train)(v, x, mask)
    junk = x.at[jnp.array([1, 4])].set(100.0)
    logits_junk, new_junk = jax.jit(model.apply_train)(v, junk, mask)
    real = jnp.array([0, 2, 3])
    want_logits, want = jax.jit(model.apply_train)(v, x[real])
    np.testing.assert_allclose(logits[real], want_logits, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits_junk[real], want_logits, rtol=1e-4, atol=1e-5)
    _assert_trees_close(new["batch_stats"], want["batch_stats"], rtol=1e-4, atol=1e-6)
    _assert_trees_close(new_junk["batch_stats"], want["batch_stats"], rtol=1e-4, atol=1e-6)


def test_mask_leaves_models_without_batch_norm_alone():
    model = get_model("convnet_d2_w4", K, SHAPE)
    v = model.init(jax.random.key(1))
    x, _ = _data()
    mask = jnp.asarray([1.0] * 7 + [0.0] * 3)
    a, va = model.apply_train(v, x, mask)
    b, vb = model.apply_train(v, x)
    np.testing.assert_array_equal(a, b)
    assert va is v and vb is v


def test_mask_of_the_wrong_length_is_refused():
    model = get_model("convnet_d2_w4_bn", K, SHAPE)
    v = model.init(jax.random.key(1))
    x, _ = _data()
    with pytest.raises(ValueError, match="mask"):
        model.apply_train(v, x, jnp.ones((N - 1,)))


def test_sharded_masked_batch_norm_equals_one_device():
    """A masked batch split over 8 devices (two of them holding only padding) gives the
    1-device BN statistics and update."""
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, os.path.join(HERE, "sharding_check.py"), "bnmask"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])["bnmask"]
    assert res["maxdiff"] <= 1e-5, res
    assert res["padding_matters"] == 0.0, res
    assert "data" in res["spec"], res


def test_same_step_as_pytorch_with_a_smaller_last_batch():
    """One epoch (4, 4, 2) of a BN ConvNet against PyTorch (drop_last=False): parameters and
    running statistics (the running variance averages the unbiased batch variance,
    n / (n - 1) x the biased one, in both: jaxdd.models.layers.BatchNorm)."""
    torch = pytest.importorskip("torch")
    tnn = torch.nn
    model = get_model("convnet_d2_w4_bn", K, SHAPE)
    lr, wd, mom = 0.05, 5e-4, 0.9
    cfg = TrainConfig(epochs=1, batch_size=BS, lr=lr, momentum=mom, weight_decay=wd,
                      schedule="step", image_chunks=1, dsa="")
    x, y = _data()
    state = train_init(jax.random.key(0), model, cfg, N)
    got = jax.jit(lambda s: train_epochs(s, model, cfg, x, y, 1).variables)(state)

    p = jax.tree.map(lambda a: torch.tensor(np.array(a)), state.variables["params"])
    convs = [tnn.Conv2d(c_in, 4, 3, padding=1) for c_in in (SHAPE[2], 4)]
    bns = [tnn.BatchNorm2d(4, eps=1e-5, momentum=0.1) for _ in range(2)]
    fc = tnn.Linear(16, K)
    with torch.no_grad():
        for i in range(2):
            convs[i].weight.copy_(p[f"Conv3x3_{i}"]["kernel"].permute(3, 2, 0, 1))
            convs[i].bias.copy_(p[f"Conv3x3_{i}"]["bias"])
            bns[i].weight.copy_(p[f"BatchNorm_{i}"]["scale"])
            bns[i].bias.copy_(p[f"BatchNorm_{i}"]["bias"])
        fc.weight.copy_(p["TorchDense_0"]["Dense_0"]["kernel"].T)
        fc.bias.copy_(p["TorchDense_0"]["Dense_0"]["bias"])
    batch_vars = {0: [], 1: []}   # biased variance of each BN input, per batch
    for i, bn in enumerate(bns):
        bn.register_forward_hook(lambda m, inp, out, i=i: batch_vars[i].append(
            inp[0].detach().var(dim=(0, 2, 3), unbiased=False)))

    def forward(xb):
        h = xb.permute(0, 3, 1, 2)
        for conv, bn in zip(convs, bns):
            h = tnn.functional.avg_pool2d(torch.relu(bn(conv(h))), 2)
        return fc(h.permute(0, 2, 3, 1).flatten(1))   # jaxdd flattens NHWC

    net = tnn.ModuleList([*convs, *bns, fc]).train()
    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=mom, weight_decay=wd)
    k_perm, _ = jax.random.split(jax.random.fold_in(state.key, 0))
    perm = np.asarray(jax.random.permutation(k_perm, N))
    xt, yt = torch.tensor(np.asarray(x)), torch.tensor(np.asarray(y)).long()
    total = steps_per_epoch(N, BS)
    for step, s in enumerate(range(0, N, BS)):   # DataLoader(drop_last=False): 4, 4, 2
        idx = torch.tensor(perm[s:s + BS])
        for g in opt.param_groups:
            g["lr"] = lr * (0.1 if step >= total // 2 else 1.0)   # schedule "step"
        opt.zero_grad()
        tnn.functional.cross_entropy(forward(xt[idx]), yt[idx]).backward()
        opt.step()

    t = lambda a: a.detach().numpy()  # noqa: E731
    gp, gs = got["params"], got["batch_stats"]
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)  # noqa: E731
    for i in range(2):
        close(gp[f"Conv3x3_{i}"]["kernel"], t(convs[i].weight.permute(2, 3, 1, 0)))
        close(gp[f"Conv3x3_{i}"]["bias"], t(convs[i].bias))
        close(gp[f"BatchNorm_{i}"]["scale"], t(bns[i].weight))
        close(gp[f"BatchNorm_{i}"]["bias"], t(bns[i].bias))
        close(gs[f"BatchNorm_{i}"]["mean"], t(bns[i].running_mean))
        torch_var = torch.ones(4)
        for (xb, v) in zip((4, 4, 2), batch_vars[i]):
            n_b = xb * (8 // 2 ** i) ** 2   # the real rows only (mask)
            torch_var = 0.9 * torch_var + 0.1 * v * n_b / (n_b - 1)
        close(t(torch_var), t(bns[i].running_var))   # the hook saw the batches torch used
        close(gs[f"BatchNorm_{i}"]["var"], t(bns[i].running_var))
    close(gp["TorchDense_0"]["Dense_0"]["kernel"], t(fc.weight.T))
    close(gp["TorchDense_0"]["Dense_0"]["bias"], t(fc.bias))
