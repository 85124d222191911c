"""Tests of jaxdd.data: real offline Fashion-MNIST, mocked TFDS, user data, splits, ZCA."""

from __future__ import annotations

import gzip
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxdd import data
from jaxdd.data import fashion_mnist_local, preprocess, sources

FASHION_DIR = fashion_mnist_local.DEBIAN_DIR
needs_fashion = pytest.mark.skipif(
    not fashion_mnist_local.local_files_available(FASHION_DIR),
    reason=f"Debian dataset-fashion-mnist not installed ({FASHION_DIR})")


def _raw_idx(path: str) -> np.ndarray:
    """Independent idx reader: magic 0x00000803 (images) or 0x00000801 (labels)."""
    with gzip.open(path, "rb") as f:
        buf = f.read()
    magic = int.from_bytes(buf[:4], "big")
    rank = magic & 0xFF
    dims = tuple(int.from_bytes(buf[4 + 4 * i: 8 + 4 * i], "big") for i in range(rank))
    return np.frombuffer(buf[4 + 4 * rank:], dtype=">u1").reshape(dims)


@pytest.fixture(scope="session")
def fashion_dir(tmp_path_factory) -> str:
    """A fresh TFDS data dir, so the session always exercises the offline build."""
    return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture(scope="session")
def fashion(fashion_dir) -> data.Dataset:
    if not fashion_mnist_local.local_files_available(FASHION_DIR):
        pytest.skip("Debian dataset-fashion-mnist not installed")
    return data.load_dataset("fashion_mnist", data_dir=fashion_dir, val_per_class=0)


# ---------------------------------------------------------------------------------------
# Offline Fashion-MNIST (real files)


