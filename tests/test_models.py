import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.models import embed, get_model, param_count


@pytest.mark.parametrize("name,k,shape,count", [
    ("convnet", 10, (32, 32, 3), 320_010),        # ConvNet-D3 CIFAR-10
    ("convnet", 100, (32, 32, 3), 504_420),       # ConvNet-D3 CIFAR-100
    ("convnet_d4", 200, (64, 64, 3), 857_160),    # ConvNet-D4 Tiny-ImageNet
    ("resnet18", 10, (32, 32, 3), 11_173_962),    # ResNet-18, CIFAR stem
])
def test_param_counts_match_references(name, k, shape, count):
    assert param_count(name, k, shape) == count


def test_im2col_conv_equals_lax_conv():
    x = jax.random.normal(jax.random.key(0), (2, 28, 28, 1))
    a = get_model("convnet_d3_w8", 10, (28, 28, 1), conv_impl="im2col")
    b = get_model("convnet_d3_w8", 10, (28, 28, 1), conv_impl="lax")
    v = a.init(jax.random.key(1))
    np.testing.assert_allclose(a.apply(v, x), b.apply(v, x), rtol=1e-5, atol=1e-5)
    ga = jax.grad(lambda x: a.apply(v, x).sum())(x)
    gb = jax.grad(lambda x: b.apply(v, x).sum())(x)
    np.testing.assert_allclose(ga, gb, rtol=1e-4, atol=1e-5)


# (kernel, stride, padding, groups): the ResNets' and the zoo's convolutions and odd cases
LOOP_SAFE_CASES = [(3, 1, [(1, 1), (1, 1)], 1), (3, 2, [(1, 1), (1, 1)], 1), (1, 2, [(0, 0)] * 2, 1),
                   (7, 2, [(3, 3), (3, 3)], 1), (3, 1, [(1, 1), (1, 1)], 6), (3, 2, [(1, 1)] * 2, 2),
                   (5, 3, [(2, 1), (0, 2)], 1), (3, 1, "SAME", 1), (3, 2, "VALID", 1),
                   (2, 2, [(0, 1), (1, 0)], 1)]


@pytest.mark.parametrize("forward,block_bytes", [("patches", None), ("patches", 1),
                                                 ("patches", 100_000), ("lax", 1)])
