"""ImageNet ResNets: torchvision's parameter counts, torchvision <-> Flax conversion (exact
with torch where installed), the bfloat16 switch, a converted teacher directory."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.models import convert, get_model, param_count
from jaxdd.population.teachers import load_teachers


@pytest.mark.parametrize("name,count", [("resnet18_imagenet", 11_689_512),
                                        ("resnet50_imagenet", 25_557_032),
                                        ("resnet50_imagenet_bf16", 25_557_032)])
def test_param_counts_equal_torchvision(name, count):
    assert param_count(name, 1000, (224, 224, 3)) == count


def _random_variables(model, key):
    """Initialised variables with non-trivial BN statistics and affine terms."""
    v = model.init(key)
    leaves, tree = jax.tree.flatten(v)
    keys = jax.random.split(jax.random.fold_in(key, 1), len(leaves))
    bumped = [x + 0.1 * jax.random.uniform(k, x.shape) if x.ndim == 1 else x
              for x, k in zip(leaves, keys)]
    return jax.tree.unflatten(tree, bumped)


@pytest.mark.parametrize("name", ["resnet18_imagenet", "resnet50_imagenet", "resnet18"])
def test_state_dict_round_trip_gives_identical_logits(name):
    m = get_model(name, 7, (32, 32, 3))
    v = _random_variables(m, jax.random.key(0))
    sd = convert.flax_to_torchvision(v, m)
    assert "conv1.weight" in sd and "fc.weight" in sd and sd["fc.weight"].shape[0] == 7
    if name.endswith("imagenet"):
        assert sd["conv1.weight"].shape == (64, 3, 7, 7)
    sd["bn1.num_batches_tracked"] = np.asarray(3)  # torch's counter is ignored
    back = convert.torchvision_to_flax(sd, m)
    assert jax.tree.structure(back) == jax.tree.structure(v)
    x = jax.random.normal(jax.random.key(2), (2, 32, 32, 3))
    np.testing.assert_array_equal(m.apply(back, x), m.apply(v, x))


def test_mismatched_state_dict_names_missing_extra_and_shape_keys():
    m = get_model("resnet18_imagenet", 10, (32, 32, 3))
    sd = convert.flax_to_torchvision(m.init(jax.random.key(0)), m)
    del sd["layer2.0.downsample.0.weight"]
    sd["layer5.0.conv1.weight"] = np.zeros((1,))
    sd["fc.weight"] = np.zeros((1000, 512), np.float32)   # 1000-class head for a 10-class model
    with pytest.raises(ValueError) as e:
        convert.torchvision_to_flax(sd, m)
    msg = str(e.value)
    for part in ("1 missing: layer2.0.downsample.0.weight", "1 unexpected: layer5.0.conv1.weight",
                 "1 shape-mismatched: fc.weight (1000, 512) (model: (10, 512))"):
        assert part in msg, msg
    # A ResNet-50 state dict for ResNet-18: counts and the first few keys, not all of them.
    m50 = get_model("resnet50_imagenet", 10, (32, 32, 3))
    sd50 = convert.flax_to_torchvision(m50.init(jax.random.key(0)), m50)
    with pytest.raises(ValueError, match=r"\d+ unexpected: .*, \.\.\.; \d+ shape-mismatched"):
        convert.torchvision_to_flax(sd50, m)
    with pytest.raises(ValueError, match="not a ResNet"):
        convert.torchvision_to_flax(sd, get_model("convnet_bn", 10, (32, 32, 3)))


def test_bf16_logits_close_to_float32_and_params_stay_float32():
    m32 = get_model("resnet18_imagenet", 10, (64, 64, 3))
    m16 = get_model("resnet18_imagenet_bf16", 10, (64, 64, 3))
    v = m16.init(jax.random.key(0))
    assert {x.dtype for x in jax.tree.leaves(v)} == {jnp.dtype(jnp.float32)}
    x = jax.random.normal(jax.random.key(1), (4, 64, 64, 3))
    a, b = m32.apply(v, x), m16.apply(v, x)
    assert b.dtype == jnp.float32
    # bfloat16 keeps 8 mantissa bits: logits agree to a few per cent of their scale.
    np.testing.assert_allclose(b, a, atol=0.05 * float(jnp.abs(a).max()))
    logits, upd = m16.apply_train(v, x)
    assert logits.dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(upd["batch_stats"])} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("hw", [(32, 32), (45, 71), (224, 224)])
def test_imagenet_resnet_takes_any_image_size(hw):
    m = get_model("resnet18_imagenet", 5, (64, 64, 3))
    v = m.init(jax.random.key(0))
    assert m.apply(v, jnp.ones((1, *hw, 3))).shape == (1, 5)


def test_converted_teacher_directory_loads_back(tmp_path):
    m = get_model("resnet18_imagenet", 6, (32, 32, 3))
    v = _random_variables(m, jax.random.key(3))
    out = str(tmp_path / "teacher")
    man = convert.torchvision_to_teacher(convert.flax_to_torchvision(v, m), "resnet18_imagenet",
                                         out, "imagenet", 6, (32, 32, 3))
    assert man["status"] == "complete" and man["num_train"] == 0
    model, vs, pre, _ = load_teachers(out)
    assert model.name == "resnet18_imagenet" and len(vs) == 1
    np.testing.assert_allclose(pre.mean_C, convert.TORCHVISION_MEAN)
    x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))
    np.testing.assert_array_equal(model.apply(vs[0], x), m.apply(v, x))
    with pytest.raises(ValueError, match="already holds a teacher"):
        convert.torchvision_to_teacher(convert.flax_to_torchvision(v, m), "resnet18_imagenet",
                                       out, "imagenet", 6, (32, 32, 3))


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_torchvision_weights_give_torchvision_logits(arch, tmp_path):
    """Random torchvision weights (no download), converted: the same logits in eval mode."""
    torch = pytest.importorskip("torch")
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    net = getattr(tv.models, arch)(weights=None).eval()
    with torch.no_grad():  # non-trivial BN statistics (fresh ones are 0 / 1)
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 1.5)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
    path = tmp_path / f"{arch}.pth"
    torch.save(net.state_dict(), path)
    x_NCHW = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.from_numpy(x_NCHW)).numpy()
    m = get_model(f"{arch}_imagenet", 1000, (64, 64, 3))
    v = convert.torchvision_to_flax(convert.load_state_dict(path), m)
    with jax.default_matmul_precision("highest"):
        got = np.asarray(m.apply(v, jnp.asarray(x_NCHW.transpose(0, 2, 3, 1))))
    rel = float(np.abs(got - want).max() / np.abs(want).max())
    print(f"{arch}: max |jax - torch| / max |torch| = {rel:.2e}")
    assert rel <= 1e-4