@needs_fashion
def test_fashion_mnist_local_real_files(fashion, fashion_dir):
    ds = fashion
    assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert ds.class_names[0] == "T-shirt/top" and ds.class_names[9] == "Ankle boot"
    np.testing.assert_array_equal(np.bincount(ds.y_train), [6000] * 10)
    assert "fashion_mnist_local" in ds.source
    assert os.path.isdir(os.path.join(fashion_dir, "fashion_mnist_local"))
    # Original order, bit-exact, against the idx files read independently.
    y_raw = _raw_idx(f"{FASHION_DIR}/train-labels-idx1-ubyte.gz")
    x_raw = _raw_idx(f"{FASHION_DIR}/train-images-idx3-ubyte.gz")
    np.testing.assert_array_equal(ds.y_train[:50], y_raw[:50])
    np.testing.assert_array_equal(ds.y_train, y_raw)
    np.testing.assert_array_equal(ds.x_train[:100, ..., 0], x_raw[:100])
    y_raw_test = _raw_idx(f"{FASHION_DIR}/t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(ds.y_test, y_raw_test)
    assert [len(ix) for ix in ds.class_indices] == [6000] * 10
    assert all((ds.y_train[ix] == k).all() for k, ix in enumerate(ds.class_indices))
    assert not ds.x_train.flags.writeable  # cached arrays are shared


@needs_fashion
def test_fashion_cache_and_default_val_split(fashion, fashion_dir):
    assert data.load_dataset("fashion_mnist", data_dir=fashion_dir, val_per_class=0) is fashion
    a = data.load_dataset("fashion_mnist", data_dir=fashion_dir, max_train=3000, max_test=50)
    b = data.load_dataset("fashion_mnist_local", data_dir=fashion_dir, max_train=3000,
                          max_test=50)
    # default val: round(1000 / 10) = 100 per class, capped at 10 % of the smallest class
    per_class = min(100, int(0.1 * np.bincount(fashion.y_train[:3000]).min()))
    np.testing.assert_array_equal(np.bincount(a.y_val, minlength=10), [per_class] * 10)
    assert len(a.y_train) + len(a.y_val) == 3000 and len(a.y_test) == 50
    np.testing.assert_array_equal(a.x_val, b.x_val)  # same seed, same split


@needs_fashion
def test_ipc_too_large(fashion):
    with pytest.raises(ValueError, match=r"IPC 7000 is larger than class 0 of fashion_mnist, "
                       r"which has 6000 training images; use --ipc <= 6000"):
        data.sample_per_class(0, fashion, 7000)


def test_fashion_source_env(monkeypatch):
    monkeypatch.setenv(sources.FASHION_SOURCE_ENV, "bogus")
    with pytest.raises(ValueError, match="auto, local or tfds"):
        data.load_dataset("fashion_mnist")


def test_fashion_forced_tfds_path_mocked(monkeypatch, tmp_path):
    import tensorflow_datasets as tfds
    monkeypatch.setenv(sources.FASHION_SOURCE_ENV, "tfds")
    with tfds.testing.mock_data(num_examples=30):
        ds = data.load_dataset("fashion_mnist", data_dir=str(tmp_path), val_per_class=0)
    data.clear_cache()  # never serve mocked arrays to a later caller
    assert ds.source.startswith("tfds:fashion_mnist/")
    assert ds.x_train.shape == (30, 28, 28, 1)


# ---------------------------------------------------------------------------------------
# Catalogue datasets through the same code path (mocked: no download)


def test_mocked_tfds_cifar10_and_imagenet64(tmp_path):
    import tensorflow_datasets as tfds
    with tfds.testing.mock_data(num_examples=120):
        ds = data.load_dataset("cifar10", data_dir=str(tmp_path), val_per_class=2)
        im = data.load_dataset("imagenet_resized/64x64", data_dir=str(tmp_path),
                               val_per_class=0, max_train=40, max_test=10)
    data.clear_cache()
    assert ds.x_train.shape[1:] == (32, 32, 3) and ds.x_test.shape == (120, 32, 32, 3)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.num_classes == 10 and len(ds.y_train) + len(ds.y_val) == 120
    np.testing.assert_array_equal(np.bincount(ds.y_val, minlength=10), [2] * 10)
    assert im.x_train.shape == (40, 64, 64, 3) and im.x_test.shape == (10, 64, 64, 3)
    assert im.num_classes == 1000


def test_unknown_dataset_error():
    with pytest.raises(ValueError, match=r"unknown dataset 'not_a_dataset'; use one of .*"
                       r"cifar10.*folder:PATH, npz:PATH or tfds_dir:PATH") as e:
        data.load_dataset("not_a_dataset")
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------
# User data


def _write_pngs(root, classes, n, size, mode, rng):
    written = {}
    for c in classes:
        os.makedirs(root / c, exist_ok=True)
        for i in range(n):
            arr = rng.integers(0, 256, (*size, 3) if mode == "RGB" else size, dtype=np.uint8)
            Image.fromarray(arr, mode).save(root / c / f"{i:03d}.png")
            written[(c, i)] = arr
    return written


def test_folder_dataset(tmp_path):
    rng = np.random.default_rng(0)
    train = _write_pngs(tmp_path / "train", ["dog", "cat"], 6, (8, 8), "RGB", rng)
    _write_pngs(tmp_path / "test", ["dog", "cat"], 2, (8, 8), "RGB", rng)
    ds = data.load_dataset(f"folder:{tmp_path}", val_per_class=1)
    assert ds.class_names == ["cat", "dog"] and ds.num_classes == 2
    assert ds.x_train.shape == (10, 8, 8, 3) and ds.x_val.shape == (2, 8, 8, 3)
    assert ds.x_test.shape == (4, 8, 8, 3)
    all_x = np.concatenate([ds.x_train, ds.x_val])
    all_y = np.concatenate([ds.y_train, ds.y_val])
    for (c, i), arr in train.items():  # every written image is there, with its label
        hit = np.flatnonzero((all_x == arr).all(axis=(1, 2, 3)))
        assert len(hit) == 1 and all_y[hit[0]] == ds.class_names.index(c)

    flat = tmp_path / "flat"  # no train/ folder: greyscale, 20 % held out per class
    _write_pngs(flat, ["a", "b", "c"], 5, (6, 7), "L", rng)
    ds2 = data.load_dataset(f"folder:{flat}", val_per_class=0)
    assert ds2.x_train.shape == (12, 6, 7, 1) and ds2.x_test.shape == (3, 6, 7, 1)


def _npz(path, n=60, k=3, shape=(8, 8, 3), **override):
    rng = np.random.default_rng(0)
    arrays = dict(
        x_train=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
        y_train=np.arange(n) % k,
        x_test=rng.integers(0, 256, (10, *shape), dtype=np.uint8),
        y_test=np.arange(10) % k)
    arrays["x_train"].reshape(n, -1)[:, 0] = np.arange(n)  # the index, to trace samples
    arrays.update(override)
    np.savez(path, **arrays)
    return arrays


def test_npz_dataset_and_errors(tmp_path):
    arrays = _npz(tmp_path / "d.npz")
    ds = data.load_dataset(f"npz:{tmp_path / 'd.npz'}", val_per_class=0)
    np.testing.assert_array_equal(ds.x_train, arrays["x_train"])
    np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
    assert ds.num_classes == 3 and ds.class_names == ["0", "1", "2"]

    _npz(tmp_path / "grey.npz", shape=(8, 8))  # (N, H, W) gets a channel axis
    assert data.load_dataset(f"npz:{tmp_path / 'grey.npz'}").image_shape == (8, 8, 1)
    _npz(tmp_path / "rank.npz", x_train=np.zeros((60, 64), np.uint8))
    with pytest.raises(ValueError, match=r"x_train has shape \(60, 64\); expected"):
        data.load_dataset(f"npz:{tmp_path / 'rank.npz'}")
    _npz(tmp_path / "nchw.npz", shape=(3, 8, 8))
    with pytest.raises(ValueError, match="looks like NCHW"):
        data.load_dataset(f"npz:{tmp_path / 'nchw.npz'}")
    np.savez(tmp_path / "keys.npz", x=np.zeros((2, 4, 4, 1)))
    with pytest.raises(ValueError, match="x_train, y_train, x_test, y_test"):
        data.load_dataset(f"npz:{tmp_path / 'keys.npz'}")


def test_validation_split_deterministic_and_disjoint():
    y = np.random.default_rng(1).integers(0, 5, 500)
    tr, va = data.split_validation(y, 5, 7, seed=3)
    tr2, va2 = data.split_validation(y, 5, 7, seed=3)
    _, va3 = data.split_validation(y, 5, 7, seed=4)
    np.testing.assert_array_equal(va, va2)
    np.testing.assert_array_equal(tr, tr2)
    assert not np.array_equal(va, va3)
    assert np.intersect1d(tr, va).size == 0 and len(tr) + len(va) == 500
    assert (np.diff(tr) > 0).all()  # train keeps the stored order
    np.testing.assert_array_equal(np.bincount(y[va]), [7] * 5)
    with pytest.raises(ValueError, match="would empty class"):
        data.split_validation(y, 5, 1000, seed=0)


def test_sample_per_class(tmp_path):
    _npz(tmp_path / "d.npz", n=90)
    ds = data.load_dataset(f"npz:{tmp_path / 'd.npz'}", val_per_class=3)
    x, y = data.sample_per_class(7, ds, 4)
    x2, _ = data.sample_per_class(7, ds, 4)
    x3, _ = data.sample_per_class(8, ds, 4)
    np.testing.assert_array_equal(x, x2)
    assert not np.array_equal(x, x3)
    np.testing.assert_array_equal(y, np.repeat(np.arange(3), 4))
    idx = x[:, 0, 0, 0].astype(int)  # original indices (written into pixel 0)
    np.testing.assert_array_equal(idx % 3, y)  # each image is of its class
    assert len(np.unique(idx)) == len(idx)
    xk, _ = data.sample_per_class(jax.random.key(5), ds, 2)
    xk2, _ = data.sample_per_class(jax.random.PRNGKey(5), ds, 2)
    np.testing.assert_array_equal(xk, xk2)
    with pytest.raises(ValueError, match=r"IPC 28 is larger than class 0 of npz:.*which has "
                       r"27 training images; use --ipc <= 27"):
        data.sample_per_class(0, ds, 28)


# ---------------------------------------------------------------------------------------
# Preprocessing


def _correlated_images(n=400, shape=(4, 4, 3), seed=0) -> np.ndarray:
    """uint8 images with a strongly non-white covariance (D = 48)."""
    rng = np.random.default_rng(seed)
    d = int(np.prod(shape))
    z = rng.normal(size=(n, d)) @ (rng.normal(size=(d, d)) * np.geomspace(1, 0.01, d))
    z = 128 + 40 * z / z.std()
    return np.clip(np.round(z), 0, 255).astype(np.uint8).reshape(n, *shape)


def test_zca_matches_formula():
    x = _correlated_images()
    p = data.fit_preprocess("zca", x)
    xf = x.reshape(len(x), -1) / 255.0
    mu = xf.mean(0)
    cov = (xf - mu).T @ (xf - mu) / (len(x) - 1)
    s, u = np.linalg.eigh(cov)
    w = u @ np.diag(1 / np.sqrt(s + 0.1)) @ u.T
    np.testing.assert_allclose(p.whiten_DxD, w, atol=1e-6)
    z = data.apply(p, x).reshape(len(x), -1).astype(np.float64)
    assert z.dtype == np.float64 and data.apply(p, x).dtype == np.float32
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-6)
    cov_z = np.cov(z, rowvar=False)  # 1/(N-1)
    np.testing.assert_allclose(cov_z, u @ np.diag(s / (s + 0.1)) @ u.T, atol=1e-6)
    np.testing.assert_allclose(data.invert(p, data.apply(p, x)), x / 255.0, atol=1e-5)
    # test images use the train-fitted transform; jax path agrees and jits
    x_test = _correlated_images(20, seed=1)
    z_np = data.apply(p, x_test)
    np.testing.assert_allclose(z_np.reshape(20, -1), (x_test.reshape(20, -1) / 255 - mu) @ w,
                               atol=1e-5)
    with jax.numpy_rank_promotion("raise"):
        z_jax = jax.jit(lambda a: data.apply(p, a))(jnp.asarray(x_test))
        back = data.invert(p, z_jax)
    np.testing.assert_allclose(np.asarray(z_jax), z_np, atol=1e-5)
    np.testing.assert_allclose(np.asarray(back), x_test / 255.0, atol=1e-5)


