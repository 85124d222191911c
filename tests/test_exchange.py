"""`jaxdd export` / `jaxdd import`: round trips per format, MTT-style .pt sets, bad input.

What the round trips compare:
- npz, torch: the imported artefact's model-space images, labels (hard or logits), lr and
  preprocessing arrays are bit-identical to the exported artefact's.
- png, tfds, hf (8-bit): the PNG / TFDS / datasets pixels equal the quantisation round(clip(invert(x)) * 255) of the
  exported images; the imported model-space images equal apply(preprocess, those uint8
  pixels) bit for bit (the same preprocessing, refitted on the same training split);
  labels, logits, lr and preprocessing arrays are identical.
"""

import json
import os
import pickle
import sys

import numpy as np
import pytest
from test_cli_faults import _fails as fails_cleanly

from jaxdd import artefact, exchange
from jaxdd import data as jdata
from jaxdd.cli import main


def _run(*argv):
    assert main([*map(str, argv), "--quiet"]) == 0


def _fails(capsys, root, argv, *needles):
    """One `jaxdd: error:` line holding the needles, files under root unchanged."""
    return fails_cleanly(capsys, root, [*map(str, argv), "--quiet"], *needles)


@pytest.fixture
def arts(tiny_npz, tmp_path):
    """A hard-label baseline (normalize) and a logits + lr set (zca)."""
    hard = tmp_path / "hard"
    _run("baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2", "--out", hard)
    ds = jdata.load_dataset(f"npz:{tiny_npz}")
    pre = jdata.fit_preprocess("zca", ds.x_train)
    rng = np.random.default_rng(1)
    x = rng.normal(0, 1.5, (6, 8, 8, 1)).astype(np.float32)  # leaves [0, 1] when inverted
    soft = tmp_path / "soft"
    artefact.save(str(soft), x, rng.normal(size=(6, 3)).astype(np.float32), preprocess=pre,
                  method="test", dataset=f"npz:{tiny_npz}", num_classes=3, ipc=2, seed=0,
                  lr=0.0123456789)
    return {"hard": str(hard), "soft": str(soft)}


def _same_preprocess(a, b):
    da, db = jdata.to_dict(a), jdata.to_dict(b)
    assert da.keys() == db.keys()
    for k in da:
        np.testing.assert_array_equal(np.asarray(da[k]), np.asarray(db[k]), err_msg=k)


