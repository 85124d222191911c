import json
import os

import numpy as np
import pytest

from jaxdd import artefact
from jaxdd.cli import main
from jaxdd.data import fit_preprocess


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_baseline_then_evaluate_json(tiny_npz, tmp_path, capsys):
    out = str(tmp_path / "rand")
    code, o, e = _run(capsys, "baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "4",
                      "--out", out, "--quiet")
    assert code == 0, e
    art = artefact.load(out)
    assert art.x_syn_NHWC.shape == (12, 8, 8, 1) and art.meta["label_kind"] == "hard"
    assert os.path.exists(os.path.join(out, "grid.png"))
    code, o, e = _run(capsys, "evaluate", out, "--protocol", "smoke", "--seeds", "2", "--json",
                      "--epochs", "5", "--batch-size", "8")
    assert code == 0, e
    res = json.loads(o.strip().splitlines()[-1])
    assert res["seeds"] == 2 and res["epochs"] == 5 and len(res["accuracies"]) == 2
    assert res["batch_size"] == 8   # DATM evaluates with 128; the protocol's default is 64
    assert res["accuracy_mean"] == pytest.approx(sum(res["accuracies"]) / 2)
    assert len(json.load(open(os.path.join(out, "evaluations.json")))) == 1


def test_models_json(capsys):
    code, o, _ = _run(capsys, "models", "--dataset", "cifar100", "--json")
    rows = {r["name"]: r["params"] for r in json.loads(o.strip().splitlines()[-1])["models"]}
    assert code == 0 and rows["convnet"] == 504_420


@pytest.mark.parametrize("argv,needle", [
    (["baseline", "random", "--dataset", "no_such_set", "--ipc", "1", "--out", "X"], "unknown dataset"),
    (["baseline", "random", "--dataset", "NPZ", "--ipc", "1000", "--out", "X"], "larger than class"),
    (["evaluate", "MISSING"], "does not exist"),
    (["evaluate", "ART", "--protocol", "fastest"], "unknown protocol"),
])
def test_bad_input_is_one_clear_error(argv, needle, tiny_npz, tmp_path, capsys):
    art = str(tmp_path / "art")
    _run(capsys, "baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2", "--out", art, "--quiet")
    argv = [a.replace("NPZ", f"npz:{tiny_npz}").replace("MISSING", str(tmp_path / "nope"))
            .replace("ART", art).replace("X", str(tmp_path / "x")) for a in argv]
    code, o, e = _run(capsys, *argv)
    assert code != 0
    lines = [line for line in e.strip().splitlines() if line.startswith("jaxdd: error:")]
    assert len(lines) == 1 and needle in lines[0], e


