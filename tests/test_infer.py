"""INFER: instances = base image + compensator for every class, the loss equals a direct
BN-statistics + CE computation, the budget rule, static labels, and the CLI path
(teachers -> compensators -> artefact with separate parts -> relabel), deterministic and
resumable."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdd import artefact
from jaxdd.cli import main
from jaxdd.labels import relabel as R
from jaxdd.methods import infer as I

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "sre2l",
                      "infer_fashion_mnist_cpu.py")


class TinyBN(nn.Module):
    """1x1 conv -> BN -> dense: the BN input is x @ W + b, easy to compute by hand."""

    @nn.compact
    def __call__(self, x_NHWC, train: bool = False):
        h = nn.Conv(3, (1, 1))(x_NHWC)
        h = nn.BatchNorm(use_running_average=not train)(h)
        return nn.Dense(4)(nn.relu(h).mean((1, 2)))


def _tiny():
    net = TinyBN()
    x = jnp.zeros((4, 4, 4, 2))
    v = net.init(jax.random.key(1), x)
    stats = {"BatchNorm_0": {"mean": jnp.array([0.1, -0.2, 0.3]),
                             "var": jnp.array([0.5, 1.5, 2.0])}}
    return net, {**v, "batch_stats": stats}


def test_num_base_sets_is_the_budget_rule():
    # floor(IPC / (M / K + 1)): the reference's CIFAR-100 and ImageNet-1K settings
    assert I.num_base_sets(10, 100, 4) == 9 and I.num_base_sets(50, 100, 4) == 48
    assert I.num_base_sets(10, 1000, 3) == 9 and I.num_base_sets(10, 10, 4) == 7
    for ipc, k, m in [(10, 100, 4), (50, 100, 4), (10, 10, 2), (1, 3, 2), (3, 7, 5)]:
        try:
            b = I.num_base_sets(ipc, k, m)
        except ValueError:
            assert ipc * k < k + m
            continue
        assert b * (k + m) <= ipc * k < (b + 1) * (k + m)
    with pytest.raises(ValueError, match="room for no base set"):
        I.num_base_sets(1, 3, 4)


def test_instances_are_base_plus_compensator_for_every_class():
    k, b, m, shape = 3, 2, 2, (4, 4, 1)
    base = np.asarray(jax.random.normal(jax.random.key(0), (k, b, *shape)))
    comp = np.asarray(jax.random.normal(jax.random.key(1), (b, m, *shape)))
    x, y = I.instances(base, comp)
    assert x.shape == (k * b * (m + 1), *shape)
    np.testing.assert_array_equal(y, np.repeat(np.arange(k), b * (m + 1)))
    for c in range(k):
        for j in range(b):
            row = (c * b + j) * (m + 1)
            np.testing.assert_array_equal(x[row], base[c, j])          # the base itself
            for i in range(m):  # one compensator -> one instance in every class
                np.testing.assert_array_equal(x[row + 1 + i], base[c, j] + comp[j, i])
    lo, hi = np.array([-0.5]), np.array([0.5])
    xc, _ = I.instances(base, comp, (lo, hi))
    np.testing.assert_array_equal(xc[1], np.clip(base[0, 0] + comp[0, 0], -0.5, 0.5))
    np.testing.assert_array_equal(xc[0], base[0, 0])  # base images are never clamped

    # The Distiller: after some steps each class's instance is base + the ONE compensator.
    net, v = _tiny()
    cfg = I.INFERConfig(iterations=4, jitter=(0, 1), r_bn=0.1, lr=0.1)
    d = I.make_infer(cfg, net, None)
    base4 = jax.random.normal(jax.random.key(2), (4, 4, 4, 2))
    s = d.init(jax.random.key(0), base4, jnp.arange(4))
    for t in range(3):
        s, _ = jax.jit(d.step)(s, I.INFERBatch(v), jax.random.key(t))
    assert float(jnp.abs(s.comp_HxWxC).max()) > 0
    np.testing.assert_allclose(np.asarray(s.syn.x_syn_NHWC),
                               np.asarray(base4 + s.comp_HxWxC[None]), atol=0)


def test_loss_equals_direct_bn_matching_plus_ce():
    net, v = _tiny()
    base = jax.random.normal(jax.random.key(3), (4, 4, 4, 2))
    u = 0.3 * jax.random.normal(jax.random.key(4), (4, 4, 2))
    y = jnp.array([0, 1, 2, 3])
    cfg = I.INFERConfig(jitter=(0, 0), r_bn=0.05, first_bn_multiplier=10.0)  # A = identity
    loss, aux = I.infer_loss(u, base, y, net, v, jax.random.key(0), jnp.int32(0), cfg)

    x = np.asarray(base + u[None], np.float64)
    p = v["params"]["Conv_0"]
    h = x @ np.asarray(p["kernel"], np.float64)[0, 0] + np.asarray(p["bias"], np.float64)
    mean, var = h.mean((0, 1, 2)), h.var((0, 1, 2))      # biased variance, as the reference
    rs = v["batch_stats"]["BatchNorm_0"]
    bn = 10.0 * (np.linalg.norm(var - np.asarray(rs["var"])) +
                 np.linalg.norm(mean - np.asarray(rs["mean"])))
    logits = np.asarray(net.apply(v, base + u[None]), np.float64)
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    ce = -logp[np.arange(4), np.asarray(y)].mean()
    np.testing.assert_allclose(float(aux["bn"]), bn, rtol=1e-5)
    np.testing.assert_allclose(float(aux["ce"]), ce, rtol=1e-5)
    np.testing.assert_allclose(float(loss), ce + 0.05 * bn, rtol=1e-5)

    # One step is Adam(0.5, 0.9) on that loss's gradient w.r.t. the compensator, from 0.
    d = I.make_infer(cfg, net, None)
    s = d.init(jax.random.key(0), base, y)
    s1, m = d.step(s, I.INFERBatch(v), jax.random.key(0))
    g = jax.grad(lambda c: I.infer_loss(c, base, y, net, v, jax.random.key(0),
                                        jnp.int32(0), cfg)[0])(jnp.zeros((4, 4, 2)))
    tx = optax.adam(cfg.lr, b1=0.5, b2=0.9, eps=1e-8)
    upd, _ = tx.update(g, tx.init(g))
    np.testing.assert_allclose(np.asarray(s1.comp_HxWxC), np.asarray(upd), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(float(m["loss"]), float(I.infer_loss(
        jnp.zeros((4, 4, 2)), base, y, net, v, jax.random.key(0), jnp.int32(0), cfg)[0]),
        rtol=1e-6)


def test_static_labels_and_their_mixing():
    teacher = lambda x: x.reshape(x.shape[0], -1)[:, :3] * 2.0  # noqa: E731
    x = jax.random.normal(jax.random.key(0), (7, 2, 2, 1))
    cfg = R.RelabelConfig(label_dtype="float32", mixup_alpha=0.8, cutmix_alpha=0.0,
                          crop_min_scale=1.0)
    st = R.static_labels(teacher, x, 3, cfg)        # 3 images per teacher call, padded
    np.testing.assert_allclose(np.asarray(st), np.asarray(teacher(x)), rtol=1e-6)
    p = R.aug_params(jax.random.key(1), 0, 0, 7, 4, (2, 2), cfg)
    t = np.asarray(st)[np.asarray(p.idx_B)]
    lam = float(p.mix_lam)
    want = lam * t + (1 - lam) * t[np.asarray(p.mix_perm_B)]
    np.testing.assert_allclose(np.asarray(R.mix_static(st, p, (2, 2), cfg)), want, rtol=1e-6)
    with pytest.raises(ValueError, match="top_k = 0"):
        R.static_labels(teacher, x, 3, R.RelabelConfig(top_k=2))


def _run(capsys, argv):
    code = main(argv + ["--quiet", "--json"])
    o, e = capsys.readouterr()
    assert code == 0, e
    return json.loads(o.strip().splitlines()[-1])


def _sets(npz, tdir):
    """The cpu preset shrunk: tiny data, 2 tiny BN teachers, few iterations and epochs."""
    return [f"dataset=npz:{npz}", "teacher.model=convnet_d2_w4_bn", f"teacher.dir={tdir}",
            "teacher.epochs=1", "teacher.batch_size=64", "infer.iterations=4",
            "relabel.epochs=2", "relabel.seeds=1", "relabel.model=convnet_d2_w4",
            "relabel.batch_size=6"]


def test_cli_infer_artefact_relabel(tiny_npz, tmp_path, capsys):
    tdir = str(tmp_path / "teacher")
    sets = sum((["--set", s] for s in _sets(tiny_npz, tdir)), [])

    # IPC 1, K 3, M 2: no base set fits; one error line before any teacher is trained.
    code = main(["recover", "--config", CONFIG, "--ipc", "1", "--out", str(tmp_path / "bad"),
                 "--quiet"] + sets)
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "room for no base set" in err[0], err
    assert not os.path.exists(tdir) and not os.path.exists(tmp_path / "bad" / "artefact")

    out = str(tmp_path / "run")
    r = _run(capsys, ["recover", "--config", CONFIG, "--ipc", "4", "--out", out] + sets)
    # K 3, M 2, IPC 4: B = floor(12 / 5) = 2 base sets, 2 x 3 = 6 instances per class
    assert r["method"] == "infer" and r["base_sets"] == 2 and r["compensators_per_base"] == 2
    art = artefact.load(r["artefact"])
    base, comp = art.parts["base_KxBxHxWxC"], art.parts["compensators_BxMxHxWxC"]
    assert base.shape == (3, 2, 8, 8, 1) and comp.shape == (2, 2, 8, 8, 1)
    assert np.abs(comp).max() > 0
    from jaxdd.methods.statistics.recover import pixel_bounds
    x, y = I.instances(base, comp, pixel_bounds(art.preprocess))
    np.testing.assert_array_equal(art.x_syn_NHWC, x)
    np.testing.assert_array_equal(art.y_syn, y)
    budget = art.meta["budget"]
    assert budget["base_image_bytes"] == base.nbytes == art.meta["image_bytes"]
    assert budget["compensator_bytes"] == comp.nbytes == art.meta["compensator_bytes"]
    assert base.nbytes + comp.nbytes <= budget["ipc_budget_bytes"]
    assert art.meta["part_bytes"] == {"base_KxBxHxWxC": base.nbytes,
                                      "compensators_BxMxHxWxC": comp.nbytes}
    assert art.meta["config"]["relabel"]["recipe"] == "infer"
    # the base images are real training images, in the teachers' pixel space
    from jaxdd import data as jdata
    ds = jdata.load_dataset(f"npz:{tiny_npz}", seed=0)
    idx = np.asarray(art.meta["base_record_indices"])
    np.testing.assert_allclose(base, jdata.apply(art.preprocess, ds.x_train[idx.reshape(-1)])
                               .reshape(base.shape), rtol=1e-6)
    assert (ds.y_train[idx] == np.arange(3)[:, None]).all()

    # Stopped after one compensator, then resumed: the same set (determinism per seed).
    again = str(tmp_path / "again")
    part = _run(capsys, ["distill", "--config", CONFIG, "--ipc", "4", "--out", again,
                         "--stop-after", "1", "--no-eval"] + sets)
    assert part["stopped_early"] and not os.path.exists(os.path.join(again, "artefact"))
    assert len(os.listdir(os.path.join(again, "compensators"))) == 1
    _run(capsys, ["recover", "--config", CONFIG, "--ipc", "4", "--out", again] + sets)
    art2 = artefact.load(os.path.join(again, "artefact"))
    np.testing.assert_array_equal(art2.x_syn_NHWC, art.x_syn_NHWC)
    np.testing.assert_array_equal(art2.parts["compensators_BxMxHxWxC"], comp)

    # Relabel: static labels (the artefact's default), bytes of images / compensators /
    # labels reported apart; then the online (INFER+Dyn) mode.
    rl = _run(capsys, ["relabel", out])
    n = art.x_syn_NHWC.shape[0]
    assert rl["recipe"] == "infer" and rl["mode"] == "static" and rl["ensemble"]
    assert rl["num_teachers"] == 2 and rl["ensemble_reduce"] == "mean"
    assert rl["image_bytes"] == base.nbytes and rl["compensator_bytes"] == comp.nbytes
    assert rl["label_bytes"] == n * 3 * 2                 # N x K float16, once
    assert rl["augment"]["mixup_alpha"] == 0.8 and rl["temperature"] == 30.0
    st = np.load(rl["labels_file"])["values"]
    assert st.shape == (n, 3) and st.dtype == np.float16
    evs = json.load(open(os.path.join(r["artefact"], "evaluations.json")))
    assert [(e["mode"], e["accuracy_mean"]) for e in evs] == [("static", rl["accuracy_mean"])]


@pytest.mark.slow
def test_cli_infer_dyn_online_relabel(tiny_npz, tmp_path, capsys):
    """INFER+Dyn: the teachers' mean logits on every augmented batch (mode online)."""
    sets = sum((["--set", s] for s in _sets(tiny_npz, str(tmp_path / "teacher"))), [])
    out = str(tmp_path / "run")
    _run(capsys, ["recover", "--config", CONFIG, "--ipc", "2", "--out", out] + sets)
    on = _run(capsys, ["relabel", out, "--mode", "online", "--recipe", "infer_dyn",
                       "--epochs", "1"])
    assert on["mode"] == "online" and on["label_bytes"] == 0 and on["epochs"] == 1
    assert on["ensemble_reduce"] == "mean" and on["num_teachers"] == 2
    assert on["compensator_bytes"] > 0 and np.isfinite(on["accuracy_mean"])


