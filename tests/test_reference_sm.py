"""Reference fixtures of the statistics-matching family (issue #14): jaxdd's own loss / step
functions against float64 PyTorch runs written as the reference code computes
(benchmarks/reference/{sre2l,gvbsm,rded}.py; the npz files hold every input, the teacher's
weights and running statistics in torch layout, and the reference outputs). No torch needed.

  * SRe2L: `sre2l_loss` (loss, CE, BN term, d loss / d x through a fixed torch.roll jitter)
    and two `make_recover` steps (Adam, cosine lr, clip) from given images.
  * G-VBSM: `sre2l_loss` with conv targets, a fixed drop mask and moving averages (the
    reference's second iteration) plus `diversity_loss`, through a fixed RandomCrop(pad) +
    flip + roll; the updated moving averages.
  * RDED: `crop_ce` of every fixed RandomResizedCrop box, `select_from_boxes` (best crop per
    image, then the lowest scores) and `tile`.

All run under float64 (enable_x64), tolerance rtol 1e-6 unless noted.
"""

import contextlib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.augment.crops import pad_crop
from jaxdd.augment.dsa import flip_horizontal
from jaxdd.methods.rded import RDEDConfig, crop_ce, select_from_boxes, tile
from jaxdd.methods.statistics.capture import ConvStat, capture
from jaxdd.methods.statistics.losses import diversity_loss, sre2l_loss
from jaxdd.methods.statistics.recover import RecoverConfig, make_recover
from jaxdd.models.convnet import ConvNet

FIX = Path(__file__).parent / "fixtures" / "reference"
RTOL = 1e-6


@contextlib.contextmanager
def enable_x64():
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", prev)


def _load(name: str) -> dict:
    with np.load(FIX / f"{name}.npz") as f:
        return {k: f[k] for k in f.files}


def _teacher(f: dict, hw: int):
    """jaxdd's ConvNet(norm='batch') with the fixture's torch weights (Conv2d OIHW -> HWIO,
    Linear over a (C, H, W) flatten -> kernel over jaxdd's (H, W, C) flatten)."""
    depth = sum(1 for k in f if k.startswith("w/features.") and k.endswith(".running_mean"))
    width = f["w/features.0.weight"].shape[0]
    k_out = f["w/classifier.weight"].shape[0]
    params, stats = {}, {}
    for d in range(depth):
        conv, bn = f"w/features.{4 * d}", f"w/features.{4 * d + 1}"
        params[f"Conv3x3_{d}"] = {"kernel": f[conv + ".weight"].transpose(2, 3, 1, 0),
                                  "bias": f[conv + ".bias"]}
        params[f"BatchNorm_{d}"] = {"scale": f[bn + ".weight"], "bias": f[bn + ".bias"]}
        stats[f"BatchNorm_{d}"] = {"mean": f[bn + ".running_mean"], "var": f[bn + ".running_var"]}
    s = hw
    for _ in range(depth):
        s //= 2
    w = f["w/classifier.weight"].reshape(k_out, width, s, s).transpose(2, 3, 1, 0)
    params["TorchDense_0"] = {"Dense_0": {"kernel": w.reshape(s * s * width, k_out),
                                          "bias": f["w/classifier.bias"]}}
    net = ConvNet(num_classes=k_out, width=width, depth=depth, norm="batch")
    ref = jax.eval_shape(net.init, jax.random.key(0), jnp.zeros((1, hw, hw, 3)))
    v = jax.tree.map(jnp.asarray, {"params": params, "batch_stats": stats})
    assert jax.tree.structure(ref) == jax.tree.structure(v)
    assert jax.tree.map(jnp.shape, ref) == jax.tree.map(jnp.shape, v)
    return net, v


def _nhwc(a):
    return jnp.asarray(np.asarray(a).transpose(0, 2, 3, 1))


def _close(actual, desired, rtol=RTOL, atol=0.0, what=""):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=rtol, atol=atol,
                               err_msg=what)


# ---------------------------------------------------------------------------------------
# SRe2L (VILA-Lab/SRe2L recover_cifar.py + BNFeatureHook)


def test_sre2l_loss_and_gradient_match_reference():
    f = _load("sre2l")
    r_bn, first, _, _ = f["hp"]
    with enable_x64():
        net, v = _teacher(f, 10)
        x, y = _nhwc(f["x_NCHW"]), jnp.asarray(f["y"], jnp.int32)
        off = tuple(int(o) for o in f["offsets"])

        def loss(x_NHWC):  # the reference's torch.roll(inputs, (off1, off2), dims=(H, W))
            return sre2l_loss(jnp.roll(x_NHWC, off, axis=(1, 2)), y, net, v, r_bn=float(r_bn),
                              first_bn_multiplier=float(first))

        (l, aux), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(x)
        assert l.dtype == jnp.float64
    _close(aux["ce"], f["ce"], what="CE")
    _close(aux["bn"], f["bn"], what="BN term")
    _close(l, f["loss"], what="loss")
    _close(g, f["grad_NCHW"].transpose(0, 2, 3, 1), atol=1e-12, what="d loss / d x")


