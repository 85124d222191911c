"""Tests of jaxdd.data.stream: resume, per-process shards, variable-size decoding,
deterministic augmentation, corrupt images, in-memory parity, mocked imagenet2012."""

from __future__ import annotations

import logging
import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from jaxdd import data
from jaxdd.data import stream

N_PER_CLASS = 8  # 3 classes -> 24 train images in a folder with a test/ split


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """3 classes of variable-size (20-60 px) RGB JPEGs and PNGs, plus a test/ folder."""
    root = tmp_path_factory.mktemp("imgs")
    rng = np.random.default_rng(0)
    for split, n in (("train", N_PER_CLASS), ("test", 2)):
        for c in ("cat", "dog", "fox"):
            os.makedirs(root / split / c)
            for i in range(n):
                h, w = (int(v) for v in rng.integers(20, 60, 2))
                im = Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
                im.save(root / split / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    return str(root)


def _batches(source, **kw):
    kw = {"batch_size": 6, "seed": 3, "image_size": 16, **kw}
    return list(stream.make_loader(source, **kw).host_batches())


def _same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=k)


def test_folder_listed_without_decoding(folder, monkeypatch):
    monkeypatch.setattr(data.sources, "decode_image", None)  # any decode would fail
    src = stream.open_source(f"folder:{folder}")
    assert len(src) == 24 and src.class_names == ["cat", "dog", "fox"] and src.channels == 3
    np.testing.assert_array_equal(src.labels(), np.repeat([0, 1, 2], N_PER_CLASS))
    assert len(stream.open_source(f"folder:{folder}", "test")) == 6
    train, val = stream.split_validation_source(src, val_per_class=2, seed=0)
    assert len(train) == 18 and len(val) == 6
    np.testing.assert_array_equal(np.bincount(val.labels()), [2, 2, 2])
    assert [len(ix) for ix in stream.class_index(train)] == [6, 6, 6]


def test_resume_gives_the_same_batches(folder):
    src = stream.open_source(f"folder:{folder}")
    full = _batches(src, num_epochs=3)
    assert len(full) == 12  # 24 // 6 = 4 steps per epoch
    _same(_batches(src, num_epochs=3, start_step=5), full[5:])
    # epochs differ in order
    assert not np.array_equal(full[0]["index"], full[4]["index"])
    assert sorted(np.concatenate([b["index"] for b in full[4:8]])) == list(range(24))


def test_two_processes_read_disjoint_shards_covering_the_epoch(folder):
    src = stream.open_source(f"folder:{folder}")
    whole = _batches(src, num_epochs=1)
    parts = [_batches(src, num_epochs=1, process_index=p, process_count=2) for p in (0, 1)]
    seen = [np.concatenate([b["index"] for b in part]) for part in parts]
    assert not set(seen[0]) & set(seen[1])
    assert sorted(np.concatenate(seen)) == list(range(24))
    for b, b0, b1 in zip(whole, *parts):  # the global batch does not depend on P
        np.testing.assert_array_equal(b["image"], np.concatenate([b0["image"], b1["image"]]))
    # eval: one padded pass in stored order, also split over the processes
    ev = [_batches(src, train=False, batch_size=4, process_index=p, process_count=2)
          for p in (0, 1)]
    idx = np.concatenate([b["index"] for part in ev for b in part])
    assert sorted(idx[idx >= 0]) == list(range(24))


def test_variable_size_images_decode_to_the_configured_size(folder):
    src = stream.open_source(f"folder:{folder}", "test")
    for train, size in ((True, 16), (False, 24)):
        for b in _batches(src, train=train, image_size=size, num_epochs=1):
            assert b["image"].shape == (6, size, size, 3) and b["image"].dtype == np.uint8
            assert b["mask"].all()
    # eval = torchvision Resize(shorter side 27) + CenterCrop(24), by hand
    b = _batches(src, train=False, image_size=24, resize_size=27)[0]
    with Image.open(src.paths[1]) as im:
        w, h = im.size
        size = (27, int(27 * h / w)) if w <= h else (int(27 * w / h), 27)
        im = im.convert("RGB").resize(size, Image.BILINEAR)
        top, left = round((size[1] - 24) / 2), round((size[0] - 24) / 2)
        want = np.asarray(im.crop((left, top, left + 24, top + 24)))
    np.testing.assert_array_equal(b["image"][1], want)


