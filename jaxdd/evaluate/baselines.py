"""Coreset baselines every table needs: random, herding, k-center; and the full data.

Selections are per class and return indices into the training split, so the selected
set is real images, preprocessed exactly as the distilled sets are.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import data as jdata
from jaxdd.models import embed, get_model
from jaxdd.train import TrainConfig, train_network

SELECTORS = ("random", "herding", "kcenter")


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
           features: str = "pixels") -> np.ndarray:
    """Indices (num_classes * ipc,) into ds.x_train, ordered by class."""
    if method not in SELECTORS:
        raise ValueError(f"unknown baseline {method!r}; use one of {', '.join(SELECTORS)}")
    if method == "random":
        return jdata.sample_indices_per_class(key, ds, ipc)
    jdata.check_ipc(ds, ipc)
    feats = feature_fn(ds, pre, features, key)
    pick = herding if method == "herding" else kcenter
    return np.concatenate([np.asarray(ix)[pick(feats(ds.x_train[ix]), ipc)]
                           for ix in ds.class_indices])
