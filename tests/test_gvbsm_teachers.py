"""G-VBSM's teachers: several architectures in rotation (one teacher per iteration), the
list-of-teachers mean, the plain-mean relabel ensemble, the per-image RandomCrop + flip of
teacher training, and the CPU pipeline with two architectures (tiny sizes)."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.augment.crops import flip_horizontal, pad_crop
from jaxdd.cli import main
from jaxdd.labels.relabel import ensemble_logits
from jaxdd.methods.statistics.capture import ConvStat, conv_input_stats
from jaxdd.methods.statistics.recover import (RecoverConfig, make_recover, stack_teachers,
                                              teacher_index)
from jaxdd.models.layers import Conv3x3
from jaxdd.population.teachers import TeacherConfig, TeacherError, pad_crop_flip


class BNNet(nn.Module):
    """conv -> BN -> relu -> Conv3x3 -> BN -> relu -> mean -> dense."""

    width: int = 4

    @nn.compact
    def __call__(self, x_NHWC, train: bool = False):
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(self.width, (3, 3))(x_NHWC)))
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(Conv3x3(self.width)(h)))
        return nn.Dense(3)(h.mean((1, 2)))


class PlainNet(nn.Module):
    """Three convs, no BatchNorm (as G-VBSM's instance-norm ConvNet: conv statistics only)."""

    @nn.compact
    def __call__(self, x_NHWC, train: bool = False):
        h = nn.relu(nn.Conv(3, (3, 3))(x_NHWC))
        h = nn.relu(nn.Conv(5, (3, 3), strides=2)(h))
        h = nn.relu(Conv3x3(5)(h))
        return nn.Dense(3)(h.mean((1, 2)))


@jax.jit
def _x_init(key):
    return jax.random.normal(key, (4, 8, 8, 2))


def _bn_teacher(net, key):
    return jax.jit(_bn_teacher_eager, static_argnums=0)(net, key)


def _bn_teacher_eager(net, key):
    v = net.init(key, jnp.zeros((1, 8, 8, 2)))
    ks = jax.random.split(jax.random.fold_in(key, 1), 4)
    bs = {f"BatchNorm_{i}": {"mean": 0.3 * jax.random.normal(ks[2 * i], (net.width,)),
                             "var": 0.5 + jax.random.uniform(ks[2 * i + 1], (net.width,))}
          for i in range(2)}
    return {"params": v["params"], "batch_stats": bs}


def _targets(net, v, x):
    """Conv targets a little off the batch's own statistics (non-zero conv terms)."""
    _, real = jax.jit(conv_input_stats, static_argnums=(0, 3, 4))(net, v, x, 4, False)
    return [ConvStat(*(a + 0.3 for a in s)) for s in real]


@pytest.fixture(scope="module")
def teachers():
    """Three teachers of three architectures (two with BN, one without), conv targets."""
    x = _x_init(jax.random.key(7))
    nets = [BNNet(4), PlainNet(), BNNet(6)]
    vs = [_bn_teacher(nets[0], jax.random.key(0)),
          jax.jit(PlainNet().init)(jax.random.key(1), jnp.zeros((1, 8, 8, 2))),
          _bn_teacher(nets[2], jax.random.key(2))]
    return nets, vs, [_targets(n, v, x) for n, v in zip(nets, vs)], x


def _cfg(**kw):
    base = dict(iterations=8, conv_stats=True, patch_size=4, conv_drop=0.4, stat_ema=0.8,
                diversity=1.0, ipc_per_batch=2, pad_crop=1, jitter=(0, 2), lr=0.1)
    return RecoverConfig(**{**base, **kw})


def test_teacher_index_is_t_mod_T():
    t = np.arange(23)
    np.testing.assert_array_equal(np.asarray(jax.vmap(lambda s: teacher_index(s, 5))(t)), t % 5)
    assert int(jax.jit(teacher_index, static_argnums=1)(jnp.int32(4000), 5)) == 0
    with pytest.raises(ValueError, match="teacher_schedule"):
        RecoverConfig(teacher_schedule="random")


def test_rotation_step_is_the_single_teacher_step(teachers):
    """Iteration t of the rotation = the one-teacher distiller of teacher t mod T on the
    same state and key (loss, next images, that teacher's moving averages); the other
    teachers' averages stay as they were."""
    nets, vs, tgts, x = teachers
    y = jnp.array([0, 0, 1, 1])
    rot = make_recover(_cfg(teacher_schedule="rotate"), nets, vs, None, tgts)
    singles = [make_recover(_cfg(), n, v, None, t) for n, v, t in zip(nets, vs, tgts)]
    rot_step = jax.jit(rot.step)
    single_steps = [jax.jit(s.step) for s in singles]
    state = jax.jit(rot.init)(jax.random.key(3), x, y)
    assert len(state.ema) == 3 and state.ema[1] == [] and len(state.conv_ema[1]) == 3
    for t in range(4):  # teachers 0, 1, 2, 0
        j = t % 3
        key = jax.random.key(100 + t)
        one = state._replace(ema=state.ema[j], conv_ema=state.conv_ema[j])
        want, m_want = single_steps[j](one, None, key)
        new, m = rot_step(state, None, key)
        for k in ("loss", "ce", "bn", "conv", "div"):
            np.testing.assert_allclose(m[k], m_want[k], rtol=1e-5, atol=1e-6, err_msg=f"t={t} {k}")
        np.testing.assert_allclose(new.syn.x_syn_NHWC, want.syn.x_syn_NHWC, rtol=1e-5, atol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                     (new.ema[j], new.conv_ema[j]), (want.ema, want.conv_ema))
        for i in {0, 1, 2} - {j}:  # not this teacher's iteration: averages untouched
            jax.tree.map(np.testing.assert_array_equal, (new.ema[i], new.conv_ema[i]),
                         (state.ema[i], state.conv_ema[i]))
        assert int(new.iteration) == t + 1
        state = new
    assert float(m["bn"]) > 0 and float(m["conv"]) > 0


def test_rotation_resumes_exactly(teachers):
    """The schedule is a pure function of the state's iteration: stopping after 3 steps,
    storing the state on the host and continuing gives the images of an unbroken run."""
    nets, vs, tgts, x = teachers
    d = make_recover(_cfg(teacher_schedule="rotate"), nets, vs, None, tgts)
    step = jax.jit(d.step)
    keys = [jax.random.fold_in(jax.random.key(5), t) for t in range(6)]
    s0 = jax.jit(d.init)(jax.random.key(4), x, jnp.array([0, 0, 1, 1]))
    a = s0
    for k in keys:
        a, _ = step(a, None, k)
    b = s0
    for k in keys[:3]:
        b, _ = step(b, None, k)
    b = jax.tree.map(lambda leaf: jnp.asarray(np.asarray(leaf)), b)  # "saved" and reloaded
    for k in keys[3:]:
        b, _ = step(b, None, k)
    np.testing.assert_array_equal(np.asarray(a.syn.x_syn_NHWC), np.asarray(b.syn.x_syn_NHWC))
    assert int(b.iteration) == 6


def test_list_mean_equals_stacked_and_refusals(teachers):
    """A list of teachers under "mean" is the stacked (vmapped) mean when they share one
    architecture; rotate needs a list; lists must match in length."""
    nets, vs, tgts, x = teachers
    v2 = jax.tree.map(lambda a: a * 1.05, vs[0])
    t2 = _targets(nets[0], v2, x)
    y = jnp.array([0, 0, 1, 1])
    listed = make_recover(_cfg(), [nets[0], nets[0]], [vs[0], v2], None, [tgts[0], t2])
    stacked = make_recover(_cfg(stacked_teachers=True), nets[0], stack_teachers([vs[0], v2]),
                           None, stack_teachers([tgts[0], t2]))
    s_l = listed.init(jax.random.key(0), x, y)
    s_s = stacked.init(jax.random.key(0), x, y)
    key = jax.random.key(9)
    n_l, m_l = jax.jit(listed.step)(s_l, None, key)
    n_s, m_s = jax.jit(stacked.step)(s_s, None, key)
    for k in ("loss", "ce", "bn", "conv"):
        np.testing.assert_allclose(m_l[k], m_s[k], rtol=1e-5, err_msg=k)
    np.testing.assert_allclose(n_l.syn.x_syn_NHWC, n_s.syn.x_syn_NHWC, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="rotate"):
        make_recover(_cfg(teacher_schedule="rotate"), nets[0], vs[0], None, tgts[0])
    with pytest.raises(ValueError, match="as many"):
        make_recover(_cfg(), nets, vs[:2], None, tgts)


def test_plain_mean_ensemble_is_numpy_mean():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4, 7)).astype(np.float32) * np.array([1, 3, 0.5, 2, 8],
                                                                      np.float32)[:, None, None]
    np.testing.assert_allclose(ensemble_logits(jnp.asarray(logits), rescale=False),
                               logits.mean(0), rtol=1e-6)
    norms = np.sqrt((logits.astype(np.float64) ** 2).sum((1, 2)))
    want = (logits * (norms.mean() / norms)[:, None, None]).mean(0)
    got = np.asarray(ensemble_logits(jnp.asarray(logits)))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    assert np.abs(got - logits.mean(0)).max() > 0.1  # the two rules differ here


