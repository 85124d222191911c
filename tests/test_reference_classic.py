"""jaxdd's DC, DSA, DM and DataDAM against float64 fixtures from the reference PyTorch code.

The fixtures (tests/fixtures/reference/{dc,dsa,dm,datadam}.npz) are written by hand-run
scripts in benchmarks/reference/ that transcribe VICO-UoE/DatasetCondensation (main.py,
main_DM.py, utils.py, networks.py) and DataDistillation/DataDAM (main_DataDAM.py,
utils.py); every input is saved (images in NCHW, the torch state dict, the augmentation
parameters each class drew). Each test maps the weights into jaxdd's parameter tree and runs
jaxdd's own code (the distiller's `step`, the per-class loss functions its step calls, the
DSA transforms) in float64. No torch needed.

Random draws cannot match draw for draw (torch's generator vs jax.random), so:
- the step tests (loss, gradient, updated images) run with augmentation off and a model
  whose `init` returns the fixture's network (the step draws a "fresh" network from it);
- the augmented tests apply jaxdd's DSA transforms with the reference's recorded siamese
  parameters to the real and synthetic batch of each class, then call the same per-class
  loss function the step calls (with its own augmentation off), differentiating through
  the transforms;
- `test_dsa_transforms_on_reference_parameters` checks every family (per-image parameters)
  and its input gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd import augment as A
from jaxdd.methods import datadam as dam_lib
from jaxdd.methods import dc as dc_lib
from jaxdd.methods import dm as dm_lib
from jaxdd.methods.matching import hard_labels, syn_by_class
from jaxdd.models import Model, get_model

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "reference")
RTOL = 1e-6  # float64 on both sides
KEY = jax.random.key(0)


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def load(name: str) -> dict[str, np.ndarray]:
    with np.load(os.path.join(FIXTURES, f"{name}.npz")) as f:
        return {k: f[k] for k in f.files}


def nhwc(x_NCHW: np.ndarray) -> jax.Array:
    """torch NCHW (any leading axes) -> NHWC float64."""
    return jnp.asarray(np.moveaxis(x_NCHW, -3, -1), jnp.float64)


def close(got, want, rtol=RTOL, atol=0.0, what=""):
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol,
                               err_msg=what)


# ---------------------------------------------------------------------------- networks


def variables_from_torch(fx: dict, depth: int, norm: str, model: Model, prefix: str = "") -> dict:
    """networks.py ConvNet state dict -> jaxdd ConvNet variables (float64).

    features.{4d} = Conv2d (OIHW -> HWIO), features.{4d+1} = GroupNorm(C, C) / BatchNorm2d;
    classifier (K, C*h*w) flattens (C, h, w), jaxdd flattens NHWC: (h, w, C)."""
    w = lambda k: jnp.asarray(fx[f"{prefix}w/{k}"], jnp.float64)  # noqa: E731
    params: dict[str, Any] = {}
    stats: dict[str, Any] = {}
    for d in range(depth):
        params[f"Conv3x3_{d}"] = {"kernel": w(f"features.{4 * d}.weight").transpose(2, 3, 1, 0),
                                  "bias": w(f"features.{4 * d}.bias")}
        n = f"features.{4 * d + 1}"
        if norm == "instance":
            params[f"InstanceNorm_{d}"] = {"scale": w(f"{n}.weight"), "bias": w(f"{n}.bias")}
        else:
            params[f"BatchNorm_{d}"] = {"scale": w(f"{n}.weight"), "bias": w(f"{n}.bias")}
            stats[f"BatchNorm_{d}"] = {"mean": w(f"{n}.running_mean"),
                                       "var": w(f"{n}.running_var")}
    wc = w("classifier.weight")
    k = wc.shape[0]
    h, width = model.input_shape[0] // 2 ** depth, params[f"Conv3x3_{depth - 1}"]["bias"].shape[0]
    kernel = wc.reshape(k, width, h, h).transpose(2, 3, 1, 0).reshape(-1, k)
    params["TorchDense_0"] = {"Dense_0": {"kernel": kernel, "bias": w("classifier.bias")}}
    variables = {"params": params, **({"batch_stats": stats} if stats else {})}
    chex.assert_trees_all_equal_shapes(variables, model.init(jax.random.key(1)))
    return variables


@dataclasses.dataclass(frozen=True, eq=False)
class FixedNet(Model):
    """A model whose `init` returns the fixture's network, whatever the key: the step's
    "fresh random network" is then the reference's."""

    fixed: Any = None

    def init(self, key: jax.Array):
        del key
        return self.fixed