def _assert_identical(a, b, x_expected=None):
    x = a.x_syn_NHWC if x_expected is None else x_expected
    assert b.x_syn_NHWC.dtype == np.float32 and np.array_equal(b.x_syn_NHWC, x)
    assert b.y_syn.shape == a.y_syn.shape and np.array_equal(b.y_syn, a.y_syn)
    assert b.lr == a.lr
    _same_preprocess(a.preprocess, b.preprocess)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_npz_round_trip_is_identical(arts, tiny_npz, tmp_path, kind):
    out, back = tmp_path / "exp", tmp_path / "back"
    _run("export", arts[kind], "--format", "npz", "--out", out)
    with np.load(out / "set.npz") as z:
        assert z["x"].dtype == np.float32 and z["x"].min() >= 0 and z["x"].max() <= 1
    _run("import", out, "--dataset", f"npz:{tiny_npz}", "--out", back)
    a, b = artefact.load(arts[kind]), artefact.load(str(back))
    _assert_identical(a, b)
    assert b.meta["method"] == "imported:npz" and b.meta["source"] == str(out)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_png_round_trip_is_identical_after_quantisation(arts, tiny_npz, tmp_path, kind):
    out, back = tmp_path / "exp", tmp_path / "back"
    _run("export", arts[kind], "--format", "png", "--out", out)
    a = artefact.load(arts[kind])
    px = exchange.pixels_uint8(a)
    lab = json.loads((out / "labels.json").read_text())
    y_hard = exchange.hard_labels(a.y_syn)
    for i, f in enumerate(lab["files"]):
        assert f.split(os.sep)[0].startswith(f"{y_hard[i]}_")
        got = np.asarray(jdata.sources.decode_image(str(out / f), f))
        np.testing.assert_array_equal(got, px[i, ..., 0])
    _run("import", out, "--dataset", f"npz:{tiny_npz}", "--out", back)
    b = artefact.load(str(back))
    _assert_identical(a, b, x_expected=jdata.apply(a.preprocess, px))
    # a plain class_dir/*.png folder (no labels.json) imports too, labels from the folders
    plain = tmp_path / "plain"
    for f in lab["files"]:
        (plain / os.path.dirname(f)).mkdir(parents=True, exist_ok=True)
        (plain / f).write_bytes((out / f).read_bytes())
    _run("import", plain, "--dataset", f"npz:{tiny_npz}", "--preprocess", a.preprocess.kind,
         "--out", tmp_path / "plain_art")
    c = artefact.load(str(tmp_path / "plain_art"))
    assert sorted(c.y_syn.tolist()) == sorted(y_hard.tolist())


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_tfds_round_trip_is_identical_after_quantisation(arts, tiny_npz, tmp_path, kind):
    import tensorflow_datasets as tfds
    out, back = tmp_path / "exp", tmp_path / "back"
    _run("export", arts[kind], "--format", "tfds", "--out", out)
    a = artefact.load(arts[kind])
    # readable by TFDS alone (no TensorFlow), in the artefact's order
    builder = tfds.builder_from_directory(str(out / exchange.TFDS_NAME / exchange.TFDS_VERSION))
    src = builder.as_data_source(split="train")
    assert len(src) == len(a.y_syn) and builder.info.metadata["lr"] == a.lr
    np.testing.assert_array_equal(np.stack([src[i]["image"] for i in range(len(src))]),
                                  exchange.pixels_uint8(a))
    assert [src[i]["label"] for i in range(len(src))] == exchange.hard_labels(a.y_syn).tolist()
    if kind == "soft":
        np.testing.assert_array_equal(np.stack([src[i]["logits"] for i in range(len(src))]),
                                      a.y_syn)
    assert len(tfds.data_source(exchange.TFDS_NAME, data_dir=str(out), split="train")) == len(src)
    _run("import", out, "--dataset", f"npz:{tiny_npz}", "--out", back)
    b = artefact.load(str(back))
    _assert_identical(a, b, x_expected=jdata.apply(a.preprocess, exchange.pixels_uint8(a)))
    assert b.meta["method"] == "imported:tfds"
    # the version directory alone imports too (a TFDS dataset made elsewhere)
    _run("import", out / exchange.TFDS_NAME / exchange.TFDS_VERSION, "--dataset",
         f"npz:{tiny_npz}", "--preprocess", a.preprocess.kind, "--out", tmp_path / "b2")
    _assert_identical(a, artefact.load(str(tmp_path / "b2")),
                      x_expected=jdata.apply(a.preprocess, exchange.pixels_uint8(a)))


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_hf_round_trip_is_identical_after_quantisation(arts, tiny_npz, tmp_path, kind, capsys):
    datasets = pytest.importorskip("datasets")
    out, back = tmp_path / "exp", tmp_path / "back"
    _run("export", arts[kind], "--format", "hf", "--out", out)
    a = artefact.load(arts[kind])
    ds = datasets.load_from_disk(str(out))
    assert len(ds) == len(a.y_syn) and ds.features["label"].num_classes == 3
    np.testing.assert_array_equal(np.stack([np.asarray(im) for im in ds["image"]]),
                                  exchange.pixels_uint8(a)[..., 0])
    assert list(ds["label"]) == exchange.hard_labels(a.y_syn).tolist()
    if kind == "soft":
        np.testing.assert_array_equal(np.asarray(ds["logits"], np.float32), a.y_syn)
    _run("import", out, "--dataset", f"npz:{tiny_npz}", "--out", back)
    b = artefact.load(str(back))
    _assert_identical(a, b, x_expected=jdata.apply(a.preprocess, exchange.pixels_uint8(a)))
    assert b.meta["method"] == "imported:hf"
    # an existing export is replaced only with --overwrite (here by a TFDS one)
    _fails(capsys, tmp_path, ["export", arts[kind], "--format", "tfds", "--out", out],
           "already holds a jaxdd export", "--overwrite")
    _run("export", arts[kind], "--format", "tfds", "--out", out, "--overwrite")
    assert exchange.detect_format(str(out)) == "tfds" and not (out / "state.json").exists()