def _all_crops(x_HWC, pad, fill):
    """{(dy, dx, flipped): RandomCrop(pad) at (dy, dx) of x, mirrored or not} (numpy)."""
    offs = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
    n = len(offs)
    src = jnp.stack([x_HWC, flip_horizontal(x_HWC[None], jnp.array([True]))[0]])
    crops = jax.jit(lambda s, o: pad_crop(s, o, pad, fill))(
        jnp.repeat(src, n, axis=0), jnp.asarray(offs * 2, jnp.int32))
    keys = [(dy, dx, f) for f in (False, True) for dy, dx in offs]
    return dict(zip(keys, np.asarray(crops)))


def test_teacher_pad_crop_flip_per_image_and_deterministic():
    """The teacher's per-image RandomCrop(padding 4, black fill) + flip: every output is a
    crop (maybe mirrored) of its own input, the images get different crops, and the draw
    is a function of the key."""
    x = jnp.broadcast_to(jnp.arange(8 * 8 * 2, dtype=jnp.float32).reshape(1, 8, 8, 2),
                         (12, 8, 8, 2))
    fill = (-1.5, -2.5)
    aug = jax.jit(pad_crop_flip(4, fill))
    k = jax.random.key(0)
    out = np.asarray(aug(k, x))
    np.testing.assert_array_equal(out, np.asarray(aug(k, x)))
    assert not np.array_equal(out, np.asarray(aug(jax.random.key(1), x)))
    crops = _all_crops(x[0], 4, jnp.asarray(fill))
    draws = [next((k for k, c in crops.items() if np.array_equal(c, o)), None) for o in out]
    assert all(d is not None for d in draws), draws
    assert len(set(draws)) > 3  # per image, not one crop for the batch
    assert {d[2] for d in draws} == {False, True}
    assert np.isin(out, np.asarray(fill)).any()  # black padding shows where shifted
    with pytest.raises(TeacherError, match="dsa"):
        TeacherConfig(pad_crop=4)  # the default dsa="crop_flip" would be replaced silently
    assert TeacherConfig(pad_crop=4, dsa="").pad_crop == 4