def test_sre2l_recover_steps_match_reference():
    f = _load("sre2l")
    r_bn, first, lr, t_total = f["hp"]
    cfg = RecoverConfig(lr=float(lr), iterations=int(t_total), r_bn=float(r_bn),
                        first_bn_multiplier=float(first), jitter=(0, 0), init="real")
    with enable_x64():
        net, v = _teacher(f, 10)
        bounds = (-f["mean"] / f["std"], (1 - f["mean"]) / f["std"])
        d = make_recover(cfg, net, v, bounds)
        state = d.init(jax.random.key(0), _nhwc(f["x_NCHW"]), jnp.asarray(f["y"], jnp.int32))
        outs, step = [], jax.jit(d.step)
        for _ in range(2):
            state, _ = step(state, None, jax.random.key(1))
            outs.append(state.syn.x_syn_NHWC)
        assert outs[-1].dtype == jnp.float64
    # Adam's first steps are ~lr * sign(g): absolute tolerance for pixels whose gradient
    # is tiny; the clip makes many pixels equal to the bounds exactly.
    _close(outs[0], f["step1_NCHW"].transpose(0, 2, 3, 1), atol=1e-9, what="after step 1")
    _close(outs[1], f["step2_NCHW"].transpose(0, 2, 3, 1), atol=1e-9, what="after step 2")


# ---------------------------------------------------------------------------------------
# G-VBSM (shaoshitong/G_VBSM_Dataset_Condensation Branch_CIFAR_100/recover)

_CONV_FIELDS = ("mean", "var", "patch_mean", "patch_var")  # ConvStat order


def _conv_stat(f: dict, prefix: str) -> ConvStat:
    return ConvStat(*(jnp.asarray(f[f"{prefix}_{k}"]) for k in _CONV_FIELDS))


def test_gvbsm_conv_targets_match_reference_pre_hook():
    """The dataset targets (the reference's pre_hook_fn over one batch) equal jaxdd's conv
    input statistics: channel stats and 4-px cells of maps resized to multiples of 4,
    including a 2x2 map upsampled to one 4x4 cell."""
    f = _load("gvbsm")
    with enable_x64():
        net, v = _teacher(f, 10)
        conv_stats = jax.jit(lambda x: capture(net, v, x, None, (4, False)).conv)
        st = conv_stats(_nhwc(f["x_real_NCHW"]))
    assert [s.patch_mean_P.shape for s in st] == [(9,), (4,), (1,)]
    for i, s in enumerate(st):
        for k, a in zip(_CONV_FIELDS, s):
            _close(a, f[f"target{i}_{k}"], atol=1e-13, what=f"conv {i} {k}")


