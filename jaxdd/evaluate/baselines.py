"""Coreset baselines every table needs: random, herding, k-center, Dataset Quantization
(DQ); and the full data.

Selections are per class and return indices into the training split, so the selected
set is real images, preprocessed exactly as the distilled sets are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import data as jdata
from jaxdd.data import stream
from jaxdd.data.sources import sample_from_classes
from jaxdd.models import embed, get_model
from jaxdd.train import TrainConfig, train_network

SELECTORS = ("random", "herding", "kcenter", "dq")
DQ_BINS = 10   # bins per class (`select(..., bins=)`, `jaxdd baseline dq --bins`)


def herding(feat_NxD: np.ndarray, k: int) -> np.ndarray:
    """Greedy mean matching (Welling 2009): pick the point that brings the running mean
    of the selection closest to the class mean."""
    feat = np.asarray(feat_NxD, np.float64)
    mu = feat.mean(0)
    chosen: list[int] = []
    total = np.zeros_like(mu)
    avail = np.ones(len(feat), bool)
    for i in range(k):
        d = np.linalg.norm(mu[None] - (total[None] + feat) / (i + 1), axis=1)
        d[~avail] = np.inf
        j = int(np.argmin(d))
        chosen.append(j)
        avail[j] = False
        total += feat[j]
    return np.array(chosen)


def kcenter(feat_NxD: np.ndarray, k: int) -> np.ndarray:
    """k-center greedy (Sener & Savarese 2018), started from the point nearest the mean."""
    feat = np.asarray(feat_NxD, np.float64)
    first = int(np.argmin(np.linalg.norm(feat - feat.mean(0), axis=1)))
    chosen = [first]
    dmin = np.linalg.norm(feat - feat[first], axis=1)
    for _ in range(k - 1):
        j = int(np.argmax(dmin))
        chosen.append(j)
        dmin = np.minimum(dmin, np.linalg.norm(feat - feat[j], axis=1))
    return np.array(chosen)


def _cosine_NxN(feat_NxD: np.ndarray) -> np.ndarray:
    f = np.asarray(feat_NxD, np.float64)
    f = f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return (f @ f.T).astype(np.float32)   # float32: a 6000-image class is 144 MB


def dq_bins(feat_NxD: np.ndarray, num_bins: int, lam: float = 1.0) -> list[np.ndarray]:
    """Dataset Quantization's bins (Zhou et al. 2023): `num_bins` disjoint sets covering
    range(N), sizes as equal as possible (larger first). Bin b is picked greedily from the
    points no earlier bin took by the GraphCut gain on cosine similarities s (as DQ's code):

        gain(x | S_b) = lam * sum_{p in remaining} s(p, x) - 2 * sum_{q in S_b} s(q, x),

    i.e. representative of what remains (first term) and diverse within the bin (second);
    the last bin is the remainder. Deterministic: ties go to the lowest index."""
    n = len(feat_NxD)
    if not 1 <= num_bins <= n:
        raise ValueError(f"DQ needs 1 <= bins <= the images of a class; got {num_bins} bins "
                         f"for {n} images")
    sim = _cosine_NxN(feat_NxD)
    sizes = [len(a) for a in np.array_split(np.arange(n), num_bins)]
    avail = np.ones(n, bool)
    bins = []
    for size in sizes[:-1]:
        col_sum = sim[avail].sum(0)          # sum over the remaining points p
        in_bin = np.zeros(n, np.float32)     # sum over the bin's points q
        chosen = []
        for _ in range(size):
            gain = lam * col_sum - 2.0 * in_bin
            gain[~avail] = -np.inf
            j = int(np.argmax(gain))
            chosen.append(j)
            avail[j] = False
            in_bin += sim[j]
        bins.append(np.array(chosen))
    bins.append(np.flatnonzero(avail))
    return bins


def dq(feat_NxD: np.ndarray, k: int, key: jax.Array, num_bins: int = DQ_BINS) -> np.ndarray:
    """DQ selection: k points sampled uniformly from every bin of `dq_bins` (k // bins from
    each, the remainder one more from bins drawn by `key`); with fewer points than bins
    (k < num_bins) the class is cut into k bins, one point from each."""
    bins = dq_bins(feat_NxD, min(num_bins, k, len(feat_NxD)))
    rng = np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel())
    counts = np.full(len(bins), k // len(bins))
    counts[rng.choice(len(bins), k % len(bins), replace=False)] += 1
    return np.concatenate([rng.choice(b, c, replace=False) for b, c in zip(bins, counts)])


def feature_fn(ds: jdata.Dataset, pre: jdata.Preprocess, features: str, key: jax.Array,
               model_name: str = "convnet_d3_w64", epochs: int = 1):
    """Map uint8 images -> feature vectors. 'pixels': preprocessed pixels; 'convnet': the
    embedding of a ConvNet trained `epochs` on the full training set (as DC's herding)."""
    if features == "pixels":
        return lambda x: jdata.apply(pre, x).reshape(len(x), -1)
    if features != "convnet":
        raise ValueError(f"unknown feature space {features!r}; use pixels or convnet")
    model = get_model(model_name, ds.num_classes, ds.image_shape)
    cfg = TrainConfig(epochs=epochs, dsa="")
    variables = jax.jit(lambda k, x, y: train_network(k, model, cfg, x, y))(
        key, jnp.asarray(jdata.apply(pre, ds.x_train)), jnp.asarray(ds.y_train))
    f = jax.jit(lambda x: embed(model, variables, x))
    return lambda x: np.concatenate([np.asarray(f(jdata.apply(pre, x[i:i + 1000])))
                                     for i in range(0, len(x), 1000)])


def select(method: str, key: jax.Array, ds: jdata.Dataset, pre: jdata.Preprocess, ipc: int,
           features: str = "pixels", bins: int = DQ_BINS) -> np.ndarray:
    """Indices (num_classes * ipc,) into ds.x_train, ordered by class. `bins`: DQ only."""
    if method not in SELECTORS:
        raise ValueError(f"unknown baseline {method!r}; use one of {', '.join(SELECTORS)}")
    if bins < 1:
        raise ValueError(f"DQ bins must be >= 1, got {bins}")
    if method == "random":
        return jdata.sample_indices_per_class(key, ds, ipc)
    jdata.check_ipc(ds, ipc)
    k_feat, k_pick = jax.random.split(key)
    feats = feature_fn(ds, pre, features, key if method != "dq" else k_feat)
    if method == "dq":   # per class, as DQ's balanced selection; class c samples with fold_in
        return np.concatenate([np.asarray(ix)[dq(feats(ds.x_train[ix]), ipc,
                                                 jax.random.fold_in(k_pick, c), bins)]
                               for c, ix in enumerate(ds.class_indices)])
    pick = herding if method == "herding" else kcenter
    return np.concatenate([np.asarray(ix)[pick(feats(ds.x_train[ix]), ipc)]
                           for ix in ds.class_indices])


def select_streamed(method: str, key: jax.Array, ds, ipc: int) -> np.ndarray:
    """Indices (num_classes * ipc,) into ds.train of a `StreamedDataset`, ordered by class,
    from the labels only (no image is read). Random only: the draw of `select("random")`
    over the same records, so a dataset streamed at its stored size gives the in-memory
    subset. Herding, k-center and DQ compute features of every training image."""
    if method != "random":
        raise ValueError(f"baseline {method} computes features of every training image and "
                         f"needs the dataset in memory; with streamed data (--image-size) use "
                         f"random")
    if ipc < 1:
        raise ValueError(f"IPC must be >= 1, got {ipc}")
    class_indices = stream.class_index(ds.train)
    counts = np.array([len(ix) for ix in class_indices])
    if counts.min() < ipc:
        k = int(counts.argmin())
        raise ValueError(f"class {k} of {ds.name} has {counts[k]} training images, fewer than "
                         f"the {ipc} asked for; lower --ipc")
    return sample_from_classes(key, class_indices, ipc)
