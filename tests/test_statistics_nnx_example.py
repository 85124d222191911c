"""README example: statistics matching on your own flax.nnx model (the README's code block
is executed as it stands, then its result is checked)."""

import os
import re

import jax
import jax.numpy as jnp

from jaxdd.methods.statistics.losses import sre2l_loss
from jaxdd.tree import tree_all_finite

README = os.path.join(os.path.dirname(__file__), "..", "README.md")


def _example() -> str:
    with open(README) as f:
        text = f.read()
    at = text.index("tests/test_statistics_nnx_example.py")
    return re.search(r"```python\n(.*?)```", text[at:], re.DOTALL).group(1)


def test_readme_nnx_example_runs_and_recovers():
    ns: dict = {}
    exec(compile(_example(), "README.md (NNX example)", "exec"), ns)  # noqa: S102 (our README)
    assert len(ns["stats"]) == 1 and ns["logits"].shape == (3, 3)
    assert bool(tree_all_finite((ns["metrics"]["loss"], ns["state"])))
    x0 = ns["distiller"].init(jax.random.key(0), jnp.zeros((3, 8, 8, 3)), ns["y"]).syn.x_syn_NHWC
    before = float(sre2l_loss(x0, ns["y"], ns["net"], None, r_bn=0.01)[0])
    assert float(ns["loss"]) < 0.7 * before, (before, float(ns["loss"]))