@pytest.mark.parametrize("k,stride,pad,groups", LOOP_SAFE_CASES)
def test_loop_safe_conv_is_lax_conv_to_second_order(k, stride, pad, groups, forward, block_bytes,
                                                     monkeypatch):
    """The hand-written convolution (forward as patches @ kernel, dx as that forward conv of
    the dilated output gradient, dw as patches @ dy per group, each over blocks of images)
    == lax.conv's, in float64: values, both first derivatives, and a second derivative (the
    gradient of an input-gradient norm w.r.t. the kernel), also when the conv is the body
    of a scan (where XLA:CPU's own kernel gradient is slow). block_bytes: the whole batch
    of 4 images in one block (None), one image per block (1), blocks of 2 images for most
    cases (100,000 bytes: 38,880 bytes of float64 patches per image for a 3x3 kernel).
    forward: how forwards and input gradients are computed (`_FORWARD_IMPL`, chosen by the
    CPU: both are tested on every machine); kernel gradients are patches either way."""
    from jax import lax

    from jaxdd.models import layers
    from jaxdd.models.layers import loop_safe_conv
    monkeypatch.setattr(layers, "_FORWARD_IMPL", forward)
    if block_bytes is not None:
        monkeypatch.setattr(layers, "_BLOCK_BYTES", block_bytes)
    dn = lax.conv_dimension_numbers((1, 1, 1, 1), (1, 1, 1, 1), ("NHWC", "HWIO", "NHWC"))
    kx, kw, kd = jax.random.split(jax.random.key(k * 10 + stride), 3)
    with jax.enable_x64(True):
        x = jax.random.normal(kx, (4, 9, 10, 6), jnp.float64)
        w = jax.random.normal(kw, (k, k, 6 // groups, 12), jnp.float64)
        ref = lambda x, w: lax.conv_general_dilated(x, w, (stride, stride), pad, dimension_numbers=dn,
                                                    feature_group_count=groups)
        new = lambda x, w: loop_safe_conv(x, w, (stride, stride), pad, dimension_numbers=dn,
                                          feature_group_count=groups)
        dy = jax.random.normal(kd, ref(x, w).shape, jnp.float64)
        second = lambda f: jax.grad(lambda w: (jax.grad(lambda x: (f(x, w) * dy).sum())(x) ** 2).sum())(w)
        in_scan = lambda f: jax.lax.scan(lambda c, _: (c, jax.vjp(f, x, w)[1](dy)), 0, None, length=2)[1]
        for a, b in [(ref(x, w), new(x, w)), (jax.vjp(ref, x, w)[1](dy), jax.vjp(new, x, w)[1](dy)),
                     (second(ref), second(new)), (in_scan(ref), jax.jit(lambda: in_scan(new))())]:
            jax.tree.map(lambda p, q: np.testing.assert_allclose(q, p, rtol=1e-12, atol=1e-12), a, b)


def test_cpu_conv_forward_follows_the_cpu_and_the_environment(monkeypatch):
    """`_default_forward_impl`: $JAXDD_CPU_CONV_FORWARD wins; a bad value is refused by name;
    unset, "lax" exactly when the CPU's flags hold avx512f; `cpu_flags` reads this machine's."""
    from jaxdd.models import layers
    for v in ("lax", "patches"):
        monkeypatch.setenv("JAXDD_CPU_CONV_FORWARD", v)
        assert layers._default_forward_impl() == v
    monkeypatch.setenv("JAXDD_CPU_CONV_FORWARD", "oneDNN")
    with pytest.raises(ValueError, match="JAXDD_CPU_CONV_FORWARD"):
        layers._default_forward_impl()
    monkeypatch.delenv("JAXDD_CPU_CONV_FORWARD")
    for flags, impl in [({"fma", "avx2", "avx512f"}, "lax"), ({"fma", "avx2", "avx512fp16"}, "patches"),
                        (set(), "patches")]:
        monkeypatch.setattr(layers, "cpu_flags", lambda: frozenset(flags))
        assert layers._default_forward_impl() == impl
    monkeypatch.undo()
    if platform.system() == "Linux" and platform.machine() == "x86_64":
        assert {"fpu", "sse2"} <= layers.cpu_flags()


def test_resnet_and_zoo_convs_are_loop_safe():
    """Every 4-D kernel of the ResNets and the zoo is applied through loop_safe_conv's
    custom gradient (a training loop of them is otherwise ~80x slower on XLA:CPU)."""
    for name, shape in [("resnet18", (16, 16, 3)), ("mobilenetv2", (32, 32, 3)), ("lenet", (28, 28, 1))]:
        m = get_model(name, 10, shape)
        v = m.init(jax.random.key(0))
        kernels = [a for a in jax.tree.leaves(v["params"]) if a.ndim == 4]
        jaxpr = str(jax.make_jaxpr(lambda v: m.apply(v, jnp.zeros((1,) + shape)))(v))
        assert kernels and jaxpr.count("custom_vjp_call") == len(kernels), name


@pytest.mark.parametrize("name,shape", [("convnet_d3_w8", (28, 28, 1)), ("convnet_d3_w6", (32, 32, 3)),
                                        ("convnet_d2_w4_none", (9, 9, 2))])
def test_channel_major_convnet_is_the_same_function_to_second_order(name, shape):
    """im2col_cm (the default for instance/no-norm ConvNets) == NHWC im2col: same parameter tree,
    same logits, same second-order gradient (what MTT differentiates), odd sizes included."""
    a = get_model(name, 10, shape, conv_impl="im2col")
    b = get_model(name, 10, shape, conv_impl="im2col_cm")
    assert get_model(name, 10, shape).module.conv_impl == "im2col_cm"
    assert get_model("convnet_d3_w8_bn", 10, shape).module.conv_impl == "im2col"
    v = a.init(jax.random.key(1))
    assert jax.tree.structure(v) == jax.tree.structure(b.init(jax.random.key(1)))
    x = jax.random.normal(jax.random.key(0), (3,) + shape)
    np.testing.assert_allclose(a.apply(v, x), b.apply(v, x), rtol=1e-5, atol=1e-5)

    def second_order(m):
        inner = lambda x: jax.grad(lambda p: jnp.sum(m.apply(p, x) ** 2))(v)  # noqa: E731
        return jax.grad(lambda x: sum(jnp.sum(g ** 2) for g in jax.tree.leaves(inner(x))))(x)

    ga, gb = second_order(a), second_order(b)
    np.testing.assert_allclose(gb, ga, rtol=1e-4, atol=1e-5 * float(jnp.abs(ga).max()))


@pytest.mark.parametrize("name", ["convnet_d3_w8", "convnet_d3_w8_bn", "resnet18"])
def test_forward_only_is_the_same_network(name):
    """`Model.forward_only()` (lax.conv ConvNets on XLA:CPU, for branches never differentiated):
    same variables, same logits and train-mode outputs; models without a faster layout are
    returned as they are."""
    m = get_model(name, 10, (28, 28, 1))
    f = m.forward_only()
    if name.startswith("resnet"):
        assert f is m
        return
    assert f.module.conv_impl == "lax" and m.module.conv_impl != "lax"
    assert f.forward_only() is f
    v = m.init(jax.random.key(1))
    assert jax.tree.structure(v) == jax.tree.structure(f.init(jax.random.key(1)))
    x = jax.random.normal(jax.random.key(0), (4, 28, 28, 1))
    np.testing.assert_allclose(f.apply(v, x), m.apply(v, x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(f.apply_train(v, x)[0], m.apply_train(v, x)[0], rtol=1e-5,
                               atol=1e-5)


def test_grey_28px_padded_to_32_and_torch_init():
    m = get_model("convnet", 10, (28, 28, 1))
    v = m.init(jax.random.key(0))
    # 28 px + first-layer pad 3 -> 32 -> 16 -> 8 -> 4: the linear layer sees 4*4*128.
    dense = v["params"]["TorchDense_0"]["Dense_0"]["kernel"]
    assert dense.shape == (2048, 10)
    # PyTorch default init: U(+-1/sqrt(fan_in)), for weights and biases.
    k0 = v["params"]["Conv3x3_0"]["kernel"]
    assert float(jnp.abs(k0).max()) <= 1 / 3 + 1e-6 and float(k0.std()) > 0.1
    assert m.apply(v, jnp.zeros((3, 28, 28, 1))).shape == (3, 10)


def test_bn_models_train_mode_updates_statistics():
    m = get_model("convnet_d2_w8_bn", 4, (8, 8, 3))
    v = m.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (5, 8, 8, 3)) * 3 + 1
    logits, v2 = m.apply_train(v, x)
    assert logits.shape == (5, 4) and m.has_batch_stats
    changed = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), v["batch_stats"], v2["batch_stats"])
    assert max(jax.tree.leaves(changed)) > 0


def test_embed_is_penultimate_features():
    m = get_model("mlp_w16", 3, (4, 4, 1))
    v = m.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, 4, 4, 1))
    e = embed(m, v, x)
    last = v["params"]["TorchDense_2"]["Dense_0"]
    np.testing.assert_allclose(e @ last["kernel"] + last["bias"][None], m.apply(v, x), rtol=1e-5, atol=1e-6)


