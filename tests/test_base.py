"""The functional core: `skip_nonfinite`, `step_keys`, `check_init` (chex variants: each
runs with and without jit), and the driver's stop after `max_nonfinite` skips in a row."""

import os
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.methods.base import Distiller, SynState, check_init, skip_nonfinite, step_keys
from jaxdd.run import driver


class _State(NamedTuple):
    syn: SynState
    count: jax.Array


def _toy() -> Distiller:
    """x <- x + batch; loss = mean(x): a batch of NaN makes the step non-finite."""
    def init(key, x, y):
        check_init(x, y)
        return _State(SynState(jnp.asarray(x, jnp.float32), jnp.asarray(y), None),
                      jnp.zeros((), jnp.int32))

    def step(state, batch, key):
        x = state.syn.x_syn_NHWC + batch
        return _State(state.syn._replace(x_syn_NHWC=x), state.count + 1), {"loss": x.mean()}

    return Distiller(init, step)


class CoreTest(chex.TestCase):

    @chex.variants(with_jit=True, without_jit=True)
    def test_skip_nonfinite_keeps_the_state_and_reports(self):
        d = skip_nonfinite(_toy())
        s0 = d.init(jax.random.key(0), jnp.zeros((2, 2, 2, 1)), jnp.arange(2))
        step = self.variant(d.step)
        s1, m1 = step(s0, jnp.float32(1.0), jax.random.key(1))
        chex.assert_trees_all_close(s1.syn.x_syn_NHWC, jnp.ones((2, 2, 2, 1)))
        assert int(m1["nonfinite"]) == 0 and int(s1.count) == 1
        s2, m2 = step(s1, jnp.float32(jnp.nan), jax.random.key(2))
        assert int(m2["nonfinite"]) == 1
        chex.assert_trees_all_equal(s2, s1)  # every leaf kept, the counter included

    @chex.variants(with_jit=True, without_jit=True)
    def test_step_keys_is_the_drivers_schedule(self):
        key = jax.random.key(7)
        kb, ks = self.variant(step_keys)(key, 3)
        ref_b, ref_s = jax.random.split(jax.random.fold_in(key, 3))
        np.testing.assert_array_equal(jax.random.key_data(kb), jax.random.key_data(ref_b))
        np.testing.assert_array_equal(jax.random.key_data(ks), jax.random.key_data(ref_s))

    @chex.variants(with_jit=True, without_jit=True)
    def test_check_init_refuses_bad_shapes(self):
        init = self.variant(_toy().init)
        with pytest.raises(AssertionError):
            init(jax.random.key(0), jnp.zeros((2, 2, 2)), jnp.arange(2))      # not NHWC
        with pytest.raises(AssertionError):
            init(jax.random.key(0), jnp.zeros((2, 2, 2, 1)), jnp.arange(3))   # 3 labels, 2 images


def test_driver_stops_after_max_nonfinite_with_checkpoints_intact(tmp_path):
    d = _toy()
    state = d.init(jax.random.key(0), jnp.zeros((2, 2, 2, 1)), jnp.arange(2))

    def batch_fn(consts, key, t):  # NaN from iteration 5 on
        return jnp.where(t >= 5, jnp.nan, 1.0).astype(jnp.float32)

    run_dir = str(tmp_path / "run")
    with pytest.raises(driver.NonFiniteError, match="3 non-finite steps in a row, the last at "
                                                     "iteration 7"):
        driver.run(d, state, batch_fn, jax.random.key(1), 20, run_dir=run_dir, ckpt_every=2,
                   max_nonfinite=3, config={"toy": 1})
    steps = sorted(int(s) for s in os.listdir(os.path.join(run_dir, "checkpoints")))
    assert steps == [2, 4, 6]  # 6 was checked (skipped step: state of iteration 4) before saving
    state = d.init(jax.random.key(0), jnp.zeros((2, 2, 2, 1)), jnp.arange(2))  # (donated)
    restored, _ = driver.run(d, state, lambda c, k, t: jnp.float32(1.0), jax.random.key(1), 8,
                                run_dir=run_dir, ckpt_every=2, config={"toy": 1})
    # Resumed from 6 (= the state after 4 good steps) and ran 7, 8: 6 increments in all.
    chex.assert_trees_all_close(restored.syn.x_syn_NHWC, jnp.full((2, 2, 2, 1), 6.0))