def test_existing_artefact_never_overwritten_and_corruption_detected(tiny_npz, tmp_path, capsys):
    out = str(tmp_path / "a")
    assert _run(capsys, "baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2",
                "--out", out, "--quiet")[0] == 0
    before = open(os.path.join(out, "arrays.npz"), "rb").read()
    code, _, e = _run(capsys, "baseline", "herding", "--dataset", f"npz:{tiny_npz}", "--ipc", "3",
                      "--out", out, "--quiet")
    assert code != 0 and "already holds an artefact" in e
    assert open(os.path.join(out, "arrays.npz"), "rb").read() == before
    with open(os.path.join(out, "arrays.npz"), "r+b") as f:   # flip one byte
        f.seek(len(before) // 2)
        b = f.read(1)
        f.seek(len(before) // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    code, _, e = _run(capsys, "evaluate", out, "--protocol", "smoke")
    assert code != 0 and "corrupt" in e


def test_artefact_roundtrip_with_zca_and_soft_labels(tmp_path):
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 255, (50, 4, 4, 2)).astype(np.uint8)
    pre = fit_preprocess("zca", x_train)
    x = rng.normal(size=(6, 4, 4, 2)).astype(np.float32)
    y = rng.normal(size=(6, 3)).astype(np.float32)
    artefact.save(str(tmp_path / "s"), x, y, preprocess=pre, method="test", dataset="d",
                  num_classes=3, ipc=2, seed=7, lr=0.0123, config={"a": 1})
    art = artefact.load(str(tmp_path / "s"))
    np.testing.assert_array_equal(art.x_syn_NHWC, x)
    np.testing.assert_array_equal(art.y_syn, y)
    assert art.lr == pytest.approx(0.0123) and art.meta["label_kind"] == "logits"
    assert art.preprocess.kind == "zca" and art.meta["seed"] == 7 and "jax" in art.meta["versions"]
    np.testing.assert_allclose(art.preprocess.whiten_DxD, pre.whiten_DxD)
    with pytest.raises(artefact.ArtefactError, match="NaN"):
        artefact.save(str(tmp_path / "bad"), x * np.nan, y, preprocess=pre, method="t", dataset="d",
                      num_classes=3, ipc=2, seed=0)
    assert not os.path.exists(tmp_path / "bad")


def test_evaluate_models_cross_architecture_table(tiny_npz, tmp_path, capsys):
    """--models: one table, same protocol and seed keys per model, printed, then written
    (cross_arch.json keeps every table, cross_arch.md renders them); unknown names fail
    before anything is written."""
    from conftest import snapshot
    art = str(tmp_path / "rand")
    assert _run(capsys, "baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "3",
                "--out", art, "--quiet")[0] == 0
    before = snapshot(art)
    for bad in (["--models", "mlp_w16,vgg99"], ["--models", " , "],
                ["--models", "mlp_w16,lenet"]):      # lenet cannot take 8 px images
        code, o, e = _run(capsys, "evaluate", art, "--protocol", "smoke", *bad)
        lines = [x for x in e.strip().splitlines() if x.startswith("jaxdd: error:")]
        assert code == 2 and len(lines) == 1, e
    assert "unknown model 'vgg99'; use one of convnet" in _run(
        capsys, "evaluate", art, "--models", "vgg99")[2]
    with pytest.raises(SystemExit) as ex:   # argparse: one line, exit code 2
        main(["evaluate", art, "--model", "mlp", "--models", "mlp"])
    assert ex.value.code == 2 and "not allowed with argument" in capsys.readouterr().err
    assert snapshot(art) == before   # nothing written

    argv = ["evaluate", art, "--protocol", "smoke", "--seeds", "2", "--epochs", "3", "--quiet"]
    code, o, e = _run(capsys, *argv, "--models", "mlp_w16, convnet_d2_w4", "--json")
    assert code == 0, e
    table = json.loads(o.strip().splitlines()[-1])
    assert [r["model"] for r in table["rows"]] == ["mlp_w16", "convnet_d2_w4"]
    assert table["seeds"] == 2 and table["epochs"] == 3 and table["protocol"] == "smoke"
    for r in table["rows"]:
        assert len(r["accuracies"]) == 2 and r["params"] > 0
        assert r["accuracy_mean"] == pytest.approx(np.mean(r["accuracies"]))
        assert r["accuracy_std"] == pytest.approx(np.std(r["accuracies"]))
    saved = json.load(open(os.path.join(art, "cross_arch.json")))
    assert saved["tables"][0]["rows"] == table["rows"]
    md = open(os.path.join(art, "cross_arch.md")).read()
    assert "| mlp_w16 |" in md and "| convnet_d2_w4 |" in md and " ± " in md
    assert len(json.load(open(os.path.join(art, "evaluations.json")))) == 2
    # Same protocol and seed keys as a single --model run; a second table is appended.
    code, o, _ = _run(capsys, *argv, "--model", "mlp_w16", "--json")
    assert json.loads(o.strip().splitlines()[-1])["accuracies"] == table["rows"][0]["accuracies"]
    code, o, _ = _run(capsys, *argv, "--models", "mlp_w16")
    assert code == 0 and "| mlp_w16 |" in o and "wrote" in o
    assert len(json.load(open(os.path.join(art, "cross_arch.json")))["tables"]) == 2


def test_evaluate_lr_replaces_the_learned_lr(tiny_npz, tmp_path, capsys):
    """--lr trains at the given lr instead of the set's learned one (MTT's), recorded as
    such; given the learned value it reproduces the plain run exactly; a bad value is one
    argparse line and writes nothing."""
    from conftest import snapshot
    rand = str(tmp_path / "rand")
    assert _run(capsys, "baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "3",
                "--out", rand, "--quiet")[0] == 0
    a = artefact.load(rand)
    art = str(tmp_path / "learned")
    artefact.save(art, a.x_syn_NHWC, a.y_syn, preprocess=a.preprocess, method="mtt",
                  dataset=a.meta["dataset"], num_classes=a.num_classes, ipc=3, seed=0, lr=0.05)
    argv = ["evaluate", art, "--protocol", "smoke", "--seeds", "2", "--epochs", "3",
            "--quiet", "--json"]

    def run(*extra):
        code, o, e = _run(capsys, *argv, *extra)
        assert code == 0, e
        return json.loads(o.strip().splitlines()[-1])

    learned, same, other = run(), run("--lr", "0.05"), run("--lr", "0.005")
    assert learned["lr"] == pytest.approx(0.05) and learned["lr_source"] == "learned"
    assert same["lr_source"] == "--lr" and same["accuracies"] == learned["accuracies"]
    assert other["lr"] == pytest.approx(0.005) and other["lr_source"] == "--lr"
    assert (other["accuracies"], other["val_accuracy_mean"]) != (
        learned["accuracies"], learned["val_accuracy_mean"])   # the lr reached training
    table = run("--lr", "0.005", "--models", "mlp_w16")
    assert table["lr"] == pytest.approx(0.005) and table["lr_source"] == "--lr"
    assert "lr 0.005 (--lr)" in open(os.path.join(art, "cross_arch.md")).read()
    before = snapshot(art)
    for bad in ("0", "-1", "nan", "fast"):
        with pytest.raises(SystemExit) as ex:
            main(["evaluate", art, "--lr", bad])
        assert ex.value.code == 2 and "--lr" in capsys.readouterr().err
    assert snapshot(art) == before
