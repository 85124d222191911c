"""G-VBSM: conv/patch statistics, dropped terms, target cache, diversity term, NNX == Linen,
and the Fashion-MNIST-style CPU pipeline with every G-VBSM option on (tiny sizes)."""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxdd import artefact
from jaxdd.population import conv_targets as CT
from jaxdd.cli import main
from jaxdd.methods.statistics.capture import (ConvStat, bn_input_stats, bn_layer_paths,
                                              conv_input_stats, conv_layer_paths, patch_stats)
from jaxdd.methods.statistics.losses import (_pool_matrix, adaptive_avg_pool, conv_drop_mask,
                                             conv_ema_stats, conv_matching_loss, diversity_loss,
                                             eigvalsh_stable, sre2l_loss)
from jaxdd.methods.statistics.recover import (RecoverConfig, batch_layout, make_recover,
                                              stack_teachers)
from jaxdd.methods.statistics.targets import compute_conv_targets
from jaxdd.models.layers import Conv3x3
from jaxdd.tree import tree_all_finite


class LinenNet(nn.Module):
    """conv -> BN -> relu -> Conv3x3 -> BN -> relu -> mean -> dense (2 convs, 2 BNs)."""

    @nn.compact
    def __call__(self, x_NHWC, train: bool = False):
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x_NHWC)))
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(Conv3x3(4)(h)))
        return nn.Dense(3)(h.mean((1, 2)))


class NNXNet(nnx.Module):
    """LinenNet in NNX; BN left in train mode and a Dropout, both must be made inference."""

    def __init__(self, rngs: nnx.Rngs):
        self.conv0 = nnx.Conv(2, 4, (3, 3), rngs=rngs)
        self.bn0 = nnx.BatchNorm(4, rngs=rngs)
        self.conv1 = nnx.Conv(4, 4, (3, 3), rngs=rngs)
        self.bn1 = nnx.BatchNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.5, rngs=rngs)
        self.head = nnx.Linear(4, 3, rngs=rngs)

    def __call__(self, x_NHWC):
        h = nnx.relu(self.bn0(self.conv0(x_NHWC)))
        h = nnx.relu(self.bn1(self.conv1(h)))
        return self.head(self.drop(h.mean((1, 2))))


@functools.cache
def _linen():
    """LinenNet on 8x8x2 with non-trivial running statistics (jitted: eager ops are slow)."""
    net = LinenNet()

    @jax.jit
    def make(key):
        v = net.init(key, jnp.zeros((1, 8, 8, 2)))
        ks = jax.random.split(jax.random.fold_in(key, 1), 4)
        bs = {f"BatchNorm_{i}": {"mean": 0.3 * jax.random.normal(ks[2 * i], (4,)),
                                 "var": 0.5 + jax.random.uniform(ks[2 * i + 1], (4,))}
              for i in range(2)}
        return {"params": v["params"], "batch_stats": bs}

    return net, make(jax.random.key(0))


# conv_input_stats(model, variables, x, patch_size, per_channel), compiled per setup.
_conv_stats = jax.jit(conv_input_stats, static_argnums=(0, 3, 4))
_conv_loss = jax.jit(conv_matching_loss, static_argnums=(3,))


def _np_moments(a, axis):
    return a.mean(axis), a.var(axis)


def _np_up2(x):
    """Bilinear 2x upsampling of (N, H, W, C) along H and W (half-pixel centres, edges
    clamped: torch F.interpolate(scale 2, bilinear, align_corners=False))."""
    for ax in (1, 2):
        prev = np.concatenate([np.take(x, [0], ax), np.take(x, range(x.shape[ax] - 1), ax)], ax)
        nxt = np.concatenate([np.take(x, range(1, x.shape[ax]), ax), np.take(x, [-1], ax)], ax)
        even, odd = 0.75 * x + 0.25 * prev, 0.75 * x + 0.25 * nxt
        x = np.stack([even, odd], ax + 1).reshape(
            x.shape[:ax] + (2 * x.shape[ax],) + x.shape[ax + 1:])
    return x


