"""Statistics matching end to end on a tiny npz dataset via the CLI: teacher -> recover ->
relabel (online and stored), resume of recover batches, and clear errors for bad input."""

import json
import os

import numpy as np

from jaxdd import artefact
from jaxdd.cli import main

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "sre2l", "fashion_mnist_cpu.py")


def _sets(npz, tdir):
    """The real cpu preset, shrunk: tiny data, tiny BN teacher, few iterations and epochs."""
    return [f"dataset=npz:{npz}", "teacher.model=convnet_d2_w4_bn", f"teacher.dir={tdir}",
            "teacher.epochs=2", "teacher.batch_size=64", "recover.iterations=4",
            "recover.batch_size=2", "relabel.epochs=2", "relabel.seeds=2",
            "relabel.model=convnet_d2_w4"]


def _run(capsys, argv):
    code = main(argv + ["--quiet", "--json"])
    o, e = capsys.readouterr()
    assert code == 0, e
    return json.loads(o.strip().splitlines()[-1])


def _recover(capsys, out, sets, ipc=2):
    return _run(capsys, ["recover", "--config", CONFIG, "--ipc", str(ipc), "--out", out]
                + sum((["--set", s] for s in sets), []))


def test_teacher_recover_relabel(tiny_npz, tmp_path, capsys):
    tdir = str(tmp_path / "teacher")
    sets = _sets(tiny_npz, tdir)
    t = _run(capsys, ["teacher", "--config", CONFIG] + sum((["--set", s] for s in sets), []))
    assert t["teacher"] == tdir and t["test_accuracy"][0] > 1 / 3  # above chance (3 classes)

    out = str(tmp_path / "run")
    r = _recover(capsys, out, sets)
    assert r["teacher_seconds"] == 0.0  # the existing teacher was reused
    art = artefact.load(r["artefact"])
    assert art.x_syn_NHWC.shape == (6, 8, 8, 1) and art.lr is None
    assert art.meta["method"] == "sre2l" and art.meta["label_kind"] == "hard"
    assert r["batches"] == 4  # 2 IPC indices x 2 class chunks of at most 2 classes

    # Resume: a lost batch is recomputed, the others are read back; same images.
    batch_files = sorted(os.listdir(os.path.join(out, "batches")))
    os.remove(os.path.join(out, "batches", batch_files[-1]))
    _recover(capsys, out, sets)
    np.testing.assert_array_equal(artefact.load(r["artefact"]).x_syn_NHWC, art.x_syn_NHWC)

    # A different config in the same run directory is refused.
    code = main(["recover", "--config", CONFIG, "--ipc", "2", "--out", out, "--quiet"]
                + sum((["--set", s] for s in sets + ["recover.lr=0.5"]), []))
    assert code == 2 and "different config" in capsys.readouterr().err

    on = _run(capsys, ["relabel", out, "--teacher", tdir, "--mode", "online"])
    st = _run(capsys, ["relabel", out, "--mode", "stored"])  # teacher from the artefact
    assert on["seeds"] == 2 and len(on["accuracies"]) == 2
    assert st["accuracies"] == on["accuracies"]  # stored labels == online labels
    assert os.path.exists(os.path.join(out, "artefact", "labels.npz"))
    # 2 epochs x 1 step x 6 images x 3 classes x fp16
    assert st["label_bytes"] == 2 * 6 * 3 * 2 and st["image_bytes"] == 6 * 8 * 8 * 4
    assert on["label_bytes"] == 0 and on["label_bytes_if_stored"] == st["label_bytes"]
    with open(os.path.join(out, "artefact", "evaluations.json")) as f:
        evs = json.load(f)
    assert [e["mode"] for e in evs] == ["online", "stored"]


def test_bad_input_gives_one_error_line(tiny_npz, tmp_path, capsys):
    sets = _sets(tiny_npz, str(tmp_path / "teacher"))
    # Unknown teacher directory for relabel (checked before anything is trained).
    art_dir = str(tmp_path / "art")
    artefact.save(art_dir, np.zeros((3, 8, 8, 1), np.float32), np.arange(3),
                  preprocess=__import__("jaxdd").data.fit_preprocess(
                      "normalize", np.zeros((4, 8, 8, 1), np.uint8) + np.arange(4).reshape(4, 1, 1, 1)),
                  method="sre2l", dataset=f"npz:{tiny_npz}", num_classes=3, ipc=1, seed=0)
    code = main(["relabel", art_dir, "--teacher", str(tmp_path / "nope"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("jaxdd: error: no teacher at")

    # IPC larger than a class.
    code = main(["recover", "--config", CONFIG, "--ipc", "1000", "--out", str(tmp_path / "r"),
                 "--quiet"] + sum((["--set", s] for s in sets), []))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "IPC 1000 is larger than class" in err[0]
    assert not os.path.exists(tmp_path / "teacher")  # nothing was trained
