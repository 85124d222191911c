"""FRePo end to end: real data on device -> the FRePo Distiller through the driver -> artefact.

The real batch (FRePo: `batch_real` images drawn uniformly, with their classes) is drawn
inside the jitted step from the preprocessed training set, which the driver keeps on
device, so the whole iteration is one compiled function.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxdd import data as jdata
from jaxdd.methods.frepo import FRePoBatch, FRePoConfig, make_frepo
from jaxdd.models import get_model
from jaxdd.pipelines.common import Context, Prepared, init_state, run_prepared
from jaxdd.pipelines.spec import Method


def sample_uniform_batch(key: jax.Array, data: tuple[jax.Array, jax.Array],
                         batch_real: int) -> FRePoBatch:
    """`batch_real` training images without replacement, uniformly over the whole set."""
    x_train, y_train = data
    n = x_train.shape[0]
    if batch_real > n:
        raise ValueError(f"frepo.batch_real={batch_real} exceeds the {n} training images")
    idx = jax.random.choice(key, n, (batch_real,), replace=False)
    return FRePoBatch(x_train[idx], y_train[idx])


def prepare(ctx: Context) -> Prepared:
    cfg = ctx.cfg
    mcfg = METHODS[0].section_config(cfg)
    model = get_model(cfg["model"], ctx.ds.num_classes, ctx.ds.image_shape)
    distiller = make_frepo(mcfg, model, ctx.ds.num_classes, cfg["iterations"])
    x_train = jdata.apply(ctx.pre, ctx.ds.x_train)  # host numpy; the driver places it
    y_train = jnp.asarray(ctx.ds.y_train, jnp.int32)
    state = init_state(ctx, distiller, mcfg.init)

    def batch_fn(real, key, t):
        return sample_uniform_batch(key, real, mcfg.batch_real)

    def export(state):
        y = state.y_class if mcfg.export_labels == "class" else state.syn.y_syn
        return {"artefact": (state.syn.x_syn_NHWC, y, None)}

    return Prepared(distiller, state, batch_fn, (x_train, y_train), export)


METHODS = [
    Method("frepo", "kernel", FRePoConfig, run_prepared(prepare),
           doc="neural feature regression with a pool of online models (Zhou et al. 2022)"),
]