def test_hf_missing_is_one_line(arts, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)
    _fails(capsys, tmp_path, ["export", arts["hard"], "--format", "hf", "--out", tmp_path / "h"],
           "pip install 'jaxdd[hf]'")


def test_imported_set_evaluates(arts, tiny_npz, tmp_path, capsys):
    _run("export", arts["hard"], "--format", "png", "--out", tmp_path / "exp")
    _run("import", tmp_path / "exp", "--dataset", f"npz:{tiny_npz}", "--out", tmp_path / "b")
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "b"), "--protocol", "smoke", "--seeds", "1",
                 "--quiet", "--json"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["method"] == "imported:png" and 0 <= res["accuracy_mean"] <= 1
    assert len(json.loads((tmp_path / "b" / "evaluations.json").read_text())) == 1


def test_existing_export_path(arts, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("do not lose me")
    for extra in ([], ["--overwrite"]):
        _fails(capsys, tmp_path, ["export", arts["hard"], "--format", "npz", "--out", user,
                                  *extra], "not a jaxdd export")
    _fails(capsys, tmp_path, ["export", arts["hard"], "--format", "npz", "--out",
                              user / "thesis.tex"], "existing file")
    out = tmp_path / "exp"
    _run("export", arts["hard"], "--format", "npz", "--out", out)
    _fails(capsys, tmp_path, ["export", arts["soft"], "--format", "png", "--out", out],
           "already holds a jaxdd export", "--overwrite")
    _run("export", arts["soft"], "--format", "png", "--out", out, "--overwrite")
    assert not (out / "set.npz").exists() and (out / "labels.json").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_bad_imports_write_nothing(arts, tiny_npz, tmp_path, capsys):
    ds = f"npz:{tiny_npz}"
    rng = np.random.default_rng(0)
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "shape.npz", x=rng.random((4, 9, 8, 1)), y=np.zeros(4, int))
    np.savez(bad / "nchw.npz", x=rng.random((4, 1, 8, 8)), y=np.zeros(4, int))
    np.savez(bad / "classes.npz", x=rng.random((4, 8, 8)), y=np.array([0, 1, 2, 3]))
    np.savez(bad / "logits.npz", x=rng.random((4, 8, 8)), y=np.zeros(4, int),
             logits=rng.random((4, 5)).astype(np.float32))
    np.savez(bad / "count.npz", x=rng.random((4, 8, 8)), y=np.zeros(3, int))
    np.savez(bad / "nolabels.npz", images=rng.random((4, 8, 8)))
    for name in "abcd":  # 4 class folders, 3 classes
        (bad / "png" / name).mkdir(parents=True)
        from PIL import Image
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(bad / "png" / name / "0.png")
    out = tmp_path / "art"
    for src, needle in [("shape.npz", "(4, 9, 8, 1)"), ("nchw.npz", "(N, 8, 8, 1)"),
                        ("classes.npz", "3 classes"), ("logits.npz", "3 classes"),
                        ("count.npz", "4 images but 3 labels"), ("nolabels.npz", "needs arrays x"),
                        ("png", "4 class folders")]:
        _fails(capsys, tmp_path, ["import", bad / src, "--dataset", ds, "--out", out], needle)
    assert not out.exists()
    # an existing artefact is not replaced without --overwrite
    _fails(capsys, tmp_path, ["import", bad / "classes.npz", "--dataset", ds, "--out",
                              arts["hard"]], "--overwrite")