def _np_patch(x, p, per_channel):
    """Cells of side p, row-major; pooled or per channel. A map shorter than p is
    upsampled to one cell first (the reference's F.interpolate; here only 2x)."""
    if x.shape[1] < p:
        assert 2 * x.shape[1] == p and 2 * x.shape[2] == p
        x = _np_up2(x)
    _, h, w, c = x.shape
    ph, pw = p, p
    ms, vs = [], []
    for i in range(h // ph):
        for j in range(w // pw):
            cell = x[:, i * ph:(i + 1) * ph, j * pw:(j + 1) * pw, :]
            cell = cell.reshape(-1, c) if per_channel else cell.reshape(-1)
            ms.append(cell.mean(0))
            vs.append(cell.var(0))
    return np.stack(ms), np.stack(vs)


def test_conv_and_patch_stats_equal_hand_computation():
    x = np.asarray(jax.random.normal(jax.random.key(0), (3, 8, 8, 2))) * 1.5 + 0.2
    patch = jax.jit(patch_stats, static_argnums=(1, 2))
    for p, per in ((4, False), (4, True), (16, False), (8, True)):  # 16 > 8 px: one 16-px cell
        m, v = patch(jnp.asarray(x), p, per)
        hm, hv = _np_patch(x, p, per)
        np.testing.assert_allclose(m, hm, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(v, hv, rtol=1e-5, atol=1e-6)
    assert patch(jnp.asarray(x), 4, True)[0].shape == (4, 2)
    # 6 px with 4-px cells: resized to 8 first (2 x 2 cells); a constant map stays constant.
    m, v = patch(jnp.full((2, 6, 6, 1), 3.0), 4, False)
    np.testing.assert_allclose(m, np.full(4, 3.0), rtol=1e-6)
    np.testing.assert_allclose(v, np.zeros(4), atol=1e-6)

    # Conv inputs of a model: conv 0 sees x; Conv3x3 sees relu(BN0(conv0(x))) (inference).
    net, v = _linen()
    logits, st = _conv_stats(net, v, x, 4, False)
    np.testing.assert_allclose(st[0].mean_C, x.reshape(-1, 2).mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st[0].var_C, x.reshape(-1, 2).var(0), rtol=1e-5, atol=1e-6)
    p0 = v["params"]["Conv_0"]
    h = np.asarray(jax.lax.conv_general_dilated(
        jnp.asarray(x), p0["kernel"], (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    h = h + np.asarray(p0["bias"])
    bs, bp = v["batch_stats"]["BatchNorm_0"], v["params"]["BatchNorm_0"]
    h = (h - np.asarray(bs["mean"])) / np.sqrt(np.asarray(bs["var"]) + 1e-5)
    h = h * np.asarray(bp["scale"]) + np.asarray(bp["bias"])
    h = np.maximum(h, 0)
    np.testing.assert_allclose(st[1].mean_C, h.reshape(-1, 4).mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st[1].var_C, h.reshape(-1, 4).var(0), rtol=1e-4, atol=1e-5)
    hm, hv = _np_patch(h, 4, False)
    np.testing.assert_allclose(st[1].patch_mean_P, hm, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st[1].patch_var_P, hv, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(logits, net.apply(v, jnp.asarray(x)), rtol=1e-5, atol=1e-6)
    assert conv_layer_paths(net, v, jnp.asarray(x)) == ["Conv_0", "Conv3x3_0"]
    # A channel-major ConvNet (activations (C, N, H, W) inside) gives the NHWC statistics.
    from jaxdd.models import get_model
    from jaxdd.models.layers import CONV_IMPLS
    if "im2col_cm" in CONV_IMPLS:
        a, b = (get_model("convnet_d2_w4_none", 3, (8, 8, 2), conv_impl=i) for i in ("im2col", "im2col_cm"))
        va = jax.jit(a.init)(jax.random.key(1))
        sa, sb = (_conv_stats(m, va, jnp.asarray(x), 4, True)[1] for m in (a, b))
        for u, w in zip(jax.tree.leaves(sa), jax.tree.leaves(sb)):
            np.testing.assert_allclose(u, w, rtol=1e-4, atol=1e-5)


def test_conv_terms_dropped_per_key():
    # The mask is a pure function of the key, with P(drop) = p.
    k = jax.random.key(3)
    np.testing.assert_array_equal(conv_drop_mask(k, 50, 0.4), conv_drop_mask(k, 50, 0.4))
    frac = 1 - float(conv_drop_mask(jax.random.key(4), 4000, 0.4).mean())
    assert 0.37 < frac < 0.43
    assert bool(conv_drop_mask(k, 5, 0.0).all())
    # A dropped term contributes nothing, value or gradient.
    st = [ConvStat(jnp.full(2, a), jnp.full(2, a + 1), jnp.full(3, a), jnp.full(3, a))
          for a in (1.0, 2.0, 3.0)]
    tg = [ConvStat(jnp.zeros(2), jnp.ones(2), jnp.zeros(3), jnp.zeros(3))] * 3
    terms = [float(conv_matching_loss([s], [t])) for s, t in zip(st, tg)]
    keep = jnp.array([True, False, True])
    np.testing.assert_allclose(conv_matching_loss(st, tg, keep, 10.0),
                               10 * terms[0] + terms[2], rtol=1e-6)
    g = jax.grad(lambda s: conv_matching_loss(s, tg, keep))(st)
    assert all(float(jnp.abs(a).max()) == 0 for a in g[1]) and float(jnp.abs(g[0].mean_C).max()) > 0
    # The EMA of a dropped layer stays where it was.
    ema = [ConvStat(*(jnp.zeros_like(a) for a in s)) for s in st]
    _, new = conv_ema_stats(st, ema, 0.8, keep)
    np.testing.assert_array_equal(new[1].mean_C, ema[1].mean_C)
    np.testing.assert_allclose(new[0].mean_C, 0.2 * st[0].mean_C, rtol=1e-6)

    # Through the distiller: the step's conv term is eq. (2) with the mask of the step key.
    net, v = _linen()
    x = jax.random.normal(jax.random.key(5), (4, 8, 8, 2))
    _, real = _conv_stats(net, v, x, 4, False)
    targets = [ConvStat(*(a + 0.5 for a in s)) for s in real]
    cfg = RecoverConfig(iterations=2, conv_stats=True, conv_drop=0.5, patch_size=4, jitter=(0, 0),
                          init="real")
    d = make_recover(cfg, net, v, None, targets)
    state = d.init(jax.random.key(0), x, jnp.arange(4) % 3)
    step = jax.jit(d.step)
    seen = set()
    for i in range(6):  # no augmentation: the step sees x itself
        key = jax.random.key(100 + i)
        _, m = step(state, None, key)
        keep = conv_drop_mask(jax.random.fold_in(key, 0x47564253), 2, 0.5)
        want = _conv_loss(real, targets, keep, 10.0)  # the stem conv carries w_0
        np.testing.assert_allclose(m["conv"], want, rtol=1e-5)
        seen.add(tuple(np.asarray(keep).tolist()))
    assert len(seen) > 1  # different keys drop different layers
    with pytest.raises(ValueError, match="conv_targets"):
        make_recover(cfg, net, v)

    # Two vmapped teachers (the G-VBSM preset): per-teacher targets, drop masks, EMAs.
    v2 = jax.tree.map(lambda a: a * 1.05, v)
    stacked = stack_teachers([v, v2])
    tg2 = stack_teachers([targets, targets])
    cfg2 = RecoverConfig(iterations=2, conv_stats=True, patch_size=4, stacked_teachers=True,
                           stat_ema=0.8, diversity=1.0, ipc_per_batch=2, pad_crop=1)
    d2 = make_recover(cfg2, net, stacked, None, tg2)
    st2 = jax.jit(d2.init)(jax.random.key(0), x, jnp.array([0, 0, 1, 1]))
    assert st2.conv_ema[1].patch_mean_P.shape == (2, 4) and st2.ema[0][0].shape == (2, 4)
    st2, m2 = jax.jit(d2.step)(st2, None, jax.random.key(9))
    assert bool(tree_all_finite((m2["loss"], st2))) and float(m2["conv"]) > 0 and float(m2["div"]) >= 0


def test_conv_targets_cache_round_trip_and_mismatch(tmp_path):
    net, v = _linen()
    x = np.asarray(jax.random.uniform(jax.random.key(6), (10, 8, 8, 2)), np.float32)
    # Batches of 5: sum_b (n_b / N) stat(batch_b), order (and crops) from the key.
    t_np = compute_conv_targets(net, v, x, jax.random.key(2), batch_size=5, patch_size=4,
                                  pad=0, flip=False)
    order = np.asarray(jax.random.permutation(jax.random.split(jax.random.key(2))[0], 10))
    parts = [_conv_stats(net, v, jnp.asarray(x[order[s:s + 5]]), 4, False)[1] for s in (0, 5)]
    want = jax.tree.map(lambda a, b: 0.5 * a + 0.5 * b, *parts)
    for a, b in zip(jax.tree.leaves(t_np), jax.tree.leaves(want)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    t1 = compute_conv_targets(net, v, x, jax.random.key(1), batch_size=5, patch_size=4)
    t2 = compute_conv_targets(net, v, x, jax.random.key(1), batch_size=5, patch_size=4)
    for a, b in zip(jax.tree.leaves(t1), jax.tree.leaves(t2)):
        np.testing.assert_array_equal(a, b)
    t3 = compute_conv_targets(net, v, x, jax.random.key(3), batch_size=5, patch_size=4)
    assert float(jnp.abs(t3[1].mean_C - t1[1].mean_C).max()) > 0  # other key, other crops

    key = CT.make_key(teacher_sha256=CT.variables_fingerprint(v), model="LinenNet", dataset="toy",
                      dataset_fingerprint="abc", preprocess_sha256="def", patch_size=4,
                      per_channel=False, batch_size=4, pad=4, flip=True, seed=1)
    path = str(tmp_path / CT.key_hash(key))
    calls = []

    def compute():
        calls.append(1)
        return t1, ["Conv_0", "Conv3x3_0"]

    _, fresh = CT.load_or_compute(path, key, compute)
    assert fresh and calls == [1]
    got2, fresh2 = CT.load_or_compute(path, key, compute)  # cached: not recomputed
    assert not fresh2 and calls == [1]
    for a, b in zip(jax.tree.leaves(got2), jax.tree.leaves(t1)):
        np.testing.assert_array_equal(a, b)
    with open(os.path.join(path, CT.JSON)) as f:
        assert json.load(f)["layer_paths"] == ["Conv_0", "Conv3x3_0"]
    # Another teacher / augmentation: a clear error naming the field, never silent use.
    other = CT.variables_fingerprint(jax.tree.map(lambda a: a + 1, v))
    with pytest.raises(CT.ConvTargetsError, match="teacher_sha256"):
        CT.load(path, {**key, "teacher_sha256": other})
    with pytest.raises(CT.ConvTargetsError, match="augmentation.pad_crop"):
        CT.load(path, {**key, "augmentation": {**key["augmentation"], "pad_crop": 0}})
    js = os.path.join(path, CT.JSON)
    with open(js) as f:
        meta = json.load(f)
    with open(js, "w") as f:
        json.dump({**meta, "format_version": 99}, f)
    with pytest.raises(CT.ConvTargetsError, match="format version"):
        CT.load(path, key)
    with open(js, "w") as f:
        json.dump(meta, f)
    # A corrupt npz (truncated) is refused; recompute=True rebuilds it.
    with open(os.path.join(path, CT.NPZ), "r+b") as f:
        f.truncate(100)
    with pytest.raises(CT.ConvTargetsError, match="corrupt"):
        CT.load_or_compute(path, key, compute)
    got3, fresh3 = CT.load_or_compute(path, key, compute, recompute=True)
    assert fresh3 and calls == [1, 1]
    np.testing.assert_array_equal(got3[1].patch_var_P, t1[1].patch_var_P)


def _np_diversity(x, g, tau=4.0, side=32):
    n, h, w, _ = x.shape
    f = np.repeat(np.repeat(x, side // h, 1), side // w, 2).reshape(n // g, g, -1).astype(np.float64)
    total = 0.0
    for fc in f:
        lam = np.linalg.eigvalsh(fc @ fc.T)
        lp = lam - lam.max() - np.log(np.exp(lam - lam.max()).sum())
        lq = lam / tau - (lam / tau).max() - np.log(np.exp(lam / tau - (lam / tau).max()).sum())
        total += np.sum(np.exp(lq) * (lq - lp))
    return total


def test_diversity_value_and_finite_gradients():
    # Adaptive average pooling has torch's bins (64 -> 32: 2x2 means; 28 -> 32: overlaps).
    z = jax.random.normal(jax.random.key(0), (1, 64, 64, 1))
    np.testing.assert_allclose(adaptive_avg_pool(z, (32, 32)),
                               np.asarray(z).reshape(1, 32, 2, 32, 2, 1).mean((2, 4)), rtol=1e-5, atol=1e-6)
    assert _pool_matrix(28, 32)[1].nonzero()[0].tolist() == [0, 1]  # bin 1 = [floor(28/32), ceil(56/32))
    # Value: KL(sg(softmax(lam / 4)) || softmax(lam)) summed over classes (groups of 3).
    x = 0.03 * np.asarray(jax.random.normal(jax.random.key(1), (6, 8, 8, 1)), np.float32)
    div = jax.jit(lambda x: diversity_loss(x, 3))
    got = float(div(jnp.asarray(x)))
    assert got > 1e-3
    np.testing.assert_allclose(got, _np_diversity(x, 3), rtol=1e-4)
    assert float(diversity_loss(jnp.asarray(x), 1)) == 0.0  # one image per class: 0
    with pytest.raises(ValueError, match="class groups"):
        diversity_loss(jnp.asarray(x), 4)
    # Finite gradients: noise, identical images (rank-1 Gram, repeated zero eigenvalues),
    # zeros (all eigenvalues equal), large-scale noise (peaked softmax).
    grad = jax.jit(jax.grad(lambda x: diversity_loss(x, 3)))
    same = np.repeat(x[:1], 6, 0)
    for case in (x, same, np.zeros_like(x), 30 * x):
        g = np.asarray(grad(jnp.asarray(case)))
        assert np.isfinite(g).all()
    assert float(np.abs(np.asarray(grad(jnp.asarray(x)))).max()) > 0
    # Gradient of the eigenvalues: d lam_k = v_k^T dA v_k (finite differences agree).
    a = jnp.asarray(np.asarray(jax.random.normal(jax.random.key(2), (4, 4))))
    a = a @ a.T
    f = lambda a: jnp.sum(jnp.sin(eigvalsh_stable(a)))
    da = jnp.asarray(np.asarray(jax.random.normal(jax.random.key(3), (4, 4))))
    da = da + da.T
    fd = (f(a + 1e-3 * da) - f(a - 1e-3 * da)) / 2e-3
    np.testing.assert_allclose(jnp.sum(jax.grad(f)(a) * da), fd, rtol=2e-2)


def _nnx_copy(v):
    """NNXNet holding LinenNet's variables `v`."""
    m = NNXNet(nnx.Rngs(0))
    p, b = v["params"], v["batch_stats"]
    for conv, name in ((m.conv0, "Conv_0"), (m.conv1, "Conv3x3_0")):
        conv.kernel[...] = p[name]["kernel"]
        conv.bias[...] = p[name]["bias"]
    for bn, i in ((m.bn0, 0), (m.bn1, 1)):
        bn.scale[...] = p[f"BatchNorm_{i}"]["scale"]
        bn.bias[...] = p[f"BatchNorm_{i}"]["bias"]
        bn.mean[...] = b[f"BatchNorm_{i}"]["mean"]
        bn.var[...] = b[f"BatchNorm_{i}"]["var"]
    m.head.kernel[...] = p["Dense_0"]["kernel"]
    m.head.bias[...] = p["Dense_0"]["bias"]
    return m


def test_nnx_equals_linen():
    originals = nnx.BatchNorm.__call__, nnx.Conv.__call__
    net, v = _linen()
    m = _nnx_copy(v)
    x = jax.random.normal(jax.random.key(7), (4, 8, 8, 2))
    y = jnp.array([0, 1, 2, 0])
    lg_l, st_l = bn_input_stats(net, v, x)
    lg_n, st_n = bn_input_stats(m, None, x)
    np.testing.assert_allclose(lg_n, lg_l, rtol=1e-5, atol=1e-6)  # inference mode, no dropout
    for a, b in zip(jax.tree.leaves(st_n), jax.tree.leaves(st_l)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    assert bn_layer_paths(m, None, x) == ["bn0", "bn1"]
    assert conv_layer_paths(m, None, x) == ["conv0", "conv1"]
    # The full loss (BN + conv terms, EMA) and its gradient, under jit, with the model's
    # state passed functionally (as make_recover and vmap do).
    _, real = _conv_stats(net, v, x, 4, False)
    tg = [ConvStat(*(a + 0.3 for a in s)) for s in real]
    ema = [(s.mean_C * 0.9, s.var_C * 1.1) for s in st_l]
    kw = dict(r_bn=0.05, conv_targets=tg, conv_keep_L=jnp.array([True, True]), patch_size=4,
              ema=ema, conv_ema=real)
    loss_l = jax.jit(jax.value_and_grad(lambda x: sre2l_loss(x, y, net, v, **kw)[0]))
    state = nnx.state(m)
    loss_n = jax.jit(jax.value_and_grad(lambda x, s: sre2l_loss(x, y, m, s, **kw)[0]))
    (vl, gl), (vn, gn) = loss_l(x), loss_n(x, state)
    assert float(vl) > 0.1
    np.testing.assert_allclose(vn, vl, rtol=1e-5)
    np.testing.assert_allclose(gn, gl, rtol=1e-4, atol=1e-6)
    # Running the capture left the model untouched (BN statistics, call method).
    np.testing.assert_array_equal(m.bn0.mean[...], v["batch_stats"]["BatchNorm_0"]["mean"])
    assert (nnx.BatchNorm.__call__, nnx.Conv.__call__) == originals


def _run(capsys, argv):
    code = main(argv + ["--quiet", "--json"])
    o, e = capsys.readouterr()
    assert code == 0, e
    return json.loads(o.strip().splitlines()[-1])


def test_gvbsm_cpu_pipeline(tiny_npz, tmp_path, capsys):
    """configs/sre2l/fashion_mnist_cpu.py with method gvbsm and every G-VBSM option, shrunk."""
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "sre2l", "fashion_mnist_cpu.py")
    tdir, out = str(tmp_path / "teacher"), str(tmp_path / "run")
    sets = [f"dataset=npz:{tiny_npz}", "teacher.model=convnet_d2_w4_bn", f"teacher.dir={tdir}",
            "teacher.epochs=1", "teacher.batch_size=128", "teacher.dsa=''", "method=gvbsm",
            "recover.iterations=3", "recover.batch_size=3", "recover.ipc_per_batch=2",
            "recover.conv_stats=True", "recover.patch_size=4", "recover.conv_target_batch=128",
            "recover.stat_ema=0.8", "recover.diversity=1.0", "recover.pad_crop=1"]
    argv = ["recover", "--config", config, "--ipc", "2", "--out", out] + sum((["--set", s] for s in sets), [])
    r = _run(capsys, argv)
    assert r["method"] == "gvbsm" and r["batches"] == 1  # 3 classes x 2 images in one batch
    entries = os.listdir(os.path.join(tdir, "conv_targets"))
    assert len(entries) == 1
    js = os.path.join(tdir, "conv_targets", entries[0], CT.JSON)
    with open(js) as f:
        assert json.load(f)["layer_paths"] == ["Conv3x3_0", "Conv3x3_1"]
    mtime = os.path.getmtime(js)
    # A second run (fresh OUT) reuses the cached targets and gives the same images.
    art = artefact.load(r["artefact"])
    assert art.meta["conv_targets"] == [os.path.dirname(os.path.abspath(js))]
    x1 = art.x_syn_NHWC
    argv2 = argv[:argv.index("--out") + 1] + [str(tmp_path / "run2")] + argv[argv.index("--out") + 2:]
    r2 = _run(capsys, argv2)
    assert os.path.getmtime(js) == mtime
    x2 = artefact.load(r2["artefact"]).x_syn_NHWC
    np.testing.assert_array_equal(x1, x2)
    assert x1.shape == (6, 8, 8, 1) and np.isfinite(x1).all()


def test_gvbsm_cifar100_preset_resolves():
    from jaxdd.configs import load_config
    from jaxdd.pipelines import sre2l as P
    from jaxdd.pipelines.teacher import teacher_config, teacher_dirs, teacher_models
    path = os.path.join(os.path.dirname(__file__), "..", "configs", "sre2l", "gvbsm_cifar100.py")
    for ipc, classes in ((10, 10), (50, 2)):
        cfg = load_config(path, ipc)
        r = P.recover_config(cfg)
        assert r.conv_stats and r.diversity == 1.0 and r.stat_ema == 0.8 and r.conv_drop == 0.4
        assert r.batch_size * r.ipc_per_batch == 100 and r.batch_size == classes
        assert len(batch_layout(r, 100, ipc)) == 100 * ipc // 100
        # the reference's five architectures, one network each, in rotation
        assert teacher_models(cfg) == ["resnet18", "convnet_d3_w128", "mobilenetv2_half",
                                       "wrn_16_2", "shufflenetv2_0_5"]
        assert len(set(teacher_dirs(cfg))) == 5 and r.teacher_schedule == "rotate"
        t = teacher_config(cfg)
        assert (t.num_teachers, t.pad_crop, t.dsa, t.epochs, t.lr) == (1, 4, "", 50, 0.05)
        o = P.relabel_options({"config": cfg}, {})
        assert (o["loss"], o["ce_weight"], o["optimizer"], o["epochs"]) == ("mse_ce", 0.15, "sgd", 1000)
        assert o["ensemble"] and o["ensemble_reduce"] == "mean"  # plain mean on CIFAR-100