def test_unknown_model_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown model 'vgg99'"):
        get_model("vgg99", 10, (32, 32, 3))


def test_chunked_apply_is_the_same_function_in_the_mtt_gradient():
    """`chunked` (how the MTT student runs on CPU) changes the schedule, not the math: loss
    and exact trajectory-matching gradients agree with the whole-batch forward, uneven chunks
    included; auto chunks only per-image ConvNets on one CPU device."""
    from jaxdd.methods.tm_grad import make_inner_schedule, matching_loss_and_grads
    from jaxdd.models import auto_chunks, chunked

    m = get_model("convnet_d2_w4", 3, (8, 8, 1))
    v = m.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (7, 8, 8, 1))
    y = jnp.arange(7) % 3
    theta_t = jax.tree.map(lambda p: p + 0.05, v["params"])
    idx, keys = make_inner_schedule(jax.random.key(2), 7, 3, None)
    log_lr = jnp.log(jnp.asarray(0.05))
    apply_fn = lambda p, x: m.apply({"params": p}, x)  # noqa: E731

    def grads(fn):
        loss, g = matching_loss_and_grads("bptt", fn, x, y, log_lr, v["params"], theta_t, idx, keys, unroll=True)
        return loss, g.x_syn_NHWC, g.log_lr

    ref = grads(apply_fn)
    for k in (2, 3, 100):   # 4 + 3, 3 + 3 + 1, one image each
        for a, b in zip(grads(chunked(apply_fn, k)), ref):
            np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-7 * float(jnp.abs(b).max()))
    assert chunked(apply_fn, 1) is apply_fn
    with pytest.raises(ValueError, match="num_chunks"):
        chunked(apply_fn, 0)

    assert auto_chunks(get_model("convnet_d3_w8_bn", 10, (28, 28, 1)), 100) == 1
    assert auto_chunks(get_model("convnet_d3_w32", 10, (28, 28, 1)), 1) == 1
    w32, w128 = (auto_chunks(get_model(f"convnet_d3_w{w}", 10, (28, 28, 1)), 100) for w in (32, 128))
    if jax.device_count() == 1 and jax.default_backend() == "cpu" and (os.cpu_count() or 1) >= 2:
        assert (w32, w128) == (2, 8)
        assert auto_chunks(get_model("convnet_d3_w128", 10, (28, 28, 1)), 100, max_chunks=4) == 4
    else:
        assert w32 == w128 == 1