def test_augmentation_is_a_function_of_seed_epoch_index(folder):
    src = stream.open_source(f"folder:{folder}")
    a = _batches(src, num_epochs=2)
    by_key = {(e, int(i)): x for e in (0, 1) for b in a[4 * e:4 * e + 4]
              for i, x in zip(b["index"], b["image"])}
    b = _batches(src, num_epochs=2, process_index=1, process_count=2, batch_size=12)
    for s, batch in enumerate(b):
        for i, x in zip(batch["index"], batch["image"]):
            np.testing.assert_array_equal(x, by_key[(s // 2, int(i))])
    assert any(not np.array_equal(by_key[(0, i)], by_key[(1, i)]) for i in range(24))
    c = _batches(src, num_epochs=1, seed=4)
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    # the crop box itself: torchvision's ranges, same draw for the same generator
    for seed in range(50):
        box = stream.random_resized_crop_box(40, 30, np.random.default_rng(seed))
        assert box == stream.random_resized_crop_box(40, 30, np.random.default_rng(seed))
        w, h = box[2] - box[0], box[3] - box[1]
        assert 0 <= box[0] < box[2] <= 40 and 0 <= box[1] < box[3] <= 30
        assert 0.08 * 1200 * 0.8 <= w * h and 3 / 4 * 0.8 <= w / h <= 4 / 3 * 1.25


def test_corrupt_image_is_named_skipped_and_counted(folder, tmp_path, caplog):
    import shutil
    root = tmp_path / "bad"
    shutil.copytree(folder, root)
    bad = root / "train" / "cat" / "9.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    src = stream.open_source(f"folder:{root}")
    assert len(src) == 25
    with caplog.at_level(logging.WARNING, logger="jaxdd.data.stream"):
        loader = stream.make_loader(src, batch_size=5, seed=0, image_size=16, num_epochs=1)
        batches = list(loader.host_batches())
    assert loader.corrupt == [str(bad)]
    assert str(bad) in caplog.text and "1 so far" in caplog.text
    masked = np.concatenate([b["index"][~b["mask"]] for b in batches])
    assert [src.paths[i] for i in masked] == [str(bad)]
    assert all(b["image"][~b["mask"]].max(initial=0) == 0 for b in batches)
    strict = stream.make_loader(src, batch_size=5, seed=0, image_size=16, num_epochs=1,
                                on_corrupt="error")
    with pytest.raises(ValueError, match=f"cannot read image {bad}"):
        list(strict.host_batches())


def test_memory_source_gives_the_existing_arrays(tiny_npz):
    ds = data.load_dataset(f"npz:{tiny_npz}", val_per_class=5)
    src = stream.memory_source(ds, "train")
    ev = _batches(src, train=False, image_size=None, batch_size=64)
    x = np.concatenate([b["image"][b["mask"]] for b in ev])
    np.testing.assert_array_equal(x, ds.x_train)
    np.testing.assert_array_equal(np.concatenate([b["label"][b["mask"]] for b in ev]),
                                  ds.y_train)
    for b in _batches(src, image_size=None, flip=False, batch_size=64, num_epochs=1):
        np.testing.assert_array_equal(b["image"], ds.x_train[b["index"]])
        np.testing.assert_array_equal(b["label"], ds.y_train[b["index"]])
    val = stream.memory_source(ds, "val")
    np.testing.assert_array_equal(val.labels(), ds.y_val)


def test_device_batches_are_sharded_and_preprocessed(tiny_npz):
    ds = data.load_dataset(f"npz:{tiny_npz}", val_per_class=5)
    pre = data.fit_preprocess("normalize", ds.x_train)
    src = stream.memory_source(ds, "test")
    mesh = jax.sharding.Mesh(np.array(jax.devices()), ("batch",))
    sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
    loader = stream.make_loader(src, batch_size=30, train=False, image_size=None,
                                sharding=sharding, preprocess=pre)
    batches = list(loader)
    assert len(batches) == len(loader) == 3
    b = batches[0]
    assert isinstance(b["image"], jax.Array) and b["image"].dtype == np.float32
    assert b["image"].sharding == sharding and b["label"].shape == (30,)
    np.testing.assert_allclose(np.asarray(b["image"]), data.apply(pre, ds.x_test[:30]),
                               rtol=1e-6, atol=1e-6)


def test_worker_processes_give_the_same_batches(folder):
    src = stream.open_source(f"folder:{folder}")
    _same(_batches(src, num_epochs=1, worker_count=1), _batches(src, num_epochs=1))


def test_mock_imagenet2012_variable_sizes_and_1000_classes(tmp_path):
    with tfds.testing.mock_data(num_examples=40):
        src = stream.open_source("imagenet2012", "train", data_dir=str(tmp_path))
        assert len(src) == 40 and len(src.class_names) == 1000 and src.image_shape is None
        y = src.labels()
        assert y.dtype == np.int32 and y.min() >= 0 and y.max() < 1000
        sizes = {src.read(i)[0].shape for i in range(5)}
        assert len(sizes) > 1  # the mock gives variable-size images
        for b in _batches(src, batch_size=8, image_size=32, num_epochs=1):
            assert b["image"].shape == (8, 32, 32, 3) and b["mask"].all()
            np.testing.assert_array_equal(b["label"], y[b["index"]])
        ev = _batches(stream.open_source("imagenet2012", "test", data_dir=str(tmp_path)),
                      train=False, batch_size=16, image_size=32)
        assert len(ev) == 3 and ev[-1]["mask"].sum() == 8
        assert src.split == "train"


def test_imagenet_manual_files_missing_is_one_line(tmp_path):
    with pytest.raises(ValueError) as e:
        stream.open_source("imagenet2012", data_dir=str(tmp_path))
    msg = str(e.value)
    assert "\n" not in msg and "ILSVRC2012_img_train.tar" in msg
    assert os.path.join(str(tmp_path), "downloads", "manual") in msg


class _JpegBuilder(tfds.core.GeneratorBasedBuilder):
    """12 variable-size JPEGs in 3 classes, stored encoded in ArrayRecord."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, supervised_keys=("image", "label"), disable_shuffling=True,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
                "label": tfds.features.ClassLabel(names=["a", "b", "c"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        import io
        rng = np.random.default_rng(1)
        for i in range(12):
            h, w = (int(v) for v in rng.integers(20, 60, 2))
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(buf, "JPEG")
            yield i, {"image": buf.getvalue(), "label": i % 3}


def test_arrayrecord_source_reads_encoded_records(tmp_path, monkeypatch):
    builder = _JpegBuilder(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    monkeypatch.setattr(data.sources, "tfds_builder", lambda *a: builder)
    src = stream.open_source("jpeg_builder", data_dir=str(tmp_path))
    image, label = src.read(4)
    assert isinstance(image, bytes) and image[:2] == b"\xff\xd8" and label == 1
    np.testing.assert_array_equal(src.labels(), np.arange(12) % 3)
    for b in _batches(src, batch_size=4, image_size=24, num_epochs=1):
        assert b["image"].shape == (4, 24, 24, 3) and b["mask"].all()


def test_read_images_same_with_any_thread_count(folder):
    """RDED pools / real init decode their records on threads: the images and their order
    do not depend on the thread count, and equal the eval loader's resize + centre crop."""
    src = stream.open_source(f"folder:{folder}", "train")
    idx = np.array([5, 0, 17, 3, 3, 22, 9])
    one = stream.read_images(src, idx, (16, 16, 3), threads=1)
    assert one.shape == (7, 16, 16, 3) and one.dtype == np.uint8
    for t in (2, 4, 0):
        np.testing.assert_array_equal(stream.read_images(src, idx, (16, 16, 3), threads=t), one)
    np.testing.assert_array_equal(one[3], one[4])
    assert not np.array_equal(one[0], one[1])
    first = _batches(src, train=False, num_epochs=1, image_size=16)[0]  # eval: in order
    np.testing.assert_array_equal(one[1], first["image"][0])


def test_tfds_dir_source_opens_a_prepared_directory(tmp_path):
    """`tfds_dir:PATH`: a TFDS dataset prepared elsewhere (a custom builder here) is read from
    its version folder without its builder class; the in-memory loader refuses its variable
    sizes in one line; a folder that is not a prepared dataset is a one-line error."""
    builder = _JpegBuilder(data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    src = stream.open_source(f"tfds_dir:{builder.data_dir}")
    assert len(src) == 12 and src.class_names == ["a", "b", "c"]
    np.testing.assert_array_equal(src.labels(), np.arange(12) % 3)
    image, label = src.read(7)
    assert isinstance(image, bytes) and image[:2] == b"\xff\xd8" and label == 1
    with pytest.raises(ValueError, match="one fixed"):
        data.load_dataset(f"tfds_dir:{builder.data_dir}")
    with pytest.raises(ValueError) as e:
        stream.open_source(f"tfds_dir:{tmp_path}/nowhere")
    assert "\n" not in str(e.value) and "dataset_info.json" in str(e.value)
