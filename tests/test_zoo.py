"""The cross-architecture zoo: parameter counts of the references' PyTorch definitions,
output shapes at 28x28x1 and 32x32x3, BN models through the training loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.models import ZOO, get_model, param_count
from jaxdd.train import TrainConfig, train_network

# Trainable parameters at 32x32x3 with 10 classes, as the references' PyTorch definitions
# count them (sum of p.numel() over model.parameters()); `test_torch_redefinitions` below
# recomputes every number from a PyTorch re-definition where torch is installed.
REFERENCE_COUNTS = {
    # VICO-UoE/DatasetCondensation networks.py (DC/DSA/DM; MTT, DATM, DataDAM copy it)
    "lenet": 62_006,                  # LeNet
    "alexnet": 1_872_202,             # AlexNet
    "alexnet_bn": 1_874_122,          # AlexNetBN
    "vgg11": 9_231_114,               # VGG11 (GroupNorm(C, C))
    "vgg11_bn": 9_231_114,            # VGG11BN
    "resnet18": 11_173_962,           # ResNet18BN
    "resnet18_bn": 11_173_962,        # ResNet18BN
    "resnet18_instance": 11_173_962,  # ResNet18 (GroupNorm(C, C))
    "resnet18_ap": 11_250_762,        # ResNet18BN_AP
    "resnet18_ap_instance": 11_250_762,  # ResNet18_AP
    # shaoshitong/G_VBSM_Dataset_Condensation models/ (from HobbitLong/RepDistiller)
    "mobilenetv2": 2_237_770,         # mobilenetv2.py mobilenetv2_T_w(6, 1.0)
    "mobilenetv2_half": 697_546,      # mobilenetv2.py mobile_half (G-VBSM's 'MobileNetV2')
    "wrn_16_2": 691_674,              # wrn.py wrn_16_2
    "shufflenetv2": 1_263_278,        # ShuffleNetv2.py ShuffleV2 (net_size 1)
    "shufflenetv2_0_5": 351_466,      # ShuffleNetv2.py ShuffleV2_0_5
}
BN_MODELS = ["alexnet_bn", "vgg11_bn", "resnet18_ap", "mobilenetv2_half", "wrn_16_2",
             "shufflenetv2_0_5"]


def test_every_zoo_model_has_a_reference_count():
    assert set(ZOO) <= set(REFERENCE_COUNTS)


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_param_counts_equal_the_references(name):
    assert param_count(name, 10, (32, 32, 3)) == REFERENCE_COUNTS[name]


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
def test_output_shapes(name, shape):
    m = get_model(name, 7, shape)
    x = jax.ShapeDtypeStruct((3, *shape), jnp.float32)
    v = jax.eval_shape(m.init, jax.random.key(0))
    assert jax.eval_shape(m.apply, v, x).shape == (3, 7)
    assert m.has_batch_stats == ("batch_stats" in v)
    assert m.has_batch_stats == (name in BN_MODELS or name.endswith("_bn") or name in (
        "resnet18", "mobilenetv2", "shufflenetv2"))


def test_flatten_heads_follow_the_references_at_28px():
    """DC's grey-image paddings: LeNet 16x5x5 and AlexNet 192x4x4 features at 28 px as at
    32; ResNet-AP's classifier reads 512x3x3 at 28 px (its `channel == 1` case)."""
    def dense_in(name, shape):
        v = jax.eval_shape(get_model(name, 10, shape).init, jax.random.key(0))["params"]
        last = [k for k in v if "Dense" in k][-1]
        leaf = v[last]["Dense_0"] if "TorchDense" in last else v[last]
        return leaf["kernel"].shape[0]
    for shape in ((28, 28, 1), (32, 32, 3)):
        assert dense_in("lenet", shape) == 84
        assert dense_in("alexnet", shape) == 192 * 16
        assert dense_in("vgg11", shape) == 512
    assert dense_in("resnet18_ap", (28, 28, 1)) == 512 * 9
    assert dense_in("resnet18_ap", (32, 32, 3)) == 512 * 16


