"""`jaxdd score`: DD-Ranking-style figures through the CLI on a tiny artefact and protocol.

Checks that score.json's figures follow from its own accuracies by the formulas (per seed,
then mean / std), that with and without augmentation really differ in the protocol, that
the full-data accuracy is cached and reused (or taken from --full-acc), and that nothing
but score.json is written in the artefact.
"""

import json
import math

import numpy as np
import pytest
from conftest import snapshot
from test_cli_faults import _fails

from jaxdd import artefact
from jaxdd import data as jdata
from jaxdd.cli import main
from jaxdd.evaluate import score

TINY = ["--protocol", "cpu", "--epochs", "2", "--model", "mlp_w32", "--seeds", "2",
        "--full-epochs", "1", "--quiet", "--json"]


def _norm(a):
    return (math.exp(a) - math.exp(-1)) / (math.e - math.exp(-1))


def _check_figures(rec, full):
    acc = {k: np.asarray(v["per_seed"]) for k, v in rec["accuracy"].items()}
    f = {k: np.asarray(v["per_seed"]) for k, v in rec["figures"].items()}
    syn = "syn_soft" if rec["label_kind"] == "soft" else "syn_hard"
    np.testing.assert_allclose(f["hlr"], full - acc["syn_hard_aug"], atol=1e-12)
    np.testing.assert_allclose(f["hlr_noaug"], full - acc["syn_hard_noaug"], atol=1e-12)
    np.testing.assert_allclose(f["ior"], acc[f"{syn}_aug"] - acc["rand_aug"], atol=1e-12)
    np.testing.assert_allclose(f["ior_noaug"], acc[f"{syn}_noaug"] - acc["rand_noaug"],
                               atol=1e-12)
    w, g = rec["weights"]["lrs_w"], rec["weights"]["ars_g"]
    np.testing.assert_allclose(f["lrs"], [_norm(w * i - (1 - w) * h) for i, h in
                                          zip(f["ior"], f["hlr"])], atol=1e-12)
    np.testing.assert_allclose(f["ars"], [_norm(g * a + (1 - g) * b) for a, b in
                                          zip(f["ior"], f["ior_noaug"])], atol=1e-12)
    for k, v in rec["figures"].items():
        assert v["mean"] == pytest.approx(np.mean(f[k]), abs=1e-12)
        assert v["std"] == pytest.approx(np.std(f[k]), abs=1e-12)
        assert len(v["per_seed"]) == rec["seeds"] == 2
    for k, v in rec["accuracy"].items():  # the augmentation switch reached the protocol
        assert (v["augment"] is None) == k.endswith("_noaug"), (k, v["augment"])
        assert v["mean"] == pytest.approx(np.mean(v["per_seed"]))


def test_score_soft_label_set(tiny_npz, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXDD_FULL_CACHE", str(tmp_path / "cache"))
    ds = jdata.load_dataset(f"npz:{tiny_npz}")
    pre = jdata.fit_preprocess("normalize", ds.x_train)
    rng = np.random.default_rng(0)
    art = tmp_path / "soft"
    artefact.save(str(art), jdata.apply(pre, ds.x_train[:6]),
                  rng.normal(size=(6, 3)).astype(np.float32), preprocess=pre, method="test",
                  dataset=f"npz:{tiny_npz}", num_classes=3, ipc=2, seed=0, lr=0.02)
    before = snapshot(art)
    capsys.readouterr()
    assert main(["score", str(art), *TINY]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["label_kind"] == "soft" and rec["full"]["source"] == "computed"
    assert set(rec["accuracy"]) == {f"{s}_{a}" for s in ("syn_hard", "syn_soft", "rand")
                                    for a in ("aug", "noaug")}
    _check_figures(rec, rec["full"]["accuracy_mean"])
    after = snapshot(art)
    assert json.loads(after.pop("score.json")) == rec
    assert after == before  # nothing else in the artefact touched (no evaluations appended)
    # a second score reuses the cached full-data result and gives the same figures
    assert main(["score", str(art), *TINY]) == 0
    rec2 = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec2["full"]["source"] == "cache"
    assert rec2["figures"] == rec["figures"]


def test_score_hard_label_set_with_given_full_acc(tiny_npz, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("JAXDD_FULL_CACHE", str(tmp_path / "cache"))
    art = tmp_path / "hard"
    assert main(["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2",
                 "--out", str(art), "--seed", "5", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["score", str(art), *TINY, "--full-acc", "0.9", "--lrs-weight", "0.3"]) == 0
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rec["label_kind"] == "hard" and rec["full"]["accuracy_mean"] == 0.9
    assert "syn_soft_aug" not in rec["accuracy"] and rec["weights"]["lrs_w"] == 0.3
    _check_figures(rec, 0.9)
    assert not (tmp_path / "cache").exists()  # nothing trained on the full data
    # the hard-label formula reads the hard-label accuracies
    assert score.figures({"syn_hard_aug": [0.5], "syn_hard_noaug": [0.4], "rand_aug": [0.3],
                          "rand_noaug": [0.35]}, 0.9)["ior"]["mean"] == pytest.approx(0.2)


def test_score_bad_input(tiny_npz, tmp_path, capsys):
    _fails(capsys, tmp_path, ["!argparse", "score", str(tmp_path), "--full-acc", "89.4"],
           "--full-acc", "[0, 1]")
    _fails(capsys, tmp_path, ["score", str(tmp_path / "none"), "--quiet"], "does not exist")


def test_evaluate_no_aug_flag(tiny_npz, tmp_path, capsys):
    art = tmp_path / "rand"
    assert main(["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2",
                 "--out", str(art), "--quiet"]) == 0
    for flag, dsa in (([], "set"), (["--no-aug"], None)):
        capsys.readouterr()
        assert main(["evaluate", str(art), "--protocol", "cpu", "--epochs", "1", "--model",
                     "mlp_w32", "--seeds", "1", "--quiet", "--json", *flag]) == 0
        res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (res["augment"] is None) == (dsa is None), res["augment"]