def _run(capsys, argv, code=0):
    got = main(argv + ["--quiet", "--json"])
    o, e = capsys.readouterr()
    assert got == code, e
    return json.loads(o.strip().splitlines()[-1]) if code == 0 else e


def _mixed_pipeline(tiny_npz, tmp_path, capsys):
    """Teachers + recover of the CPU preset with two teacher architectures; (out, argv sets)."""
    config = os.path.join(os.path.dirname(__file__), "..", "configs", "sre2l", "fashion_mnist_cpu.py")
    tdir, out = tmp_path / "teachers", str(tmp_path / "run")
    sets = [f"dataset=npz:{tiny_npz}", "teacher.model=['convnet_d2_w4_bn', 'convnet_d2_w4']",
            f"teacher.dir={str(tdir)!r}", "teacher.epochs=1", "teacher.batch_size=128",
            "teacher.dsa=''", "teacher.pad_crop=1", "method=gvbsm",
            "recover.iterations=3", "recover.batch_size=3", "recover.ipc_per_batch=2",
            "recover.conv_stats=True", "recover.patch_size=4", "recover.conv_target_batch=128",
            "recover.stat_ema=0.8", "recover.teacher_schedule='rotate'",
            "relabel.recipe='gvbsm'", "relabel.ensemble_reduce='mean'"]
    setv = sum((["--set", s] for s in sets), [])
    t = _run(capsys, ["teacher", "--config", config] + setv)
    assert [r["model"] for r in t["teachers"]] == ["convnet_d2_w4_bn", "convnet_d2_w4"]
    for m in ("convnet_d2_w4_bn", "convnet_d2_w4"):
        with open(tdir / m / "teacher.json") as f:
            man = json.load(f)
        assert man["model"] == m and man["config"]["pad_crop"] == 1 and man["status"] == "complete"
    r = _run(capsys, ["recover", "--config", config, "--ipc", "2", "--out", out] + setv)
    assert r["teacher_dirs"] == [str(tdir / "convnet_d2_w4_bn"), str(tdir / "convnet_d2_w4")]
    for m in ("convnet_d2_w4_bn", "convnet_d2_w4"):
        assert len(os.listdir(tdir / m / "conv_targets")) == 1
    return config, out, setv


