"""Careless-user data faults: each is one clear `jaxdd: error:` line and touches no file."""

import json
import os

import numpy as np
import pytest
from conftest import snapshot
from PIL import Image

from jaxdd import data
from jaxdd.cli import main


@pytest.fixture(autouse=True)
def _fresh_cache():
    data.clear_cache()
    yield
    data.clear_cache()


def _write_pngs(root, classes, n=4, seed=0) -> None:
    rng = np.random.default_rng(seed)
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(arr, "RGB").save(root / c / f"{i:03d}.png")


def _npz(path, y_train, x_train=None, y_test=None) -> str:
    rng = np.random.default_rng(0)
    n = len(y_train)
    y_test = np.asarray(y_train[:6] if y_test is None else y_test)
    x_train = rng.integers(0, 256, (n, 8, 8, 1), dtype=np.uint8) if x_train is None else x_train
    np.savez(path, x_train=x_train, y_train=np.asarray(y_train), y_test=y_test,
             x_test=rng.integers(0, 256, (len(y_test), 8, 8, 1), dtype=np.uint8))
    return str(path)


def _one_error(tmp_path, capsys, argv, *needles) -> str:
    """Run the CLI; assert a non-zero exit, one `jaxdd: error:` line with needles, no file touched."""
    before = snapshot(tmp_path)
    code = main(argv)
    out, err = capsys.readouterr()
    assert code != 0, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxdd: error: "), err
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert snapshot(tmp_path) == before
    return lines[0]


def _baseline(dataset: str, tmp_path) -> list[str]:
    return ["baseline", "random", "--dataset", dataset, "--ipc", "1",
            "--out", str(tmp_path / "o"), "--quiet"]


def test_truncated_png_is_named(tmp_path, capsys):
    root = tmp_path / "ds"
    _write_pngs(root, ["cat", "dog"])
    bad = root / "dog" / "002.png"
    blob = bad.read_bytes()
    bad.write_bytes(blob[:len(blob) // 2])
    line = _one_error(tmp_path, capsys, _baseline(f"folder:{root}", tmp_path),
                      str(bad), "fix or remove")
    assert "002.png" in line


def test_non_image_png_is_named(tmp_path, capsys):
    root = tmp_path / "ds"
    _write_pngs(root, ["cat", "dog"])
    (root / "cat" / "x.png").write_text("this is not an image\n")
    _one_error(tmp_path, capsys, _baseline(f"folder:{root}", tmp_path),
               str(root / "cat" / "x.png"), "fix or remove")


def test_one_class_folder_refused(tmp_path, capsys):
    root = tmp_path / "ds"
    _write_pngs(root, ["cat"])
    _one_error(tmp_path, capsys, _baseline(f"folder:{root}", tmp_path),
               "2 classes", "found 1")


def test_one_class_npz_refused(tmp_path, capsys):
    path = _npz(tmp_path / "one.npz", np.zeros(20, np.int32))
    _one_error(tmp_path, capsys, _baseline(f"npz:{path}", tmp_path), "2 classes", "found 1")


@pytest.mark.parametrize("array,bad", [("x_train", np.nan), ("x_test", np.inf)])
def test_non_finite_pixels_refused(tmp_path, capsys, array, bad):
    rng = np.random.default_rng(0)
    arrays = dict(x_train=rng.random((20, 8, 8, 1), np.float32), y_train=np.arange(20) % 2,
                  x_test=rng.random((6, 8, 8, 1), np.float32), y_test=np.arange(6) % 2)
    arrays[array][1, 2, 3, 0] = arrays[array][4, 0, 0, 0] = bad
    np.savez(tmp_path / "nan.npz", **arrays)
    _one_error(tmp_path, capsys, _baseline(f"npz:{tmp_path / 'nan.npz'}", tmp_path),
               array, "2 non-finite")


def test_empty_class_folder_named(tmp_path, capsys):
    root = tmp_path / "ds"
    _write_pngs(root / "train", ["cat", "dog"])
    os.makedirs(root / "train" / "bird")
    line = _one_error(tmp_path, capsys, _baseline(f"folder:{root}", tmp_path),
                      str(root / "train" / "bird"), "remove it or add images")
    assert "--ipc" not in line


def test_npz_labels_one_to_k(tmp_path, capsys):
    path = _npz(tmp_path / "onebased.npz", np.arange(30) % 10 + 1)
    line = _one_error(tmp_path, capsys, _baseline(f"npz:{path}", tmp_path),
                      "1..10", "0..K-1", "subtract 1")
    assert "--ipc" not in line


def test_npz_label_gap_names_the_class(tmp_path, capsys):
    path = _npz(tmp_path / "gap.npz", np.array([0, 1, 3] * 8))
    line = _one_error(tmp_path, capsys, _baseline(f"npz:{path}", tmp_path), "class 2")
    assert "--ipc" not in line


def test_meta_checksum_edit_blames_the_pair(tiny_npz, tmp_path, capsys):
    art = tmp_path / "art"
    assert main(["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2",
                 "--out", str(art), "--quiet"]) == 0
    capsys.readouterr()
    meta = json.loads((art / "meta.json").read_text())
    meta["arrays_sha256"] = "0" * 64
    (art / "meta.json").write_text(json.dumps(meta))
    line = _one_error(tmp_path, capsys, ["evaluate", str(art), "--protocol", "smoke"],
                      "arrays.npz", "meta.json", "re-create")
    assert "arrays.npz is corrupt" not in line


def test_check_ipc_names_a_class_left_empty(tmp_path):
    path = _npz(tmp_path / "sorted.npz", np.repeat([0, 1], 10), y_test=[0, 1])
    ds = data.load_dataset(f"npz:{path}", max_train=10, val_per_class=0)  # only class 0 left
    with pytest.raises(ValueError, match=r"class 1 \('1'\) of npz:.* has no training images"):
        data.check_ipc(ds, 1)
