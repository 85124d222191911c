"""README example: trajectory matching on your own Flax model with the functional API."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdd.methods.mtt import ExpertSegment, MTTConfig, make_mtt


class TinyNet(nn.Module):  # any pure apply(params, x_NHWC) -> logits works
    @nn.compact
    def __call__(self, x_NHWC):
        h = nn.relu(nn.Conv(4, (3, 3))(x_NHWC))
        return nn.Dense(2)(h.reshape(h.shape[0], -1))


def test_matching_loss_decreases():
    net, key = TinyNet(), jax.random.PRNGKey(0)
    x_real = jax.random.normal(key, (64, 8, 8, 1))
    y_real = (x_real[:, :4].mean((1, 2, 3)) > x_real[:, 4:].mean((1, 2, 3))).astype(jnp.int32)
    # Expert trajectory: a checkpoint after each "epoch" (here 5 full-batch SGD steps).
    ce = lambda p: optax.softmax_cross_entropy_with_integer_labels(net.apply(p, x_real), y_real).mean()
    sgd_step = lambda _, p: jax.tree.map(lambda w, g: w - 0.1 * g, p, jax.grad(ce)(p))
    trajectory = [net.init(key, x_real)]
    for _ in range(3):
        trajectory.append(jax.lax.fori_loop(0, 5, sgd_step, trajectory[-1]))

    config = MTTConfig(syn_steps=10, expert_epochs=2, max_start=1, lr_img=30.0, lr_init=0.1)
    distiller = make_mtt(config, net.apply)  # grad_mode="remat": exact gradient, O(N |theta|) memory
    x_init = jnp.concatenate([x_real[y_real == c][:2] for c in (0, 1)])  # 2 real images per class
    state = distiller.init(key, x_init, jnp.array([0, 0, 1, 1]))
    step = jax.jit(distiller.step)
    segment = ExpertSegment(theta_0=trajectory[0], theta_target=trajectory[2])  # the driver samples these
    losses = []
    for it in range(20):
        state, metrics = step(state, segment, jax.random.PRNGKey(it))
        losses.append(float(metrics["loss"]))
    assert losses[-1] < 0.5 * losses[0], losses  # measured: 1.89 -> 0.20
