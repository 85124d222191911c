"""Dataset Quantization (jaxdd.evaluate.baselines.dq_bins / dq): bins and sampling."""

import jax
import numpy as np
import pytest

from jaxdd.evaluate.baselines import dq, dq_bins


def _feats(n=37, d=5, seed=0):
    return np.random.default_rng(seed).normal(size=(n, d))


@pytest.mark.parametrize("n,bins", [(37, 5), (10, 10), (12, 1), (40, 3)])
def test_bins_partition_the_data_and_are_deterministic(n, bins):
    f = _feats(n)
    out = dq_bins(f, bins)
    assert len(out) == bins
    allidx = np.concatenate(out)
    np.testing.assert_array_equal(np.sort(allidx), np.arange(n))   # disjoint and covering
    sizes = [len(b) for b in out]
    assert max(sizes) - min(sizes) <= 1
    for a, b in zip(out, dq_bins(f, bins)):
        np.testing.assert_array_equal(a, b)


def test_graphcut_gain_rule():
    """First pick: the point most similar to all (largest column sum); next: high column sum
    but unlike the bin's points (the -2 sum_S term)."""
    f = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.7, 0.7]])
    s = f / np.linalg.norm(f, axis=1, keepdims=True)
    sim = s @ s.T
    first = int(np.argmax(sim.sum(0)))
    b0 = dq_bins(f, 2)[0]
    assert b0[0] == first == 3
    gain = sim.sum(0) - 2 * sim[first]
    gain[first] = -np.inf
    assert b0[1] == int(np.argmax(gain))


def test_dq_samples_evenly_from_every_bin_deterministically():
    f = _feats(50)
    key = jax.random.key(4)
    pick = dq(f, 7, key, num_bins=5)
    assert len(set(pick.tolist())) == 7
    bins = dq_bins(f, 5)
    counts = sorted(int(np.isin(pick, b).sum()) for b in bins)
    assert counts == [1, 1, 1, 2, 2]
    np.testing.assert_array_equal(pick, dq(f, 7, key, num_bins=5))
    assert not np.array_equal(pick, dq(f, 7, jax.random.key(5), num_bins=5))
    assert len(dq(f, 3, key, num_bins=10)) == 3      # IPC < bins: 3 bins, one each
    with pytest.raises(ValueError, match="bins"):
        dq_bins(f, 0)


def test_cli_baseline_dq(tiny_npz, tmp_path, capsys):
    from jaxdd import artefact
    from jaxdd.cli import main
    out = str(tmp_path / "dq")
    assert main(["baseline", "dq", "--dataset", f"npz:{tiny_npz}", "--ipc", "3", "--bins", "4",
                 "--out", out, "--quiet", "--json"]) == 0
    capsys.readouterr()
    art = artefact.load(out)
    assert art.x_syn_NHWC.shape == (9, 8, 8, 1) and art.meta["method"] == "dq"
    assert (np.bincount(np.asarray(art.y_syn)) == 3).all()
    assert art.meta["config"]["bins"] == 4
    assert main(["baseline", "herding", "--dataset", f"npz:{tiny_npz}", "--ipc", "3",
                 "--bins", "4", "--out", str(tmp_path / "h"), "--quiet"]) == 2
    assert "--bins applies to dq only" in capsys.readouterr().err
    assert not (tmp_path / "h").exists()
