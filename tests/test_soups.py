"""Model soups (jaxdd.evaluate.soups): uniform and greedy weight averaging of the students."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdd.evaluate import soups
from jaxdd.models import get_model


def _stack(vs):
    return jax.tree.map(lambda *a: jnp.stack(a), *vs)


def test_soup_of_identical_students_is_that_student_exactly():
    for name in ("convnet_d2_w4", "convnet_d2_w4_bn"):   # BN: statistics averaged too
        m = get_model(name, 3, (8, 8, 1))
        one = m.init(jax.random.key(3))
        if "batch_stats" in one:   # non-trivial statistics
            one["batch_stats"] = jax.tree.map(lambda a: a + 0.37, one["batch_stats"])
        stacked = _stack([one] * 3)
        for soup in (soups.uniform_soup(stacked), soups.soup_of(stacked, [2, 0])):
            for a, b in zip(jax.tree.leaves(soup), jax.tree.leaves(one)):
                np.testing.assert_array_equal(a, b)


def test_uniform_soup_is_the_mean():
    m = get_model("mlp_w16", 3, (8, 8, 1))
    vs = [m.init(jax.random.key(i)) for i in range(4)]
    soup = soups.uniform_soup(_stack(vs))
    for a, *b in zip(jax.tree.leaves(soup), *map(jax.tree.leaves, vs)):
        np.testing.assert_allclose(a, np.mean(b, 0), rtol=1e-6, atol=1e-7)


def test_greedy_never_below_its_first_member():
    """Students ordered by val accuracy; each candidate joins only when the soup's val
    accuracy does not drop; a toy val accuracy (distance of a scalar 'weight' to 1) makes
    the accept/reject decisions checkable by hand."""
    w = jnp.array([0.875, 3.0, 1.25, 0.75, -5.0])  # student k's weight (exact in f32)
    stacked = {"params": {"w": w}}
    val_fn = lambda v: float(1.0 - abs(float(v["params"]["w"]) - 1.0) / 10)  # noqa: E731
    val_S = np.array([val_fn({"params": {"w": x}}) for x in w])
    soup, members, best = soups.greedy_soup(stacked, val_S, val_fn)
    assert members[0] == int(np.argmax(val_S)) == 0
    assert best >= val_S.max() and val_fn(soup) == best
    # order 0 (val 0.9875), 2 and 3 (0.975, tie: seed order), 1, 4: 0.875 -> +1.25 (mean
    # 1.0625, val 0.99375) -> +0.75 (mean 0.958, val 0.9958) -> 3.0 (mean 1.47: lower, no)
    assert members == [0, 2, 3]
    np.testing.assert_allclose(float(soup["params"]["w"]), np.mean(np.asarray(w)[members]),
                               rtol=1e-6)
    with pytest.raises(ValueError, match="unknown soup 'mean'"):
        soups.check_soup("mean")


def test_cli_evaluate_soup_on_tiny_artefact(tiny_npz, tmp_path, capsys):
    from jaxdd.cli import main
    from conftest import snapshot
    art = str(tmp_path / "rand")
    assert main(["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "4", "--out",
                 art, "--quiet"]) == 0
    capsys.readouterr()
    before = snapshot(art)
    assert main(["evaluate", art, "--soup", "greedy", "--models", "mlp_w16", "--quiet"]) == 2
    assert "drop --models" in capsys.readouterr().err and snapshot(art) == before
    argv = ["evaluate", art, "--protocol", "smoke", "--seeds", "3", "--epochs", "5", "--quiet"]
    for kind in ("uniform", "greedy"):
        assert main([*argv, "--soup", kind, "--json"]) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        s = res["soup"]
        assert s["kind"] == kind and 0 <= s["accuracy"] <= 1 and res["init"] == "shared"
        assert len(res["accuracies"]) == 3
        if kind == "uniform":
            assert s["members"] == [0, 1, 2]
        else:
            assert 1 <= len(s["members"]) <= 3
    assert main([*argv, "--soup", "uniform"]) == 0
    assert "uniform soup of 3/3 students" in capsys.readouterr().out
    assert len(json.load(open(os.path.join(art, "evaluations.json")))) == 3