def test_gvbsm_mixed_teachers_rotate_pipeline(tiny_npz, tmp_path, capsys):
    """The CPU preset with two teacher architectures (BN ConvNet and instance-norm ConvNet,
    each in its own directory, per-image pad-crop teachers) and the rotation."""
    from jaxdd import artefact
    config, out, setv = _mixed_pipeline(tiny_npz, tmp_path, capsys)
    art = artefact.load(os.path.join(out, "artefact"))
    assert art.meta["teacher_schedule"] == "rotate" and len(art.meta["conv_targets"]) == 2
    assert art.meta["teacher_models"] == ["convnet_d2_w4_bn", "convnet_d2_w4"]
    assert np.isfinite(art.x_syn_NHWC).all() and art.x_syn_NHWC.shape == (6, 8, 8, 1)
    # The instance-norm teacher without conv statistics: one clear error, nothing written.
    bad = tmp_path / "run_nobn"
    err = _run(capsys, ["recover", "--config", config, "--ipc", "2", "--out", str(bad)]
               + setv + ["--set", "recover.conv_stats=False"], code=2)
    assert "no BatchNorm" in err and "conv_stats" in err
    assert not os.path.exists(bad)


@pytest.mark.slow
def test_gvbsm_mixed_teachers_relabel_plain_mean(tiny_npz, tmp_path, capsys):
    """Relabel of a mixed-architecture run: both directories' teachers, plain mean."""
    _, out, _ = _mixed_pipeline(tiny_npz, tmp_path, capsys)
    rl = _run(capsys, ["relabel", out, "--mode", "online", "--epochs", "1", "--seeds", "1"])
    assert rl["num_teachers"] == 2 and rl["ensemble_reduce"] == "mean"
    assert len(rl["teacher_dirs"]) == 2 and 0.0 <= rl["accuracy_mean"] <= 1.0
