"""RS2 (Okanovic et al. 2023): repeated random sampling without replacement, a training-time
baseline for data reduction, against full-data training at the same number of steps.

Each epoch ("round") trains on a fresh r-fraction of the training set, m = round(r N)
examples. Without replacement across epochs: the rounds are consecutive windows of m in the
stream perm_0 ++ perm_1 ++ ... of independent permutations of the N indices (permutation p
from fold_in(key, p)), so every example is seen exactly once in each stretch of N draws:
exactly once per 1/r epochs when m divides N. Within a round the m examples are reshuffled
by the one training loop (`train_epochs`, one epoch each); the lr schedule spans the E
rounds' steps.

The full-data reference trains the same network, recipe and seeds on all N examples for
the whole number of epochs (at least 1) nearest to RS2's step count: the same number of
steps when that count is a multiple of a full epoch's (r E whole and the batch size divides
m and N), else the nearest (the result reports both counts). Both runs record test
accuracy after every chunk of epochs with the wall time (training only, compile included,
evaluation excluded), which gives steps- and time-to-accuracy.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.evaluate.core import EvalData, chunk_size, _seed_sharding, accuracies, augment_fn
from jaxdd.evaluate.protocols import Protocol
from jaxdd.models import Model, get_model
from jaxdd.run import mesh as jmesh
from jaxdd.train import TrainConfig, train_epochs, train_init
from jaxdd.train.loop import steps_per_epoch


def round_size(n: int, ratio: float) -> int:
    """m = round(ratio n) examples per round; one-line errors for a ratio outside (0, 1]."""
    if not 0 < ratio <= 1:
        raise ValueError(f"RS2 ratio must lie in (0, 1], got {ratio}")
    m = int(round(ratio * n))
    if m < 1:
        raise ValueError(f"RS2 ratio {ratio} of {n} training images is less than one image "
                         f"per epoch; use a ratio >= {1 / n:.2g}")
    return m


def rs2_schedule(key: jax.Array, n: int, m: int, epochs: int) -> np.ndarray:
    """(epochs, m) indices: epoch e = window e of m in the stream of permutations of n."""
    passes = -(-epochs * m // n)
    stream = np.concatenate([np.asarray(jax.random.permutation(jax.random.fold_in(key, p), n))
                             for p in range(passes)])
    return stream[:epochs * m].reshape(epochs, m).astype(np.int32)


def _curve_run(keys, model: Model, cfg: TrainConfig, x, y_onehot, data: EvalData,
               epochs: int, n_round: int, schedule: np.ndarray | None, mesh) -> dict:
    """Train len(keys) networks (vmapped) for `epochs` epochs of `n_round` examples each
    (RS2 rounds from `schedule`, or the full data when None); test accuracy per chunk."""
    sharding = _seed_sharding(mesh, len(keys))
    cfg_run = dataclasses.replace(cfg, epochs=epochs)
    aug = augment_fn(cfg_run)
    init = jax.jit(jax.vmap(lambda k: train_init(k, model, cfg_run, n_round)))
    chunk = chunk_size(epochs)

    if schedule is None:
        def run(state, x, y, idx_CxM):
            return train_epochs(state, model, cfg_run, x, y, chunk, aug)
    else:
        def run(state, x, y, idx_CxM):
            def one(state, idx_M):   # one RS2 round: one epoch of the loop on its subset
                return train_epochs(state, model, cfg_run, x[idx_M], y[idx_M], 1, aug), None
            return jax.lax.scan(one, state, idx_CxM)[0]

    step = jax.jit(jax.vmap(run, in_axes=(0, None, None, None)), donate_argnums=(0,))
    state = jax.device_put(init(jmesh.put(keys, sharding)), sharding)
    spe = steps_per_epoch(n_round, cfg_run.batch_size)
    curve, seconds = [], 0.0
    for done in range(0, epochs, chunk):
        idx = (jnp.zeros((chunk, 1), jnp.int32) if schedule is None
               else jnp.asarray(schedule[done:done + chunk]))
        t0 = time.perf_counter()
        state = step(state, x, y_onehot, idx)
        jax.block_until_ready(state.epoch)
        seconds += time.perf_counter() - t0
        acc = accuracies(model, state.variables, data.x_test, data.y_test)
        curve.append({"epoch": done + chunk, "steps": (done + chunk) * spe,
                      "seconds": round(seconds, 3), "accuracy_mean": float(acc.mean())})
    final = accuracies(model, state.variables, data.x_test, data.y_test)
    return {"epochs": epochs, "examples_per_epoch": n_round, "steps": epochs * spe,
            "accuracy_mean": float(final.mean()), "accuracy_std": float(final.std()),
            "accuracies": final.tolist(), "train_seconds": round(seconds, 2), "curve": curve}


def time_to_accuracy(curve: list[dict], target: float) -> dict:
    """First point of `curve` whose mean test accuracy reaches `target` (None when never)."""
    for p in curve:
        if p["accuracy_mean"] >= target:
            return {"steps": p["steps"], "seconds": p["seconds"], "epoch": p["epoch"]}
    return {"steps": None, "seconds": None, "epoch": None}


def rs2_vs_full(key: jax.Array, x_NHWC: np.ndarray, y: np.ndarray, data: EvalData,
                protocol: Protocol, ratio: float, epochs: int | None = None, seeds: int = 1,
                model_name: str | None = None, target: float | None = None,
                mesh: jax.sharding.Mesh | None = None) -> dict:
    """RS2 at `ratio` for `epochs` rounds (default: the protocol's full-data steps, i.e.
    ceil(full epochs / ratio)) and full-data training at the same steps, with the protocol's
    full-data recipe; time-to-accuracy at `target` (default: the lower final accuracy)."""
    n = len(y)
    m = round_size(n, ratio)
    cfg = protocol.full_train
    epochs = epochs or -(-cfg.epochs * n // m)
    model = get_model(model_name or protocol.model, data.num_classes, data.image_shape)
    mesh = mesh or jmesh.make_mesh()
    repl = jmesh.replicated(mesh)
    x = jmesh.put(np.asarray(x_NHWC, np.float32), repl)
    y1 = jmesh.put(np.asarray(jax.nn.one_hot(y, data.num_classes, dtype=jnp.float32)), repl)
    k_sched, k_seeds = jax.random.split(key)
    keys = jax.random.split(k_seeds, seeds)   # the same seed keys for both runs
    schedule = rs2_schedule(k_sched, n, m, epochs)
    rs2 = _curve_run(keys, model, cfg, x, y1, data, epochs, m, schedule, mesh)
    steps = epochs * steps_per_epoch(m, cfg.batch_size)
    full_epochs = max(1, int(round(steps / steps_per_epoch(n, cfg.batch_size))))
    full = _curve_run(keys, model, cfg, x, y1, data, full_epochs, n, None, mesh)
    target = min(rs2["accuracy_mean"], full["accuracy_mean"]) if target is None else target
    for r in (rs2, full):
        r["time_to_accuracy"] = time_to_accuracy(r["curve"], target)
    return {"method": "rs2", "ratio": ratio, "protocol": protocol.name, "model": model.name,
            "seeds": seeds, "batch_size": cfg.batch_size, "target_accuracy": target,
            "rs2": rs2, "full": full}
