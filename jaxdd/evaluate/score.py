"""Fair-comparison scores (DD-Ranking's figures) of a distilled set: `jaxdd score DIR`.

Every accuracy comes from the same protocol, model and seed keys (`evaluate_set`): the set
with and without augmentation, with hard labels (the argmax of its logits) and, where it
has them, with its soft labels; a random real subset of the same IPC drawn from the same
key; the full training set (hard labels). With accuracies in [0, 1], per seed s (the set
and the random subset train from the same key of seed s; the full-data accuracy is one
number):

    HLR  = acc_full_hard - acc_syn_hard                       (hard-label recovery; lower is better)
    IOR  = acc_syn - acc_rand                                 (improvement over random)
    LRS  = (exp(w IOR - (1 - w) HLR) - e^-1) / (e - e^-1)     (label-robust score, w = 0.5)
    ARS  = (exp(g IOR_aug + (1 - g) IOR_noaug) - e^-1) / (e - e^-1)   (augmentation-robust, g = 0.5)

acc_syn is the set's own evaluation (soft labels if it has them, else hard), acc_rand the
random subset's (its true hard labels); `_aug` / `_noaug` are the protocol with and without
its augmentation (HLR and IOR without a suffix use augmentation, the protocol's default).
LRS and ARS map [-1, 1] to [0, 1] (DD-Ranking, Li et al. 2025, "DD-Ranking: rethinking the
evaluation of dataset distillation"; its defaults w = g = 0.5). Figures are computed per
seed and reported as mean and std, as DD-Ranking does over its evaluation runs.

The full-data accuracy is costly, so it is cached (`$JAXDD_FULL_CACHE`, default
~/.cache/jaxdd/full/), keyed by the dataset (name and fingerprint), the fitted
preprocessing, the full-data recipe, the model, the seed count and the seed; `jaxdd full`
fills the same cache, and `--full-acc` gives a known number instead.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Callable

import jax
import numpy as np

from jaxdd import artefact, safeio
from jaxdd import data as jdata
from jaxdd.evaluate.baselines import select
from jaxdd.evaluate.core import eval_data, evaluate_set
from jaxdd.evaluate.protocols import Protocol, get_protocol

SCORE_FILE = "score.json"
FULL_CACHE_ENV = "JAXDD_FULL_CACHE"
RANDOM_KEY = 3  # the random subset's selection key: fold_in(key(seed), 3), as `distill`
FORMULAS = {
    "hlr": "acc_full_hard - acc_syn_hard_aug",
    "hlr_noaug": "acc_full_hard - acc_syn_hard_noaug",
    "ior": "acc_syn_aug - acc_rand_aug",
    "ior_noaug": "acc_syn_noaug - acc_rand_noaug",
    "lrs": "(exp(w * ior - (1 - w) * hlr) - exp(-1)) / (exp(1) - exp(-1))",
    "ars": "(exp(g * ior + (1 - g) * ior_noaug) - exp(-1)) / (exp(1) - exp(-1))",
}


def normalised_exp(alpha: np.ndarray | float) -> np.ndarray:
    """DD-Ranking's map of a score in [-1, 1] to [0, 1]: (e^a - e^-1) / (e - e^-1)."""
    return (np.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))


def label_robust_score(hlr, ior, w: float = 0.5) -> np.ndarray:
    """LRS = normalised_exp(w IOR - (1 - w) HLR) (accuracies in [0, 1])."""
    return normalised_exp(w * np.asarray(ior) - (1 - w) * np.asarray(hlr))


def augmentation_robust_score(ior_aug, ior_noaug, g: float = 0.5) -> np.ndarray:
    """ARS = normalised_exp(g IOR_aug + (1 - g) IOR_noaug)."""
    return normalised_exp(g * np.asarray(ior_aug) + (1 - g) * np.asarray(ior_noaug))


def figures(acc: dict[str, list[float]], full: float, w: float = 0.5, g: float = 0.5
            ) -> dict[str, dict[str, Any]]:
    """HLR, IOR (with / without augmentation), LRS and ARS per seed from the accuracies
    `acc[name]` (per seed; names syn_hard_aug, syn_hard_noaug, rand_aug, rand_noaug and,
    for a soft-label set, syn_soft_aug, syn_soft_noaug) and the full-data accuracy."""
    a = {k: np.asarray(v, np.float64) for k, v in acc.items()}
    label = "soft" if "syn_soft_aug" in a else "hard"
    per_seed = {
        "hlr": full - a["syn_hard_aug"],
        "hlr_noaug": full - a["syn_hard_noaug"],
        "ior": a[f"syn_{label}_aug"] - a["rand_aug"],
        "ior_noaug": a[f"syn_{label}_noaug"] - a["rand_noaug"],
    }
    per_seed["lrs"] = label_robust_score(per_seed["hlr"], per_seed["ior"], w)
    per_seed["ars"] = augmentation_robust_score(per_seed["ior"], per_seed["ior_noaug"], g)
    return {k: {"mean": float(v.mean()), "std": float(v.std()), "per_seed": v.tolist()}
            for k, v in per_seed.items()}


# ---------------------------------------------------------------------------------------
# The full-data accuracy, cached


def full_protocol(protocol: Protocol, epochs: int | None = None) -> Protocol:
    """The protocol whose `train` is its full-data recipe (what `jaxdd full` trains)."""
    full = protocol.full_train if not epochs else dataclasses.replace(protocol.full_train,
                                                                       epochs=epochs)
    return dataclasses.replace(protocol, train=full)