def test_torch_missing_is_one_line(arts, tiny_npz, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    msg = "torch is not installed: pip install 'jaxdd[torch]'"
    _fails(capsys, tmp_path, ["export", arts["hard"], "--format", "torch", "--out",
                              tmp_path / "t"], msg)
    (tmp_path / "images.pt").write_bytes(b"x")
    _fails(capsys, tmp_path, ["import", "--images", tmp_path / "images.pt", "--labels",
                              tmp_path / "images.pt", "--dataset",
                              f"npz:{tiny_npz}", "--out", tmp_path / "a"], msg)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_torch_round_trip_is_identical(arts, tiny_npz, tmp_path, kind):
    torch = pytest.importorskip("torch")
    out, back = tmp_path / "exp", tmp_path / "back"
    _run("export", arts[kind], "--format", "torch", "--out", out)
    a = artefact.load(arts[kind])
    x = torch.load(out / "images.pt", weights_only=True)
    assert x.dtype == torch.float32 and tuple(x.shape) == (len(a.y_syn), 1, 8, 8)
    y = torch.load(out / "labels.pt", weights_only=True)
    assert y.dtype == (torch.int64 if kind == "hard" else torch.float32)
    assert (out / "lr.pt").exists() == (a.lr is not None)
    _run("import", out, "--dataset", f"npz:{tiny_npz}", "--out", back)
    _assert_identical(a, artefact.load(str(back)))
    # the same files named explicitly, as from an MTT run directory
    args = ["--images", out / "images.pt", "--labels", out / "labels.pt"]
    args += ["--lr", out / "lr.pt"] if a.lr is not None else []
    _run("import", *args, "--dataset", f"npz:{tiny_npz}", "--preprocess", a.preprocess.kind,
         "--out", tmp_path / "back2")
    _assert_identical(a, artefact.load(str(tmp_path / "back2")))


def test_mtt_written_pt_imports_and_evaluates(tiny_npz, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    # as MTT's distill.py: image_syn (N, C, H, W) float in ZCA space, label_syn long,
    # syn_lr a 0-d float tensor (DATM: lr_*.pt)
    ipc, k = 2, 3
    image_syn = torch.randn(k * ipc, 1, 8, 8)
    label_syn = torch.tensor([np.ones(ipc) * i for i in range(k)], dtype=torch.long).view(-1)
    syn_lr = torch.tensor(0.01).detach()
    for name, t in [("images_5000.pt", image_syn), ("labels_5000.pt", label_syn),
                    ("lr_5000.pt", syn_lr)]:
        torch.save(t.cpu(), tmp_path / name)
    art = tmp_path / "mtt"
    _run("import", "--images", tmp_path / "images_5000.pt", "--labels",
         tmp_path / "labels_5000.pt", "--lr", tmp_path / "lr_5000.pt", "--dataset",
         f"npz:{tiny_npz}", "--preprocess", "zca", "--out", art)
    b = artefact.load(str(art))
    np.testing.assert_array_equal(b.x_syn_NHWC, image_syn.numpy().transpose(0, 2, 3, 1))
    assert b.y_syn.tolist() == label_syn.tolist() and b.lr == pytest.approx(0.01)
    assert b.meta["method"] == "imported:torch" and b.preprocess.kind == "zca"
    capsys.readouterr()
    assert main(["evaluate", str(art), "--protocol", "smoke", "--seeds", "1", "--quiet"]) == 0


def test_bad_pt_files_write_nothing(tiny_npz, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    ds = f"npz:{tiny_npz}"
    torch.save(torch.randn(6, 1, 8, 8), tmp_path / "images.pt")
    torch.save(torch.arange(6) % 3, tmp_path / "labels.pt")
    with open(tmp_path / "evil.pt", "wb") as f:
        pickle.dump(np.random.default_rng(0), f)  # a pickle of an object, not tensors
    torch.save({"images": torch.zeros(1)}, tmp_path / "dict.pt")
    torch.save(torch.randn(6, 3, 8, 8), tmp_path / "rgb.pt")
    torch.save(torch.arange(6), tmp_path / "k6.pt")
    out = tmp_path / "art"
    for images, labels, needle in [("evil.pt", "labels.pt", "weights_only"),
                                   ("images.pt", "evil.pt", "weights_only"),
                                   ("dict.pt", "labels.pt", "not a tensor"),
                                   ("rgb.pt", "labels.pt", "(N, 8, 8, 1)"),
                                   ("images.pt", "k6.pt", "3 classes")]:
        _fails(capsys, tmp_path, ["import", "--images", tmp_path / images, "--labels",
                                  tmp_path / labels, "--dataset", ds, "--out", out], needle)
    assert not out.exists()
