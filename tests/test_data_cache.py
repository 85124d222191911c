"""The decoded-array cache of prepared TFDS ArrayRecord datasets (jaxdd.data.sources)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdd.data import sources


class _SmallBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """20 train + 6 test greyscale 8x8 images in 2 classes, stored as ArrayRecord."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self, supervised_keys=("image", "label"), disable_shuffling=True,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
                "label": tfds.features.ClassLabel(names=["a", "b"])}))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(20, 0), "test": self._generate_examples(6, 1)}

    def _generate_examples(self, n, seed):
        rng = np.random.default_rng(seed)
        for i in range(n):
            yield i, {"image": rng.integers(0, 255, (8, 8, 1), dtype=np.uint8), "label": i % 2}


@pytest.fixture
def prepared(tmp_path, monkeypatch):
    builder = _SmallBuilder(data_dir=str(tmp_path / "tfds"), file_format="array_record")
    builder.download_and_prepare()
    cache = tmp_path / "cache"
    monkeypatch.setenv(sources.DATA_CACHE_ENV, str(cache))
    sources.clear_cache()
    yield f"tfds_dir:{builder.data_dir}", cache, builder.data_dir
    sources.clear_cache()


def _load(name, **kw):
    sources.clear_cache()
    return sources.load_dataset(name, val_per_class=0, **kw)


def _arrays(ds):
    return [ds.x_train, ds.y_train, ds.x_test, ds.y_test]


def _no_record_reads(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("records were read although the cache holds them")
    monkeypatch.setattr(sources, "_read_source", refuse)


def test_second_load_reads_the_cache_not_the_records(prepared, monkeypatch):
    name, cache, _ = prepared
    first = _load(name)
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("__small_builder-") and files[0].endswith(".npz")
    _no_record_reads(monkeypatch)
    second = _load(name)
    for a, b in zip(_arrays(first), _arrays(second)):
        np.testing.assert_array_equal(a, b)
    limited = _load(name, max_train=5, max_test=3)  # limits slice the cached arrays
    np.testing.assert_array_equal(limited.x_train, first.x_train[:5])
    np.testing.assert_array_equal(limited.y_test, first.y_test[:3])


def test_a_changed_dataset_folder_is_read_afresh(prepared):
    name, cache, folder = prepared
    _load(name)
    record = next(f for f in os.listdir(folder) if "train.array_record" in f)
    st = os.stat(os.path.join(folder, record))
    os.utime(os.path.join(folder, record), ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _load(name)
    assert len(os.listdir(cache)) == 2  # a new key, the old file left alone


def test_corrupt_or_foreign_cache_file_falls_back_to_the_records(prepared):
    name, cache, _ = prepared
    good = _arrays(_load(name))
    (path,) = [cache / f for f in os.listdir(cache)]
    path.write_bytes(b"not an npz")
    again = _arrays(_load(name))
    for a, b in zip(good, again):
        np.testing.assert_array_equal(a, b)
    np.savez(path, x_train=np.zeros((3, 4, 4, 1), np.uint8), y_train=np.zeros(3, np.int32),
             x_test=np.zeros((1, 4, 4, 1), np.uint8), y_test=np.zeros(1, np.int32))
    np.testing.assert_array_equal(_load(name).x_train, good[0])  # wrong shape: ignored
    with np.load(path) as f:
        np.testing.assert_array_equal(f["x_train"], good[0])  # and rewritten


def test_cache_off_limited_reads_and_unwritable_cache_write_nothing(prepared, monkeypatch,
                                                                    tmp_path):
    name, cache, _ = prepared
    _load(name, max_train=4)  # a partial read is not cached
    assert not cache.exists()
    monkeypatch.setenv(sources.DATA_CACHE_ENV, "off")
    _load(name)
    assert not cache.exists()
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    monkeypatch.setenv(sources.DATA_CACHE_ENV, str(blocker / "cache"))
    assert len(_load(name).y_train) == 20  # the load succeeds, nothing cached
    assert blocker.read_text() == "x"
    monkeypatch.setenv(sources.DATA_CACHE_ENV, str(cache))
    monkeypatch.setenv(sources.DATA_CACHE_MAX_ENV, "0")
    _load(name)
    assert not cache.exists()  # over the size limit
    monkeypatch.setenv(sources.DATA_CACHE_MAX_ENV, "two")
    with pytest.raises(ValueError, match="JAXDD_DATA_CACHE_MAX_GB must be a number"):
        _load(name)