def full_cache_path(ds: jdata.Dataset, pre: jdata.Preprocess, protocol: Protocol,
                    model: str, seeds: int, seed: int) -> str:
    """Where the full-data result of this (dataset, preprocessing, recipe, model, seeds,
    seed) is cached."""
    from jaxdd.population.train import dataset_fingerprint, preprocess_sha
    key = {"dataset": ds.name, "fingerprint": dataset_fingerprint(ds.x_train, ds.y_train),
           "preprocess": pre.kind, "preprocess_sha256": preprocess_sha(pre),
           "train": dataclasses.asdict(protocol.train), "protocol": protocol.name,
           "model": model, "seeds": seeds, "seed": seed}
    root = os.environ.get(FULL_CACHE_ENV, os.path.expanduser("~/.cache/jaxdd/full"))
    return os.path.join(root, f"{safeio.fingerprint(key)}.json")


def cached_full(path: str) -> dict | None:
    try:
        with open(path) as f:
            res = json.load(f)
        return res if isinstance(res, dict) and "accuracy_mean" in res else None
    except (OSError, ValueError):
        return None


def store_full(path: str, res: dict) -> None:
    """Cache a full-data result; a cache that cannot be written is skipped, not fatal."""
    try:
        safeio.makedirs(os.path.dirname(path))
        safeio.write_json(path, res)
    except safeio.OutputError:
        pass


def full_accuracy(key: jax.Array, ds: jdata.Dataset, pre: jdata.Preprocess,
                  protocol: Protocol, model: str | None, seeds: int, seed: int,
                  progress: Callable[[str], Any] | None = None) -> dict:
    """The full training set under `protocol`'s full-data recipe: from the cache, else
    trained (and cached). `protocol` is already the full-data one (`full_protocol`)."""
    model = model or protocol.model
    path = full_cache_path(ds, pre, protocol, model, seeds, seed)
    res = cached_full(path)
    if res is not None:
        return {**res, "source": "cache", "cache": path}
    res = evaluate_set(key, jdata.apply(pre, ds.x_train), ds.y_train, eval_data(ds, pre),
                       protocol, seeds, model_name=model,
                       progress=progress("full data") if progress else None)
    res.update(method="full", dataset=ds.name)
    store_full(path, res)
    return {**res, "source": "computed", "cache": path}


# ---------------------------------------------------------------------------------------
# The score of an artefact


def score(path: str, ds: jdata.Dataset, protocol: str, seeds: int, seed: int, *,
          model: str | None = None, overrides: dict | None = None,
          full_acc: float | None = None, full_seeds: int = 1, full_epochs: int | None = None,
          w: float = 0.5, g: float = 0.5,
          progress: Callable[[str], Any] | None = None) -> dict:
    """Evaluate the artefact at `path` and its baselines (module docstring) on `ds`, the
    dataset it was made from; returns the score record (`score.json`'s content)."""
    art = artefact.load(path)
    if tuple(ds.image_shape) != tuple(art.x_syn_NHWC.shape[1:]):
        raise ValueError(f"{path} holds {tuple(art.x_syn_NHWC.shape[1:])} images, dataset "
                         f"{ds.name} has {tuple(ds.image_shape)}")
    key = jax.random.key(seed)
    ipc = int(art.meta["ipc"])
    data = eval_data(ds, art.preprocess)
    idx = select("random", jax.random.fold_in(key, RANDOM_KEY), ds, art.preprocess, ipc)
    x_rand, y_rand = jdata.apply(art.preprocess, ds.x_train[idx]), ds.y_train[idx]
    y_hard = (art.y_syn if art.y_syn.ndim == 1 else art.y_syn.argmax(-1)).astype(np.int32)
    soft = art.y_syn.ndim == 2
    runs: dict[str, dict] = {}
    for aug in (True, False):
        proto = get_protocol(protocol, augment=aug, **(overrides or {}))
        tag = "aug" if aug else "noaug"
        sets = [("syn_hard", art.x_syn_NHWC, y_hard, art.lr)]
        if soft:
            sets.append(("syn_soft", art.x_syn_NHWC, art.y_syn, art.lr))
        sets.append(("rand", x_rand, y_rand, None))
        for name, x, y, lr in sets:
            runs[f"{name}_{tag}"] = evaluate_set(
                key, x, y, data, proto, seeds, lr=lr, model_name=model,
                progress=progress(f"{name} {tag}") if progress else None)
    if full_acc is not None:
        full = {"accuracy_mean": float(full_acc), "source": "given (--full-acc)"}
    else:
        full = full_accuracy(key, ds, art.preprocess,
                             full_protocol(get_protocol(protocol), full_epochs),
                             model, full_seeds, seed, progress)
    acc = {k: r["accuracies"] for k, r in runs.items()}
    first = runs["syn_hard_aug"]
    return {
        "artefact": os.path.abspath(path), "method": art.meta.get("method"),
        "dataset": ds.name, "ipc": ipc, "num_images": int(len(art.y_syn)),
        "label_kind": "soft" if soft else "hard", "protocol": protocol,
        "model": first["model"], "seeds": seeds, "seed": seed,
        "epochs": first["epochs"], "lr": art.lr,
        "random_subset": {"ipc": ipc, "key": f"fold_in(key({seed}), {RANDOM_KEY})",
                          "labels": "hard"},
        "weights": {"lrs_w": w, "ars_g": g},
        "accuracy": {k: {"mean": r["accuracy_mean"], "std": r["accuracy_std"],
                         "per_seed": r["accuracies"], "augment": r["augment"]}
                     for k, r in runs.items()},
        "full": full,
        "figures": figures(acc, float(full["accuracy_mean"]), w, g),
        "formulas": FORMULAS,
    }


def write(path: str, record: dict) -> str:
    """DIR/score.json, atomically (the only file `jaxdd score` writes in the artefact)."""
    out = os.path.join(path, SCORE_FILE)
    safeio.write_json(out, record)
    return out
