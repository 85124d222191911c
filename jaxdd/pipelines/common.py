"""Shared pipeline pieces: data + preprocessing, synthetic init, run, export, evaluate."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import numpy as np

from jaxdd import artefact, safeio
from jaxdd import data as jdata
from jaxdd.evaluate import eval_data, evaluate_set, get_protocol, select
from jaxdd.methods.base import Distiller
from jaxdd.pipelines.spec import RunOptions
from jaxdd.run import driver
from jaxdd.run.progress import Progress


class Context(NamedTuple):
    cfg: dict
    ds: jdata.Dataset
    pre: jdata.Preprocess
    key: jax.Array
    out_dir: str
    quiet: bool


class Prepared(NamedTuple):
    distiller: Distiller
    state: Any
    batch_fn: Callable[[Any, jax.Array, jax.Array], Any]  # (consts, key, t) -> batch
    consts: Any  # real data / expert buffers the batch_fn reads (replicated on the mesh)
    export: Callable[[Any], dict[str, tuple]]  # state -> {artefact name: (x, y, lr)}


def context(cfg: dict, out_dir: str, quiet: bool = False) -> Context:
    seed = int(cfg.get("seed", 0))
    ds = jdata.load_dataset(cfg["dataset"], seed=seed)
    jdata.check_ipc(ds, cfg["ipc"])
    pre = jdata.fit_preprocess(cfg.get("preprocess", "normalize"), ds.x_train, dataset_name=ds.name)
    return Context(cfg, ds, pre, jax.random.key(seed), out_dir, quiet)


def resumable_batch(path: str, compute: Callable[[], dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """A batch's arrays: loaded from `path` if an earlier (interrupted) run finished it, else
    computed and saved atomically, so a crash never leaves half a file to resume from."""
    if os.path.exists(path):
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    arrays = compute()
    safeio.savez(path, **arrays)
    return arrays


def init_images(ctx: Context, key: jax.Array) -> tuple[np.ndarray, np.ndarray]:
    """Initial synthetic set in model space: real images of each class, or noise."""
    ipc = ctx.cfg["ipc"]
    x, y = jdata.sample_per_class(key, ctx.ds, ipc)
    x = jdata.apply(ctx.pre, x)
    if ctx.cfg.get("init", "real") == "noise":
        x = np.asarray(jax.random.normal(key, x.shape), np.float32)
    elif ctx.cfg.get("init", "real") != "real":
        raise ValueError(f"unknown init {ctx.cfg['init']!r}; use real or noise")
    return x, y


def run_prepared(prepare: Callable[[Context], Prepared]) -> Callable[[Context, RunOptions], dict]:
    """A registry `run` for a method whose whole run is one Distiller through the driver."""
    def run(ctx: Context, options: RunOptions) -> dict:
        return run_and_export(ctx, prepare(ctx), options.resume_step, options.stop_after)
    return run


def run_and_export(ctx: Context, prep: Prepared, resume_step: int | None = None,
                   stop_after: int | None = None) -> dict:
    """Run the distiller (resuming if possible), save artefact(s); returns their paths."""
    cfg = ctx.cfg
    t0 = time.time()
    timings: dict = {}
    state, history = driver.run(
        prep.distiller, prep.state, prep.batch_fn, jax.random.fold_in(ctx.key, 1),
        cfg["iterations"], consts=prep.consts, mesh=mesh_from(cfg),
        run_dir=os.path.join(ctx.out_dir, "run"), config=cfg,
        ckpt_every=cfg.get("ckpt_every", 50), keep=cfg.get("ckpt_keep", 3),
        resume_step=resume_step, max_nonfinite=cfg.get("max_nonfinite", 10),
        progress=Progress(f"distill {cfg['method']}", enabled=not ctx.quiet),
        stop_after=stop_after, timings=timings)
    if timings.pop("last_iteration") < cfg["iterations"]:  # stop_after ended it early
        return {"stopped_early": True}
    seconds = round(time.time() - t0, 2)
    paths = {}
    exports = {k: tuple(_to_host(a) for a in v) for k, v in prep.export(state).items()}
    if jax.process_index() == 0:
        for name, (x, y, lr) in exports.items():
            path = os.path.join(ctx.out_dir, name)
            artefact.save(path, np.asarray(x), np.asarray(y), preprocess=ctx.pre,
                          method=cfg["method"], dataset=ctx.ds.name,
                          num_classes=ctx.ds.num_classes, ipc=cfg["ipc"],
                          seed=int(cfg.get("seed", 0)), config=cfg, lr=lr, overwrite=True,
                          extra={"distill_seconds": seconds, **timings,
                                 "final_loss": history[-1].get("loss") if history else None})
            paths[name] = path
    return {"artefacts": paths, "distill_seconds": seconds, **timings, "history": history}


def _to_host(a):
    """Host copy of a (possibly multi-process sharded) array; every process must call it."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return a if a is None or isinstance(a, float) else np.asarray(a)


def mesh_from(cfg: dict):
    """The config's `mesh` = {"shape": [...], "names": [...]} (default: all devices, 'data')."""
    from jaxdd.run.mesh import make_mesh
    m = cfg.get("mesh") or {}
    return make_mesh(m.get("shape"), m.get("names", ("data",)))


def evaluate_with_baseline(ctx: Context, paths: dict[str, str]) -> dict:
    """Evaluate each artefact and a random real subset under the same protocol and seeds."""
    ev = ctx.cfg.get("eval", {})
    proto = get_protocol(ev.get("protocol", "cpu"), augment=ev.get("augment", True),
                         **ev.get("overrides", {}))
    seeds = int(ev.get("seeds", 3))
    data = eval_data(ctx.ds, ctx.pre)
    key = jax.random.fold_in(ctx.key, 2)
    out = {}
    for name, path in paths.items():
        art = artefact.load(path)
        r = evaluate_set(key, art.x_syn_NHWC, art.y_syn, eval_data(ctx.ds, art.preprocess),
                         proto, seeds, lr=art.lr,
                         progress=Progress(f"evaluate {name}", enabled=not ctx.quiet))
        out[name] = r
        artefact.add_evaluation(path, r)
    if ev.get("random_baseline", True):
        idx = select("random", jax.random.fold_in(ctx.key, 3), ctx.ds, ctx.pre, ctx.cfg["ipc"])
        out["random"] = evaluate_set(key, jdata.apply(ctx.pre, ctx.ds.x_train[idx]), ctx.ds.y_train[idx],
                                     data, proto, seeds,
                                     progress=Progress("evaluate random", enabled=not ctx.quiet))
    return out


def write_result(out_dir: str, result: dict) -> None:
    """OUT/result.json: this result, with the earlier ones of the same run directory kept
    under "history" (a re-run appends, never resets)."""
    if jax.process_index() != 0:
        return
    path = os.path.join(out_dir, "result.json")
    history = []
    if os.path.exists(path):
        try:
            with open(path) as f:
                old = json.load(f)
            history = old.pop("history", []) + [old]
        except (OSError, ValueError):
            history = []
    safeio.write_json(path, {**result, "history": history})


def dataclass_from(cls, d: dict):
    """Build a config dataclass from a dict, with a clear error for unknown fields."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} field(s) {', '.join(unknown)}; known: {', '.join(sorted(names))}")
    return cls(**d)
