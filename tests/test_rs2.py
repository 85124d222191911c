"""RS2 (jaxdd.evaluate.rs2): the index schedule and the CLI run against full data."""

import json

import jax
import numpy as np
import pytest

from jaxdd.evaluate.rs2 import round_size, rs2_schedule, time_to_accuracy


@pytest.mark.parametrize("n,ratio", [(100, 0.25), (60, 0.1), (30, 1.0)])
def test_rs2_visits_every_example_once_per_1_over_r_epochs(n, ratio):
    m = round_size(n, ratio)
    per_pass = n // m                                   # = 1/r epochs
    sched = rs2_schedule(jax.random.key(0), n, m, 3 * per_pass)
    assert sched.shape == (3 * per_pass, m)
    for p in range(3):
        block = sched[p * per_pass:(p + 1) * per_pass].ravel()
        np.testing.assert_array_equal(np.sort(block), np.arange(n))   # each exactly once
    assert not np.array_equal(sched[:per_pass], sched[per_pass:2 * per_pass])  # fresh order
    np.testing.assert_array_equal(sched, rs2_schedule(jax.random.key(0), n, m, 3 * per_pass))
    assert not np.array_equal(sched, rs2_schedule(jax.random.key(1), n, m, 3 * per_pass))


def test_rs2_stream_without_replacement_when_m_does_not_divide_n():
    sched = rs2_schedule(jax.random.key(2), 10, 3, 7).ravel()   # 21 draws: passes of 10
    for p in range(2):
        np.testing.assert_array_equal(np.sort(sched[10 * p:10 * (p + 1)]), np.arange(10))
    with pytest.raises(ValueError, match="ratio must lie in"):
        round_size(10, 1.5)
    with pytest.raises(ValueError, match="less than one image"):
        round_size(10, 0.01)


def test_time_to_accuracy():
    curve = [{"epoch": e, "steps": 10 * e, "seconds": 1.0 * e, "accuracy_mean": a}
             for e, a in ((1, 0.3), (2, 0.6), (3, 0.5))]
    assert time_to_accuracy(curve, 0.55) == {"steps": 20, "seconds": 2.0, "epoch": 2}
    assert time_to_accuracy(curve, 0.9)["steps"] is None


def test_cli_rs2_tiny(tiny_npz, tmp_path, capsys):
    from jaxdd.cli import main
    out = tmp_path / "rs2.json"
    argv = ["rs2", "--dataset", f"npz:{tiny_npz}", "--ratio", "0.25", "--protocol", "smoke",
            "--epochs", "8", "--seeds", "2", "--quiet"]
    assert main([*argv, "--json", "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    rs2, full = res["rs2"], res["full"]
    # smoke's full recipe, batch 256: a round (~68 images) is one step, a full epoch
    # (~270 images) two; so 4 full epochs make RS2's 8 steps
    n = full["examples_per_epoch"]
    assert rs2["examples_per_epoch"] == round(0.25 * n) and 256 < n <= 512
    assert rs2["epochs"] == 8 and full["epochs"] == 4 and rs2["steps"] == full["steps"] == 8
    assert len(rs2["accuracies"]) == 2 and rs2["curve"][-1]["epoch"] == 8
    assert json.loads(out.read_text())["ratio"] == 0.25
    before = out.read_text()
    assert main([*argv, "--out", str(out)]) == 2          # exists: refused, untouched
    assert "exists" in capsys.readouterr().err and out.read_text() == before
    assert main([*argv[:4], "0"]) == 2
    assert "(0, 1]" in capsys.readouterr().err