def test_too_small_inputs_and_bad_names_are_clear_errors():
    with pytest.raises(ValueError, match="too small"):
        jax.eval_shape(get_model("vgg11", 10, (16, 16, 3)).init, jax.random.key(0))
    for bad in ("wrn_15_2", "shufflenetv2_0_7", "resnet50_ap", "resnet18_ap_imagenet"):
        with pytest.raises(ValueError, match=f"unknown model '{bad}'"):
            get_model(bad, 10, (32, 32, 3))


def _tiny_run(name, size):
    m = get_model(name, 3, (size, size, 3))
    x = jax.random.normal(jax.random.key(0), (6, size, size, 3))
    cfg = TrainConfig(epochs=1, batch_size=4, lr=0.01, dsa="")
    return m, lambda k: train_network(k, m, cfg, x, jnp.arange(6) % 3)


@pytest.mark.parametrize("name", BN_MODELS)
def test_bn_models_trace_through_the_training_loop(name):
    """Every BN model goes through jaxdd's loop (train-mode BN, mutable batch_stats threaded
    through the scan): traced only, as compiling the larger nets takes minutes on the 2-core
    machine; `test_bn_models_train_compiled` (slow) runs them all."""
    m, run = _tiny_run(name, 32)
    out = jax.eval_shape(run, jax.random.key(1))
    ref = jax.eval_shape(m.init, jax.random.key(0))
    assert jax.tree.structure(out) == jax.tree.structure(ref) and "batch_stats" in out
    assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(out), jax.tree.leaves(ref)))


def _check_trained(m, run):
    v = jax.jit(run)(jax.random.key(1))
    assert all(bool(jnp.isfinite(a).all()) for a in jax.tree.leaves(v))
    v0 = m.init(jax.random.split(jax.random.key(1))[0])
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), v["batch_stats"], v0["batch_stats"])
    assert min(jax.tree.leaves(moved)) > 0   # every BN layer saw the batches


def test_a_bn_model_trains_compiled():
    """Compiled and run: finite variables, every BN layer's statistics updated (16 px: small)."""
    _check_trained(*_tiny_run("alexnet_bn", 16))


@pytest.mark.slow
@pytest.mark.parametrize("name", BN_MODELS)
def test_bn_models_train_compiled(name):
    _check_trained(*_tiny_run(name, 32))


def test_torchvision_conversion_refuses_the_dc_variants():
    from jaxdd.models import convert
    for name in ("resnet18_instance", "resnet18_ap"):
        m = get_model(name, 10, (32, 32, 3))
        with pytest.raises(ValueError, match="not a ResNet in torchvision's layout"):
            convert.torchvision_to_flax({}, m)


def test_channel_shuffle_matches_torch_order():
    """ShuffleNet's view(N, g, C/g, H, W).permute(0, 2, 1, 3, 4) in NHWC."""
    from jaxdd.models.zoo import channel_shuffle
    x = jnp.arange(6.0).reshape(1, 1, 1, 6)
    np.testing.assert_array_equal(channel_shuffle(x)[0, 0, 0], [0, 3, 1, 4, 2, 5])


# ---- PyTorch re-definitions (written for this test from the references' layouts) ----