def test_zca_kip_relative_regulariser():
    x = _correlated_images()
    p = data.fit_preprocess("zca_kip", x, reg=0.1)
    q = data.fit_preprocess("zca", x)
    # independent reference: standardise per channel, layer-norm per image, X^T X / N
    xf = x / 255.0
    m, sd = xf.mean((0, 1, 2)), xf.std((0, 1, 2))
    f = ((xf - m) / sd).reshape(len(x), -1)
    f = f - f.mean(1, keepdims=True)
    f = f / np.linalg.norm(f, axis=1, keepdims=True)
    mm = f.T @ f / len(x)
    eps = 0.1 * np.trace(mm) / mm.shape[0]
    assert p.eps == pytest.approx(eps, rel=1e-9) and p.eps != pytest.approx(q.eps)
    s, u = np.linalg.eigh(mm)
    np.testing.assert_allclose(p.whiten_DxD, u @ np.diag((s + eps) ** -0.5) @ u.T,
                               rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(data.apply(p, x).reshape(len(x), -1),
                               f @ u @ np.diag((s + eps) ** -0.5) @ u.T, atol=1e-4)
    assert not np.allclose(data.apply(p, x), data.apply(q, x), atol=1e-2)
    assert p.rank == 48 and data.fit_preprocess("zca_kip", x[:20]).rank == 20  # rank control
    # without layer norm the transform is invertible
    p_nl = data.fit_preprocess("zca_kip", x, layer_norm=False)
    np.testing.assert_allclose(data.invert(p_nl, data.apply(p_nl, x)), xf, atol=1e-5)
    # with it, invert is exact up to a per-image affine map of the standardised image
    back = ((data.invert(p, data.apply(p, x)) - m) / sd).reshape(len(x), -1)
    r = [np.corrcoef(a, b)[0, 1] for a, b in zip(back, ((xf - m) / sd).reshape(len(x), -1))]
    assert min(r) > 1 - 1e-6


def test_normalize_constants_and_fit():
    x = _correlated_images(shape=(4, 4, 3))
    p = data.fit_preprocess("normalize", x, dataset_name="cifar10")
    np.testing.assert_allclose(p.mean_C, [0.4914, 0.4822, 0.4465], rtol=1e-6)
    np.testing.assert_allclose(p.std_C, [0.2023, 0.1994, 0.2010], rtol=1e-6)
    q = data.fit_preprocess("normalize", x)
    z = data.apply(q, x)
    np.testing.assert_allclose(z.mean((0, 1, 2)), 0, atol=1e-5)
    np.testing.assert_allclose(z.std((0, 1, 2)), 1, atol=1e-4)
    np.testing.assert_allclose(data.invert(q, z), x / 255.0, atol=1e-6)
    np.testing.assert_allclose(data.apply(q, x / 255.0), z, atol=1e-6)  # float01 input
    with pytest.raises(ValueError, match="unknown preprocessing"):
        data.fit_preprocess("pca", x)
    with pytest.raises(ValueError, match="fitted on images"):
        data.apply(q, np.zeros((2, 5, 5, 3), np.uint8))


def test_reference_normalisation_constants():
    """MTT / SRe2L: CIFAR-100 with CIFAR-10's constants; Tiny-ImageNet and ImageNet
    (also resized) with torchvision's; everything else (Fashion-MNIST, npz:, other
    folders) is fitted, and other kinds ignore the constants."""
    x = _correlated_images(shape=(4, 4, 3))
    cifar = ([0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010])
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    for name, want in (("cifar10", cifar), ("cifar100", cifar), ("imagenet2012", imagenet),
                       ("tiny_imagenet", imagenet), ("imagenet_resized/64x64", imagenet),
                       ("folder:/data/tiny-imagenet-200/", imagenet)):
        p = data.fit_preprocess("normalize", x, dataset_name=name)
        np.testing.assert_allclose(p.mean_C, want[0], rtol=1e-6, err_msg=name)
        np.testing.assert_allclose(p.std_C, want[1], rtol=1e-6, err_msg=name)
    fitted = data.fit_preprocess("normalize", x)
    for name in ("fashion_mnist", "mnist", "npz:/tmp/cifar100.npz", "folder:/data/cifar100",
                 "svhn_cropped", None):
        assert preprocess.known_stats(name) is None, name
        p = data.fit_preprocess("normalize", x, dataset_name=name)
        np.testing.assert_array_equal(p.mean_C, fitted.mean_C)
        np.testing.assert_array_equal(p.std_C, fitted.std_C)
    kip = data.fit_preprocess("zca_kip", x, dataset_name="cifar100")
    np.testing.assert_array_equal(kip.mean_C, data.fit_preprocess("zca_kip", x).mean_C)


@pytest.mark.parametrize("kind", data.KINDS)
def test_preprocess_dict_round_trip(kind, tmp_path):
    x = _correlated_images(200)
    p = data.fit_preprocess(kind, x)
    np.savez(tmp_path / "p.npz", **data.to_dict(p))
    with np.load(tmp_path / "p.npz") as f:
        q = data.from_dict(dict(f))
    assert q.kind == p.kind and q.image_shape == p.image_shape
    assert (q.eps, q.reg, q.layer_norm, q.ln_scale, q.rank) == (
        p.eps, p.reg, p.layer_norm, p.ln_scale, p.rank)
    np.testing.assert_array_equal(data.apply(q, x), data.apply(p, x))
    np.testing.assert_array_equal(data.invert(q, data.apply(p, x)),
                                  data.invert(p, data.apply(p, x)))
    assert preprocess.from_dict(preprocess.to_dict(q)).kind == kind