@pytest.mark.slow
def test_mock_imagenet_streamed_reads_only_base_images(tmp_path, monkeypatch):
    """The ImageNet-1K preset on a mocked imagenet2012 (streamed, 16 px, a ready untrained
    teacher): only the B K base records are read, once each; 1000-class static relabel."""
    import tensorflow_datasets as tfds

    from jaxdd.configs import load_config
    from jaxdd.data import stream
    from jaxdd.data.preprocess import fit_preprocess
    from jaxdd.models import get_model
    from jaxdd.pipelines import common, infer as pinfer, sre2l
    from jaxdd.pipelines.spec import RunOptions
    from jaxdd.population import teachers

    model = get_model("convnet_d2_w4_bn", 1000, (16, 16, 3))
    pre = fit_preprocess("normalize", np.zeros((1, 16, 16, 3), np.uint8),
                         dataset_name="imagenet2012")
    teachers.save_teacher(str(tmp_path / "t"), "convnet_d2_w4_bn",
                          model.init(jax.random.key(0)), dataset="imagenet2012",
                          num_classes=1000, input_shape=(16, 16, 3), preprocess=pre,
                          source="test")
    # The mock's labels are random; give every class one record so each has a base image.
    monkeypatch.setattr(stream.TfdsSource, "labels",
                        lambda self: np.arange(len(self), dtype=np.int64) % 1000)
    reads = []
    real_read = stream.TfdsSource.read
    monkeypatch.setattr(stream.TfdsSource, "read",
                        lambda self, i: reads.append(int(i)) or real_read(self, i))
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    with tfds.testing.mock_data(num_examples=1000):
        cfg = load_config("configs/sre2l/infer_imagenet1k.py", 2, [
            "image_size=16", f"teacher.dir={str(tmp_path / 't')!r}", "teacher.num_teachers=1",
            "infer.iterations=2", "relabel.model='convnet_d2_w4'", "relabel.epochs=1",
            "relabel.batch_size=500", "relabel.seeds=1"])
        ctx = common.Context(cfg, str(tmp_path / "run"), quiet=True)
        res = pinfer.run(ctx, RunOptions())
        assert sorted(reads) == list(range(1000))     # B = 1 base image of each class, once
        art = artefact.load(res["artefact"])
        assert res["base_sets"] == 1 and art.x_syn_NHWC.shape == (2000, 16, 16, 3)
        assert art.parts["compensators_BxMxHxWxC"].shape == (1, 1, 16, 16, 3)
        rl = sre2l.relabel(res["artefact"], None, {}, quiet=True)
    assert rl["mode"] == "static" and rl["label_bytes"] == 2000 * 1000 * 2
    assert rl["compensator_bytes"] == 16 * 16 * 3 * 4 and np.isfinite(rl["accuracy_mean"])
