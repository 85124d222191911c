"""README example: SRe2L statistics matching on your own Flax model with BatchNorm."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdd.methods.statistics.losses import sre2l_loss
from jaxdd.methods.statistics.recover import RecoverConfig, make_recover


class MyNet(nn.Module):  # any Linen model whose norm layers are nn.BatchNorm
    @nn.compact
    def __call__(self, x_NHWC, train: bool = False):
        h = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Conv(8, (3, 3))(x_NHWC)))
        return nn.Dense(3)(h.mean((1, 2)))


def test_statistics_matching_loss_decreases():
    net, key = MyNet(), jax.random.key(0)
    x_real = jax.random.normal(key, (32, 8, 8, 3)) * 2 + 1
    y_real = jnp.arange(32) % 3
    v = net.init(key, x_real)
    tx = optax.sgd(0.1)
    opt = tx.init(v["params"])
    @jax.jit
    def squeeze_step(v, opt):  # a few train-mode steps give BN running statistics
        def ce(p):
            logits, upd = net.apply({**v, "params": p}, x_real, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y_real).mean(), upd
        g, upd = jax.grad(ce, has_aux=True)(v["params"])
        updates, opt = tx.update(g, opt)
        return {"params": optax.apply_updates(v["params"], updates), **upd}, opt
    for _ in range(5):
        v, opt = squeeze_step(v, opt)

    y = jnp.arange(3)  # "recover": one image per class, teacher frozen in inference mode
    loss_at = jax.jit(lambda x: sre2l_loss(x, y, net, v, r_bn=0.01)[0])  # CE + BN statistics
    distiller = make_recover(RecoverConfig(lr=0.25, iterations=30), net, v)
    state = distiller.init(key, jnp.zeros((3, 8, 8, 3)), y)  # N(0, 1) noise init
    step = jax.jit(distiller.step)
    before = float(loss_at(state.syn.x_syn_NHWC))
    for it in range(30):
        state, metrics = step(state, None, jax.random.key(it))
    after = float(loss_at(state.syn.x_syn_NHWC))
    assert after < 0.7 * before, (before, after)