def fixture_model(fx: dict, name: str, num_classes: int, depth: int, norm: str,
                  prefix: str = "") -> FixedNet:
    h = fx["x_syn"].shape[-1]
    model = get_model(name, num_classes, (h, h, fx["x_syn"].shape[1]))
    variables = variables_from_torch(fx, depth, norm, model, prefix)
    return FixedNet(model.name, model.module, model.input_shape, model.num_classes, variables)


def run_step(make, config, model: Model, fx: dict, x_real_KxBxHWC: jax.Array):
    """One distiller step from images x_syn (float64): (loss, grad recovered from the SGD
    update, updated images). First step of SGD with momentum: x_new = x - lr * grad."""
    num_classes = x_real_KxBxHWC.shape[0]
    x0 = nhwc(fx["x_syn"])
    distiller = make(config, model, num_classes)
    state = distiller.init(KEY, x0, hard_labels(num_classes, x0.shape[0] // num_classes))
    # init stores the images in float32; the fixture runs in float64
    state = state._replace(syn=state.syn._replace(x_syn_NHWC=x0),
                           opt_img=jax.tree.map(lambda a: a.astype(jnp.float64), state.opt_img))
    new, metrics = jax.jit(distiller.step)(state, x_real_KxBxHWC, KEY)
    x_new = new.syn.x_syn_NHWC
    return metrics, (x0 - x_new) / config.lr_img, x_new, new


# ---------------------------------------------------------------------------- DSA params


def siamese_transform(fx: dict, prefix: str, hw: tuple[int, int]):
    """x_NHWC -> the reference's draw `prefix` (one family, one parameter set for every
    image) applied with jaxdd's DSA transforms."""
    fam = A.FAMILIES[int(fx[f"{prefix}/family"])]
    p = lambda n: fx[f"{prefix}/{n}"]  # noqa: E731

    def aug(x_NHWC):
        n = x_NHWC.shape[0]
        full = lambda v, dt=jnp.float64: jnp.full((n,), v, dt)  # noqa: E731
        return family_transform(fam, x_NHWC, {k: full(p(k), jnp.asarray(p(k)).dtype)
                                              for k in PARAM_NAMES[fam]}, hw)

    return aug


PARAM_NAMES = {"color": ("randb", "rands", "randc"), "crop": ("translation_x", "translation_y"),
               "cutout": ("offset_x", "offset_y"), "flip": ("randf",), "scale": ("sx", "sy"),
               "rotate": ("angle",)}


def family_transform(fam: str, x_NHWC: jax.Array, q: dict, hw: tuple[int, int]) -> jax.Array:
    """The reference's rand_<family> with its recorded per-image parameters `q`, via jaxdd.

    Conventions: rand_crop samples x[i + t] (jaxdd `translate` moves content by +shift, so
    shift = -t); rand_cutout's offset is the box centre; rand_flip mirrors when u < 0.5."""
    if fam == "color":
        return A.adjust_color(x_NHWC, q["randb"], q["rands"], q["randc"])
    if fam == "crop":
        return A.translate(x_NHWC, -q["translation_x"].astype(jnp.int32),
                           -q["translation_y"].astype(jnp.int32))
    if fam == "cutout":
        return A.cutout(x_NHWC, q["offset_x"].astype(jnp.int32), q["offset_y"].astype(jnp.int32),
                        A.cutout_size(*hw))
    if fam == "flip":
        return A.flip_horizontal(x_NHWC, q["randf"] < 0.5)
    if fam == "scale":
        return A.scale(x_NHWC, q["sx"], q["sy"])
    return A.rotate(x_NHWC, q["angle"])


def augmented_pairs(fx: dict, case: str, x_real_KxBxHWC: jax.Array, num_classes: int):
    """For a fixture case with one draw per class: the augmented real batch (K, B, ...),
    x_syn_NHWC -> augmented (K, I, ...), and (x_syn_NHWC, cotangent) -> its VJP (jitted:
    the eager op-by-op path compiles every op)."""
    hw = tuple(x_real_KxBxHWC.shape[2:4])
    augs = [siamese_transform(fx, f"{case}/c{c}", hw) for c in range(num_classes)]
    real = jnp.stack([augs[c](x_real_KxBxHWC[c]) for c in range(num_classes)])

    def syn(x_syn_NHWC):
        x = syn_by_class(x_syn_NHWC, num_classes)
        return jnp.stack([augs[c](x[c]) for c in range(num_classes)])

    def syn_vjp(x_syn_NHWC, cot_KxIxHWC):
        return jax.vjp(syn, x_syn_NHWC)[1](cot_KxIxHWC)[0]

    return jax.jit(lambda: real)(), jax.jit(syn), jax.jit(syn_vjp)


# ---------------------------------------------------------------------------- DC


DC_K = 3


@pytest.fixture(scope="module")
def dc_fx():
    return load("dc")


def test_dc_step_matches_reference(dc_fx):
    fx = dc_fx
    model = fixture_model(fx, "convnet_d2_w4", DC_K, 2, "instance")
    cfg = dc_lib.DCConfig(lr_img=float(fx["lr_img"]), momentum_img=float(fx["momentum"]),
                          outer_loop=1, inner_loop=1)  # one outer step, no inner training
    metrics, grad, x_new, _ = run_step(dc_lib.make_dc, cfg, model, fx, nhwc(fx["x_real"]))
    close(metrics["loss"], fx["ours/loss"], what="DC loss")
    close(grad, nhwc(fx["ours/grad"]), atol=1e-12, what="DC grad w.r.t. x_syn")
    close(x_new, nhwc(fx["ours/x_new"]), what="DC updated images")


@functools.lru_cache(maxsize=None)
def dc_value_and_grad(name: str, num_classes: int, shape_HWC: tuple, metric: str):
    """jit(value_and_grad) of jaxdd's DC matching loss (`dc_class_losses`, summed over
    classes, as the step) w.r.t. the synthetic batch (K, I, H, W, C); compiled once per
    model and distance, shared by the DC and DSA tests."""
    model = get_model(name, num_classes, shape_HWC)

    def loss(variables, x_real_KxBxHWC, x_syn_KxIxHWC, key):
        return dc_lib.dc_class_losses(model, variables, x_real_KxBxHWC, x_syn_KxIxHWC, key,
                                      "none", metric).sum()

    return jax.jit(jax.value_and_grad(loss, argnums=2))


@pytest.mark.parametrize("metric", ["ours", pytest.param("mse", marks=pytest.mark.slow),
                                    pytest.param("cos", marks=pytest.mark.slow)])
def test_dc_loss_every_distance(dc_fx, metric):
    fx = dc_fx
    model = fixture_model(fx, "convnet_d2_w4", DC_K, 2, "instance")
    x_syn = nhwc(fx["x_syn"])
    vg = dc_value_and_grad(model.name, DC_K, model.input_shape, metric)
    value, grad = vg(model.fixed, nhwc(fx["x_real"]), syn_by_class(x_syn, DC_K), KEY)
    close(value, fx[f"{metric}/loss"], what=f"DC {metric} loss")
    close(grad.reshape(x_syn.shape), nhwc(fx[f"{metric}/grad"]), atol=1e-12,
          what=f"DC {metric} grad")


# ---------------------------------------------------------------------------- DSA


DSA_K = 3


@pytest.fixture(scope="module")
def dsa_fx():
    return load("dsa")


@pytest.mark.parametrize("family", A.FAMILIES)
def test_dsa_matching_with_reference_draws(dsa_fx, family):
    """DC loss and gradient under the reference's siamese draw of `family` for each class.

    grad = VJP of the augmentation applied to jaxdd's matching-loss gradient at the
    augmented batch (the chain rule the step's value_and_grad runs through `siamese_dsa`)."""
    fx = dsa_fx
    model = fixture_model(fx, "convnet_d2_w4", DSA_K, 2, "instance")
    real, syn_aug, syn_vjp = augmented_pairs(fx, family, nhwc(fx["x_real"]), DSA_K)
    x_syn = nhwc(fx["x_syn"])
    vg = dc_value_and_grad(model.name, DSA_K, model.input_shape, "ours")
    value, g_aug = vg(model.fixed, real, syn_aug(x_syn), KEY)
    close(value, fx[f"{family}/loss"], what=f"DSA ({family}) loss")
    close(syn_vjp(x_syn, g_aug), nhwc(fx[f"{family}/grad"]), atol=1e-12,
          what=f"DSA ({family}) grad")


@pytest.mark.parametrize("family", A.FAMILIES)
def test_dsa_transforms_on_reference_parameters(dsa_fx, family):
    """Each family with per-image parameters: output and input gradient (VJP)."""
    fx = dsa_fx
    x, cot = nhwc(fx["transform/x"]), nhwc(fx["transform/cot"])
    q = {n: jnp.asarray(fx[f"transform/{family}/{n}"]) for n in PARAM_NAMES[family]}
    fn = functools.partial(family_transform, family, hw=tuple(x.shape[1:3]))

    @jax.jit
    def output_and_vjp(x_NHWC, q, cot_NHWC):
        y, vjp = jax.vjp(lambda x_: fn(x_, q), x_NHWC)
        return y, vjp(cot_NHWC)[0]

    y, grad = output_and_vjp(x, q, cot)
    close(y, nhwc(fx[f"transform/{family}/y"]), atol=1e-12, what=f"{family} output")
    close(grad, nhwc(fx[f"transform/{family}/grad"]), atol=1e-12,
          what=f"{family} input gradient")


# ---------------------------------------------------------------------------- DM


DM_K = 3
DM_MODELS = {"in": ("convnet_d2_w4", "instance"), "bn": ("convnet_d2_w4_bn", "batch")}


@pytest.fixture(scope="module")
def dm_fx():
    return load("dm")


@pytest.mark.parametrize("case", ["in", "bn"])
def test_dm_step_matches_reference(dm_fx, case):
    """ConvNet: per-class embeddings (vmap); ConvNetBN: all classes in one forward (batch
    statistics over every class, as main_DM.py's BN branch)."""
    fx = dm_fx
    name, norm = DM_MODELS[case]
    model = fixture_model(fx, name, DM_K, 2, norm, f"{case}/")
    cfg = dm_lib.DMConfig(lr_img=float(fx["lr_img"]), momentum_img=float(fx["momentum"]),
                          dsa_strategy="none")
    metrics, grad, x_new, _ = run_step(dm_lib.make_dm, cfg, model, fx, nhwc(fx["x_real"]))
    close(metrics["loss"], fx[f"{case}/loss"], what=f"DM ({case}) loss")
    close(grad, nhwc(fx[f"{case}/grad"]), atol=1e-12, what=f"DM ({case}) grad")
    close(x_new, nhwc(fx[f"{case}/x_new"]), what=f"DM ({case}) updated images")


def test_dm_dsa_with_reference_draws(dm_fx):
    """DM loss and gradient when the classes draw rotate, scale and crop (siamese)."""
    fx = dm_fx
    model = fixture_model(fx, "convnet_d2_w4", DM_K, 2, "instance", "in/")
    real, syn_aug, syn_vjp = augmented_pairs(fx, "in_dsa", nhwc(fx["x_real"]), DM_K)
    x_syn = nhwc(fx["x_syn"])

    def loss(x_syn_KxIxHWC):
        return dm_lib.dm_class_losses(model, model.fixed, real, x_syn_KxIxHWC, KEY, "none").sum()

    value, g_aug = jax.jit(jax.value_and_grad(loss))(syn_aug(x_syn))
    close(value, fx["in_dsa/loss"], what="DM (DSA) loss")
    close(syn_vjp(x_syn, g_aug), nhwc(fx["in_dsa/grad"]), atol=1e-12, what="DM (DSA) grad")


# ---------------------------------------------------------------------------- DataDAM


DAM_K = 3
DAM_MODELS = {"bn": ("convnet_d3_w4_bn", "batch"), "in": ("convnet_d3_w4", "instance")}


@pytest.fixture(scope="module")
def dam_fx():
    return load("datadam")


@pytest.mark.parametrize("case", ["bn", pytest.param("in", marks=pytest.mark.slow)])
def test_datadam_step_matches_reference(dam_fx, case):
    """Attention term (every block but the last, weight 100) + embedding term (100 * 0.01):
    both metrics, the gradient and the updated images. bn = the reference's ConvNet
    (get_network builds batchnorm), all classes in one forward per batch."""
    fx = dam_fx
    name, norm = DAM_MODELS[case]
    model = fixture_model(fx, name, DAM_K, 3, norm, f"{case}/")
    cfg = dam_lib.DataDAMConfig(lr_img=float(fx["lr_img"]), momentum_img=float(fx["momentum"]),
                                dsa_strategy="none")
    metrics, grad, x_new, _ = run_step(dam_lib.make_datadam, cfg, model, fx, nhwc(fx["x_real"]))
    close(metrics["loss"], fx[f"{case}/loss"], what=f"DataDAM ({case}) loss")
    close(metrics["attention_loss"], fx[f"{case}/attention_loss"], what="attention term")
    close(metrics["output_loss"], fx[f"{case}/output_loss"], what="output term")
    close(grad, nhwc(fx[f"{case}/grad"]), atol=1e-12, what=f"DataDAM ({case}) grad")
    close(x_new, nhwc(fx[f"{case}/x_new"]), what=f"DataDAM ({case}) updated images")


def test_datadam_dsa_with_reference_draws(dam_fx):
    """BN ConvNet, the classes draw color, cutout and rotate (siamese)."""
    fx = dam_fx
    model = fixture_model(fx, "convnet_d3_w4_bn", DAM_K, 3, "batch", "bn/")
    cfg = dam_lib.DataDAMConfig(dsa_strategy="none")
    real, syn_aug, syn_vjp = augmented_pairs(fx, "bn_dsa", nhwc(fx["x_real"]), DAM_K)
    x_syn = nhwc(fx["x_syn"])

    def loss(x_syn_KxIxHWC):
        att_K, out_K = dam_lib.datadam_class_losses(model, model.fixed, real, x_syn_KxIxHWC,
                                                    KEY, cfg)
        return cfg.attention_weight * (att_K.sum() + cfg.task_balance * out_K.sum())

    value, g_aug = jax.jit(jax.value_and_grad(loss))(syn_aug(x_syn))
    close(value, fx["bn_dsa/loss"], what="DataDAM (DSA) loss")
    close(syn_vjp(x_syn, g_aug), nhwc(fx["bn_dsa/grad"]), atol=1e-12, what="DataDAM (DSA) grad")


def test_dc_batchnorm_step_matches_reference(dc_fx):
    """ConvNetBN: a train-mode forward of the real images refreshes the running statistics
    (momentum 0.1), then the matching uses them frozen (main.py's BN branch)."""
    fx = dc_fx
    model = fixture_model(fx, "convnet_d2_w4_bn", DC_K, 2, "batch", "bn_init/")
    cfg = dc_lib.DCConfig(lr_img=float(fx["lr_img"]), momentum_img=float(fx["momentum"]),
                          outer_loop=1, inner_loop=1)
    refreshed = variables_from_torch(fx, 2, "batch", model, "bn/")
    metrics, grad, x_new, state = run_step(dc_lib.make_dc, cfg, model, fx, nhwc(fx["x_real"]))
    # PyTorch's running variance is the unbiased one (jaxdd.models.layers.BatchNorm)
    chex.assert_trees_all_close(state.net["batch_stats"], refreshed["batch_stats"], rtol=1e-12)
    close(metrics["loss"], fx["bn/loss"], what="DC (BN) loss")
    close(grad, nhwc(fx["bn/grad"]), atol=1e-12, what="DC (BN) grad")
    close(x_new, nhwc(fx["bn/x_new"]), what="DC (BN) updated images")
