import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.data import fit_preprocess, load_dataset
from jaxdd.evaluate import eval_data, evaluate_set, get_protocol, herding, kcenter, select, train_seeds
from jaxdd.models import get_model
from jaxdd.train import TrainConfig, accuracy, train_epochs, train_init, train_network


def _toy(n=24, k=3):
    x = jax.random.normal(jax.random.key(0), (n, 8, 8, 1))
    return x, jnp.arange(n) % k


def test_vmapped_seeds_equal_sequential_runs():
    m = get_model("convnet_d2_w4", 3, (8, 8, 1))
    cfg = TrainConfig(epochs=3, batch_size=10, dsa="crop_flip")
    x, y = _toy()
    keys = jax.random.split(jax.random.key(1), 3)
    stacked = train_seeds(keys, m, cfg, x, jax.nn.one_hot(y, 3))
    from jaxdd.evaluate.core import augment_fn
    for i, k in enumerate(keys):
        single = jax.jit(lambda k: train_network(k, m, cfg, x, y, augment_fn=augment_fn(cfg)))(k)
        for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(stacked)):
            np.testing.assert_allclose(a, b[i], rtol=2e-5, atol=2e-6)


def test_seed_modes_agree_and_a_rounds_seed_ignores_its_company():
    """"rounds" (one seed's program per round) and "vmap" train the same networks within
    batched kernels' rounding; under "rounds" a seed's network is bit-identical whether it is
    trained alone or among others, and "auto" is "rounds" on this CPU."""
    m = get_model("convnet_d2_w4", 3, (8, 8, 1))
    cfg = TrainConfig(epochs=2, batch_size=10, dsa="crop_flip")
    x, y = _toy()
    t = jax.nn.one_hot(y, 3)
    keys = jax.random.split(jax.random.key(4), 3)
    rounds = train_seeds(keys, m, cfg, x, t, seed_mode="rounds")
    vmapped = train_seeds(keys, m, cfg, x, t, seed_mode="vmap")
    alone = train_seeds(keys[1:2], m, cfg, x, t, seed_mode="rounds")
    auto = train_seeds(keys, m, cfg, x, t)
    for r, v, a, u in zip(*map(jax.tree.leaves, (rounds, vmapped, alone, auto)), strict=True):
        assert r.shape[0] == 3 and a.shape[0] == 1
        np.testing.assert_allclose(r, v, rtol=2e-5, atol=2e-6)
        np.testing.assert_array_equal(r[1], a[0])
        np.testing.assert_array_equal(r, u)
    assert float(jnp.abs(rounds["params"]["TorchDense_0"]["Dense_0"]["kernel"][0]
                         - rounds["params"]["TorchDense_0"]["Dense_0"]["kernel"][1]).max()) > 1e-3  # seeds differ
    with pytest.raises(ValueError, match="unknown seed mode 'loop'"):
        train_seeds(keys, m, cfg, x, t, seed_mode="loop")


def test_seed_accuracies_in_small_chunks_equal_each_seed_alone(monkeypatch):
    """`accuracies` splits ~EVAL_IMAGES_PER_CHUNK images over the vmapped seeds (memory of the
    5-seed width-128 evaluation); the counts equal each network's own full pass."""
    from jaxdd.evaluate import core
    m = get_model("convnet_d2_w4", 3, (8, 8, 1))
    x, _ = _toy(n=50)
    keys = jax.random.split(jax.random.key(2), 3)
    stacked = jax.vmap(m.init)(keys)
    y = jnp.stack([m.apply(jax.tree.map(lambda a: a[1], stacked), x).argmax(-1)])[0]  # seed 1: 100 %
    monkeypatch.setattr(core, "EVAL_IMAGES_PER_CHUNK", 21)     # 7 images per chunk, 8 chunks
    got = core.accuracies(m, stacked, x, y)
    want = [float(accuracy(m, jax.tree.map(lambda a: a[i], stacked), x, y, batch_size=50))
            for i in range(3)]
    np.testing.assert_array_equal(got, want)
    assert got[1] == 1.0 and got.shape == (3,)


def test_map_when_vmapped_on_cpu_is_the_vmap():
    """Under vmap on one CPU device the wrapped function runs as a lax.map over the batched
    leaves (unbatched arguments closed over); values equal a plain vmap, for any in_axes."""
    from jaxdd.tree import map_when_vmapped_on_cpu
    fn = lambda p, x, y: (jnp.tanh(x @ p["w"] + p["b"][None]) * y).sum(-1)  # noqa: E731
    wrapped = map_when_vmapped_on_cpu(fn)
    k = jax.random.split(jax.random.key(0), 4)
    p = {"w": jax.random.normal(k[0], (3, 5, 2)), "b": jax.random.normal(k[1], (3, 2))}
    x, y = jax.random.normal(k[2], (7, 5)), jax.random.normal(k[3], (3, 7, 2))
    for axes in [({"w": 0, "b": 0}, None, 0), ({"w": 0, "b": None}, None, None)]:
        pp = p if axes[0]["b"] == 0 else {"w": p["w"], "b": p["b"][0]}
        yy = y if axes[2] == 0 else y[0]
        want = jax.vmap(fn, in_axes=axes)(pp, x, yy)
        got = jax.jit(jax.vmap(wrapped, in_axes=axes))(pp, x, yy)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        jaxpr = str(jax.make_jaxpr(jax.vmap(wrapped, in_axes=axes))(pp, x, yy))
        assert ("while" in jaxpr or "scan" in jaxpr) == (jax.device_count() == 1)