def _torch_models():
    torch = pytest.importorskip("torch")
    tnn = torch.nn

    def norm(kind, c):
        return tnn.GroupNorm(c, c, affine=True) if kind == "instance" else tnn.BatchNorm2d(c)

    def lenet(ch, k):
        return tnn.Sequential(
            tnn.Conv2d(ch, 6, 5, padding=2 if ch == 1 else 0), tnn.ReLU(), tnn.MaxPool2d(2, 2),
            tnn.Conv2d(6, 16, 5), tnn.ReLU(), tnn.MaxPool2d(2, 2), tnn.Flatten(),
            tnn.Linear(400, 120), tnn.ReLU(), tnn.Linear(120, 84), tnn.ReLU(), tnn.Linear(84, k))

    def alexnet(ch, k, bn=False):
        layers, cin = [], ch
        for i, (c, ks, p, pool) in enumerate([(128, 5, 2, 1), (192, 5, 2, 1), (256, 3, 1, 0),
                                              (192, 3, 1, 0), (192, 3, 1, 1)]):
            layers += [tnn.Conv2d(cin, c, ks, padding=p + (2 if ch == 1 and i == 0 else 0))]
            layers += [tnn.BatchNorm2d(c)] if bn else []
            layers += [tnn.ReLU()] + ([tnn.MaxPool2d(2, 2)] if pool else [])
            cin = c
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(192 * 16, k))

    def vgg11(ch, k, kind="instance"):
        layers, cin = [], ch
        for i, c in enumerate([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]):
            if c == "M":
                layers.append(tnn.MaxPool2d(2, 2))
                continue
            layers += [tnn.Conv2d(cin, c, 3, padding=3 if ch == 1 and i == 0 else 1), norm(kind, c),
                       tnn.ReLU()]
            cin = c
        return tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(512, k))

    class Res(tnn.Module):
        def __init__(self, cin, c, stride, kind, ap):
            super().__init__()
            self.ap = ap and stride != 1
            self.body1 = tnn.Sequential(tnn.Conv2d(cin, c, 3, 1 if ap else stride, 1, bias=False),
                                        norm(kind, c), tnn.ReLU())
            self.body2 = tnn.Sequential(tnn.Conv2d(c, c, 3, 1, 1, bias=False), norm(kind, c))
            self.short = tnn.Sequential()
            if stride != 1 or cin != c:
                self.short = tnn.Sequential(
                    tnn.Conv2d(cin, c, 1, 1 if ap else stride, bias=False),
                    *([tnn.AvgPool2d(2, 2)] if ap else []), norm(kind, c))

        def forward(self, x):
            y = self.body1(x)
            y = self.body2(tnn.functional.avg_pool2d(y, 2, 2) if self.ap else y)
            return torch.relu(y + self.short(x))

    def resnet18(ch, k, kind="batch", ap=False, size=32):
        layers, cin = [tnn.Conv2d(ch, 64, 3, 1, 1, bias=False), norm(kind, 64), tnn.ReLU()], 64
        for i, c in enumerate([64, 128, 256, 512]):
            for b in range(2):
                layers.append(Res(cin, c, 2 if i > 0 and b == 0 else 1, kind, ap))
                cin = c
        last = 3 if size == 28 else 4
        head = ([tnn.Flatten(), tnn.Linear(512 * last * last, k)] if ap else
                [tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(512, k)])
        return tnn.Sequential(*layers, *head)

    class InvRes(tnn.Module):
        def __init__(self, cin, c, stride, t):
            super().__init__()
            h = cin * t
            self.res = stride == 1 and cin == c
            self.conv = tnn.Sequential(
                tnn.Conv2d(cin, h, 1, bias=False), tnn.BatchNorm2d(h), tnn.ReLU(),
                tnn.Conv2d(h, h, 3, stride, 1, groups=h, bias=False), tnn.BatchNorm2d(h), tnn.ReLU(),
                tnn.Conv2d(h, c, 1, bias=False), tnn.BatchNorm2d(c))

        def forward(self, x):
            return x + self.conv(x) if self.res else self.conv(x)

    def mobilenetv2(ch, k, w=1.0):
        cin = int(32 * w)
        layers = [tnn.Conv2d(ch, cin, 3, 2, 1, bias=False), tnn.BatchNorm2d(cin), tnn.ReLU()]
        for t, c, n, s in [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                           (6, 160, 3, 2), (6, 320, 1, 1)]:
            for b in range(n):
                layers.append(InvRes(cin, int(c * w), s if b == 0 else 1, t))
                cin = int(c * w)
        last = int(1280 * w) if w > 1 else 1280
        return tnn.Sequential(*layers, tnn.Conv2d(cin, last, 1, bias=False), tnn.BatchNorm2d(last),
                              tnn.ReLU(), tnn.AdaptiveAvgPool2d(1), tnn.Flatten(), tnn.Linear(last, k))

    class Wide(tnn.Module):
        def __init__(self, cin, c, stride):
            super().__init__()
            self.pre = tnn.Sequential(tnn.BatchNorm2d(cin), tnn.ReLU())
            self.body = tnn.Sequential(tnn.Conv2d(cin, c, 3, stride, 1, bias=False), tnn.BatchNorm2d(c),
                                       tnn.ReLU(), tnn.Conv2d(c, c, 3, 1, 1, bias=False))
            self.short = None if cin == c else tnn.Conv2d(cin, c, 1, stride, bias=False)

        def forward(self, x):
            p = self.pre(x)
            return self.body(p) + (x if self.short is None else self.short(p))

    def wrn(ch, k, depth=16, widen=2):
        layers, cin = [tnn.Conv2d(ch, 16, 3, 1, 1, bias=False)], 16
        for g, s in enumerate([1, 2, 2]):
            for b in range((depth - 4) // 6):
                layers.append(Wide(cin, 16 * 2**g * widen, s if b == 0 else 1))
                cin = 16 * 2**g * widen
        return tnn.Sequential(*layers, tnn.BatchNorm2d(cin), tnn.ReLU(), tnn.AdaptiveAvgPool2d(1),
                              tnn.Flatten(), tnn.Linear(cin, k))

    def cbr(cin, c, ks=1, stride=1, groups=1, relu=True):
        return [tnn.Conv2d(cin, c, ks, stride, ks // 2, groups=groups, bias=False), tnn.BatchNorm2d(c)] + (
            [tnn.ReLU()] if relu else [])

    class Shuffle(tnn.Module):
        def __init__(self, cin, c, stride):
            super().__init__()
            self.stride = stride
            if stride == 1:
                h = cin // 2
                self.right = tnn.Sequential(*cbr(h, h), *cbr(h, h, 3, 1, h, False), *cbr(h, h))
            else:
                m = c // 2
                self.left = tnn.Sequential(*cbr(cin, cin, 3, 2, cin, False), *cbr(cin, m))
                self.right = tnn.Sequential(*cbr(cin, m), *cbr(m, m, 3, 2, m, False), *cbr(m, m))

        def forward(self, x):
            if self.stride == 1:
                h = x.shape[1] // 2
                out = torch.cat([x[:, :h], self.right(x[:, h:])], 1)
            else:
                out = torch.cat([self.left(x), self.right(x)], 1)
            n, c, hh, ww = out.shape
            return out.view(n, 2, c // 2, hh, ww).permute(0, 2, 1, 3, 4).reshape(n, c, hh, ww)

    def shufflenetv2(ch, k, chans=(116, 232, 464), head=1024):
        layers, cin = cbr(ch, 24), 24
        for c, n in zip(chans, (3, 7, 3)):
            layers.append(Shuffle(cin, c, 2))
            layers += [Shuffle(c, c, 1) for _ in range(n)]
            cin = c
        return tnn.Sequential(*layers, *cbr(cin, head), tnn.AdaptiveAvgPool2d(1), tnn.Flatten(),
                              tnn.Linear(head, k))

    return torch, {
        "lenet": lambda c, k, s: lenet(c, k), "alexnet": lambda c, k, s: alexnet(c, k),
        "alexnet_bn": lambda c, k, s: alexnet(c, k, True),
        "vgg11": lambda c, k, s: vgg11(c, k), "vgg11_bn": lambda c, k, s: vgg11(c, k, "batch"),
        "resnet18": lambda c, k, s: resnet18(c, k, size=s),
        "resnet18_bn": lambda c, k, s: resnet18(c, k, size=s),
        "resnet18_instance": lambda c, k, s: resnet18(c, k, "instance", size=s),
        "resnet18_ap": lambda c, k, s: resnet18(c, k, ap=True, size=s),
        "resnet18_ap_instance": lambda c, k, s: resnet18(c, k, "instance", True, s),
        "mobilenetv2": lambda c, k, s: mobilenetv2(c, k),
        "mobilenetv2_half": lambda c, k, s: mobilenetv2(c, k, 0.5),
        "wrn_16_2": lambda c, k, s: wrn(c, k), "shufflenetv2": lambda c, k, s: shufflenetv2(c, k),
        "shufflenetv2_0_5": lambda c, k, s: shufflenetv2(c, k, (48, 96, 192)),
    }


@pytest.mark.parametrize("name", sorted(REFERENCE_COUNTS))
def test_torch_redefinitions(name):
    """A PyTorch re-definition of each reference layout has the hard-coded parameter count
    and the output shape at 32x32x3 and (the references' grey case) 28x28x1."""
    torch, builders = _torch_models()
    build = builders[name]
    net = build(3, 10, 32)
    assert sum(p.numel() for p in net.parameters()) == REFERENCE_COUNTS[name]
    with torch.no_grad():
        for c, s in ((3, 32), (1, 28)):
            assert tuple(build(c, 10, s).eval()(torch.zeros(2, c, s, s)).shape) == (2, 10)


# Flattened feature map (H, W, C) of the flatten-head nets: NHWC rows of jaxdd's first
# classifier kernel are reordered to PyTorch's NCHW flattening.
_FLAT = {"lenet": (5, 5, 16), "alexnet_bn": (4, 4, 192), "resnet18_ap": (4, 4, 512)}


@pytest.mark.parametrize("name", ["lenet", "alexnet_bn", "vgg11_bn", "resnet18_instance",
                                  "resnet18_ap", "mobilenetv2_half", "wrn_16_2", "shufflenetv2_0_5"])
def test_same_function_as_the_torch_redefinition(name):
    """jaxdd's weights copied into the PyTorch re-definition (creation order = registration
    order) give the same logits in eval mode, BN statistics included: the block internals
    (pre-activation, inverted residuals, split + channel shuffle, AP pooling) match, not
    just the counts."""
    from flax import traverse_util
    torch, builders = _torch_models()
    net = builders[name](3, 10, 32).eval()
    m = get_model(name, 10, (32, 32, 3))
    v = m.init(jax.random.key(0))
    keys = jax.random.split(jax.random.key(1), 2)
    if "batch_stats" in v:   # non-trivial running statistics (flatten_dict keeps creation order)
        flat = traverse_util.flatten_dict(v["batch_stats"])
        v["batch_stats"] = traverse_util.unflatten_dict(
            {k: a + 0.3 * jax.random.uniform(jax.random.fold_in(keys[0], i), a.shape)
             for i, (k, a) in enumerate(flat.items())})
    ours = [np.asarray(a) for a in traverse_util.flatten_dict(v["params"]).values()]
    stats = [np.asarray(a) for a in traverse_util.flatten_dict(v.get("batch_stats", {})).values()]
    theirs = list(net.parameters())
    bufs = [b for n, b in net.named_buffers() if not n.endswith("num_batches_tracked")]
    assert len(ours) == len(theirs) and len(stats) == len(bufs)
    if name in _FLAT:
        h, w, c = _FLAT[name]
        i = next(i for i, a in enumerate(ours) if a.ndim == 2 and a.shape[0] == h * w * c)
        ours[i] = ours[i].reshape(h, w, c, -1).transpose(2, 0, 1, 3).reshape(h * w * c, -1)
    with torch.no_grad():
        for a, t in zip(ours, theirs):
            a = a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2 else a
            assert tuple(a.shape) == tuple(t.shape)
            t.copy_(torch.from_numpy(np.array(a)))
        for a, t in zip(stats, bufs):   # mean, var per BN layer, in order
            t.copy_(torch.from_numpy(np.array(a)))
        x = np.asarray(jax.random.normal(keys[1], (2, 32, 32, 3)))
        want = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    got = np.asarray(m.apply(v, jnp.asarray(x)))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