def test_gvbsm_loss_gradient_and_averages_match_reference():
    """Two consecutive iterations: CE + r_loss (BN + conv terms, first multiplier on the stem
    conv, dropped layers 0 and their averages frozen) + nuc_norm * diversity, moving
    averages started at zero (stat_ema_init="zero") and carried; d loss / d x through the
    fixed RandomCrop(pad) + flip + roll."""
    f = _load("gvbsm")
    r_loss, first, alpha, nuc, tau, pad = (float(a) for a in f["hp"])
    n_conv = 3
    with enable_x64():
        net, v = _teacher(f, 10)
        y = jnp.asarray(f["y"], jnp.int32)
        targets = [_conv_stat(f, f"target{i}") for i in range(n_conv)]
        # the start of the averages: what make_recover(stat_ema_init="zero").init builds
        cfg = RecoverConfig(iterations=2, stat_ema=alpha, stat_ema_init="zero", conv_stats=True,
                            patch_size=4, jitter=(0, 0), init="real")
        st0 = jax.jit(make_recover(cfg, net, v, None, targets).init)(
            jax.random.key(0), _nhwc(f["it1_x_NCHW"]), y)
        ema, cema = st0.ema, st0.conv_ema
        assert all(not np.any(np.asarray(a)) for a in jax.tree.leaves((ema, cema)))

        def augment(x_NHWC, p):
            n = x_NHWC.shape[0]
            xa = pad_crop(x_NHWC, jnp.broadcast_to(p[:2], (n, 2)), int(pad))
            xa = flip_horizontal(xa, jnp.broadcast_to(p[2] > 0, (n,)))
            return jnp.roll(xa, (p[3], p[4]), axis=(1, 2))

        def loss(x_NHWC, ema, cema, p, keep):
            xa = augment(x_NHWC, p)
            total, aux = sre2l_loss(xa, y, net, v, r_bn=r_loss, first_bn_multiplier=first,
                                    ema=ema, ema_alpha=alpha, conv_targets=targets,
                                    conv_keep_L=keep, conv_ema=cema, patch_size=4)
            div = diversity_loss(xa, 2, tau)
            return total + nuc * div, (aux, div)

        grad_fn = jax.jit(jax.value_and_grad(loss, has_aux=True))
        div_grad = jax.jit(jax.grad(lambda x, p: nuc * diversity_loss(augment(x, p), 2, tau)))
        for it in (1, 2):
            p = jnp.asarray(f[f"it{it}_aug"])
            x = _nhwc(f[f"it{it}_x_NCHW"])
            (l, (aux, div)), g = grad_fn(x, ema, cema, p, jnp.asarray(f[f"it{it}_keep"]))
            g_div = div_grad(x, p)
            ema, cema = aux["ema"], aux["conv_ema"]
            _close(aux["ce"], f[f"it{it}_ce"], what=f"it {it} CE")
            _close(aux["bn"], f[f"it{it}_bn"], what=f"it {it} BN terms")
            _close(aux["conv"], f[f"it{it}_conv"], what=f"it {it} conv terms")
            # the reference takes the eigenvalues in float32 (`.real.float()`)
            _close(div, f[f"it{it}_div"], rtol=1e-5, what=f"it {it} diversity")
            _close(l, f[f"it{it}_loss"], what=f"it {it} loss")
            g_ref, g_div_ref = (f[f"it{it}_grad{k}_NCHW"].transpose(0, 2, 3, 1)
                                for k in ("", "_div"))
            _close(g - g_div, g_ref - g_div_ref, atol=1e-12, what=f"it {it} d (CE + stats) / d x")
            scale = np.abs(g_div_ref).max()
            assert scale > 1e-4  # the diversity term is not saturated in this fixture
            _close(g_div, g_div_ref, rtol=1e-4, atol=1e-5 * scale, what=f"it {it} d div / d x")
            for i, (em, ev) in enumerate(ema):
                _close(em, f[f"it{it}_bn{i}_ema_mean"], atol=1e-14, what=f"it {it} BN {i} avg")
                _close(ev, f[f"it{it}_bn{i}_ema_var"], atol=1e-14, what=f"it {it} BN {i} avg")
            for i, s in enumerate(cema):
                for k, a in zip(_CONV_FIELDS, s):
                    _close(a, f[f"it{it}_conv{i}_ema_{k}"], atol=1e-14,
                           what=f"it {it} conv {i} {k} avg")
    assert not f["it1_keep"].all()  # the fixture covers a dropped layer


# ---------------------------------------------------------------------------------------
# RDED (LINs-lab/RDED synthesize/main.py, synthesize/utils.py)


def test_rded_crop_scores_selection_and_tiles_match_reference():
    """Fixed RandomResizedCrop boxes: every crop's teacher cross-entropy (crop resampled
    with antialiasing, centred on a zero canvas), each image's best crop, the kept images
    in ascending score, and the tiled synthetic image."""
    f = _load("rded")
    size, factor, num_crop, mipc, ipc = (int(a) for a in f["setup"])
    label = int(f["label"])
    cfg = RDEDConfig(factor=factor, num_crop=num_crop, mipc=mipc)
    with enable_x64():
        net, v = _teacher(f, size)
        # the reference crops [0, 1] images, then normalises: same thing as cropping the
        # normalised pool (the resampling weights sum to 1)
        pool = _nhwc((f["pool_NCHW"] - f["mean"][:, None, None]) / f["std"][:, None, None])
        boxes = jnp.asarray(f["boxes"], jnp.float64)
        teacher_fn = lambda x: net.apply(v, x, train=False)  # noqa: E731

        @jax.jit
        def run(pool, boxes):  # one compiled program
            src = jnp.repeat(jnp.arange(mipc, dtype=jnp.int32), num_crop)
            ce = crop_ce(teacher_fn, pool, src, boxes.reshape(-1, 4), label, cfg)
            sel = select_from_boxes(teacher_fn, pool, label, ipc * factor ** 2, cfg, boxes)
            return ce.reshape(mipc, num_crop), sel, tile(pool, sel, ipc, factor)

        ce_PxM, sel, out = run(pool, boxes)
        assert ce_PxM.dtype == jnp.float64
    _close(ce_PxM, f["ce_MxP"].T, rtol=1e-9, what="crop scores")
    np.testing.assert_array_equal(np.argmin(np.asarray(ce_PxM), 1), f["best_m"])
    np.testing.assert_array_equal(np.asarray(sel.src_n), f["selected"])
    _close(sel.ce_n, f["best_ce"][f["selected"]], rtol=1e-9, what="kept scores")
    np.testing.assert_array_equal(np.asarray(sel.box_nx4),
                                  f["boxes"][f["selected"], f["best_m"][f["selected"]]])
    _close(out, f["mixed_NCHW"].transpose(0, 2, 3, 1), atol=1e-12, what="tiled image")
    assert len(set(f["best_m"].tolist())) > 1  # the fixture's best crops are not all crop 0