def test_chunked_training_equals_one_shot_and_learns():
    m = get_model("mlp_w16", 3, (8, 8, 1))
    cfg = TrainConfig(epochs=30, batch_size=7, lr=0.1, dsa="")
    x, y = _toy()
    one = train_network(jax.random.key(2), m, cfg, x, y)
    s = train_init(jax.random.key(2), m, cfg, len(x))
    s = train_epochs(s, m, cfg, x, y, 10)
    s = train_epochs(s, m, cfg, x, y, 20)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(s.variables)):
        np.testing.assert_array_equal(a, b)
    assert float(accuracy(m, one, x, y, batch_size=5)) > 0.9   # memorises 24 points


def test_image_chunks_train_the_same_network():
    """TrainConfig.image_chunks (the CPU speed setting) splits each batch's forward, not the
    math: 3 chunks of a batch of 10 (4+4+2) train the same network; BatchNorm refuses."""
    m = get_model("convnet_d2_w4", 3, (8, 8, 1))
    x, y = _toy()
    cfg = TrainConfig(epochs=3, batch_size=10, dsa="crop_flip", image_chunks=1)
    from jaxdd.evaluate.core import augment_fn
    run = lambda c: jax.jit(lambda k: train_network(k, m, c, x, y, augment_fn=augment_fn(c)))(jax.random.key(1))  # noqa: E731
    cfg3 = TrainConfig(epochs=3, batch_size=10, dsa="crop_flip", image_chunks=3)
    for a, b in zip(jax.tree.leaves(run(cfg3)), jax.tree.leaves(run(cfg))):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)
    dots = [str(jax.make_jaxpr(lambda k, c=c: train_network(k, m, c, x, y))(jax.random.key(1))).count("dot_general")
            for c in (cfg, cfg3)]
    assert dots[1] > dots[0]   # really a chunked program
    bn = get_model("convnet_d2_w4_bn", 3, (8, 8, 1))
    with pytest.raises(ValueError, match="BatchNorm"):
        train_network(jax.random.key(1), bn, TrainConfig(epochs=1, batch_size=10, image_chunks=2), x, y)
    with pytest.raises(ValueError, match="image_chunks"):
        TrainConfig(epochs=1, image_chunks=0)


def test_learned_lr_is_used():
    m = get_model("mlp_w16", 3, (8, 8, 1))
    cfg = TrainConfig(epochs=2, batch_size=8, dsa="")
    x, y = _toy()
    a = train_network(jax.random.key(0), m, cfg, x, y, lr=0.0)
    init = m.init(jax.random.split(jax.random.key(0))[0])
    # lr 0 but weight decay is also scaled by lr: nothing moves.
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(init)):
        np.testing.assert_array_equal(u, v)


def test_evaluate_set_and_baselines_on_npz(tiny_npz):
    ds = load_dataset(f"npz:{tiny_npz}", val_per_class=5)
    pre = fit_preprocess("normalize", ds.x_train)
    proto = get_protocol("smoke", epochs=30)
    idx = select("random", jax.random.key(0), ds, pre, 5)
    assert len(idx) == 15 and (np.bincount(ds.y_train[idx]) == 5).all()
    from jaxdd.data import apply
    res = evaluate_set(jax.random.key(0), apply(pre, ds.x_train[idx]), ds.y_train[idx],
                       eval_data(ds, pre), proto, seeds=2)
    assert res["seeds"] == 2 and len(res["accuracies"]) == 2
    assert res["accuracy_mean"] > 0.6, res     # the toy task is easy: chance is 1/3
    for method in ("herding", "kcenter"):
        idx2 = select(method, jax.random.key(0), ds, pre, 3)
        assert (np.bincount(ds.y_train[idx2]) == 3).all()
    with pytest.raises(ValueError, match="IPC 1000 is larger than class"):
        select("random", jax.random.key(0), ds, pre, 1000)
    # soft labels (logits) train too
    logits = np.eye(3, dtype=np.float32)[ds.y_train[idx]] * 5
    res2 = evaluate_set(jax.random.key(0), apply(pre, ds.x_train[idx]), logits, eval_data(ds, pre), proto, seeds=1)
    assert res2["accuracy_mean"] > 0.6


def test_herding_and_kcenter_greedy_rules():
    f = np.array([[0.0], [1.0], [2.0], [10.0]])
    # mean 3.25: best single point is 2.0; then the pair whose mean is nearest 3.25 adds 1 or 10
    assert herding(f, 1).tolist() == [2]
    assert list(herding(f, 2)) == [2, 3] or list(herding(f, 2)) == [2, 1]
    d = np.linalg.norm
    sel = herding(f, 2)
    best = min(((i, j) for i in range(4) for j in range(4) if i != j and i == 2),
               key=lambda p: d(f[list(p)].mean(0) - f.mean(0)))
    assert sorted(sel) == sorted(best)
    # k-center: start nearest the mean (2.0), then farthest (10.0), then farthest from both (0.0)
    assert kcenter(f, 3).tolist() == [2, 3, 0]


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol 'fast'"):
        get_protocol("fast")
