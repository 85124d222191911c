"""Shared pipeline pieces: data + preprocessing, synthetic init, run, export, evaluate."""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import artefact, safeio
from jaxdd import data as jdata
from jaxdd.data.stream import StreamedDataset, fit_streamed_preprocess, open_streamed
from jaxdd.evaluate import eval_data, evaluate_set, get_protocol, select
from jaxdd.methods.base import Distiller
from jaxdd.pipelines import watch
from jaxdd.pipelines.spec import EvalSection, LogSection, RunOptions
from jaxdd.run import driver, plots
from jaxdd.run.mesh import to_host
from jaxdd.run.metrics import MetricWriter, MultiWriter, run_writer
from jaxdd.run.progress import Progress


class Context:
    """What a method's run gets: the config, its dataset and preprocessing, the run key and
    the output directory, its metric writer (`jaxdd.run.metrics.run_writer`). `ds` and
    `pre` are read on first use, so a stage that needs no training images (recover from
    noise with a ready teacher) never reads them."""

    def __init__(self, cfg: dict, out_dir: str, quiet: bool = False, *,
                 ds: jdata.Dataset | StreamedDataset | None = None,
                 pre: jdata.Preprocess | None = None, writer: MetricWriter | None = None):
        self.cfg, self.out_dir, self.quiet = cfg, out_dir, quiet
        self.writer = MultiWriter([]) if writer is None else writer
        self.key = jax.random.key(int(cfg.get("seed", 0)))
        if ds is not None:
            self.ds = ds
        if pre is not None:
            self.pre = pre

    def replace(self, **kw) -> "Context":
        """A copy with other fields (cfg, out_dir, quiet, ds, pre, writer); loaded data is kept."""
        fields = {"cfg": self.cfg, "out_dir": self.out_dir, "quiet": self.quiet,
                  "writer": self.writer,
                  **{k: self.__dict__[k] for k in ("ds", "pre") if k in self.__dict__}}
        return Context(**{**fields, **kw})

    @functools.cached_property
    def ds(self) -> jdata.Dataset | StreamedDataset:
        ds = load_data(self.cfg)
        if isinstance(ds, jdata.Dataset):
            jdata.check_ipc(ds, self.cfg["ipc"])
        return ds

    @functools.cached_property
    def pre(self) -> jdata.Preprocess:
        kind = self.cfg.get("preprocess", "normalize")
        if isinstance(self.ds, StreamedDataset):
            return fit_streamed_preprocess(kind, self.ds, int(self.cfg.get("seed", 0)))
        return jdata.fit_preprocess(kind, self.ds.x_train, dataset_name=self.ds.name)


def load_data(cfg: dict) -> jdata.Dataset | StreamedDataset:
    """The config's dataset: in memory, or streamed when `image_size` is set (nothing is
    read until a stage asks for images or labels)."""
    seed = int(cfg.get("seed", 0))
    if cfg.get("image_size") is None:
        return jdata.load_dataset(cfg["dataset"], seed=seed)
    return open_streamed(cfg["dataset"], int(cfg["image_size"]), seed=seed,
                         workers=int(cfg.get("data_workers", 0)))


class Prepared(NamedTuple):
    distiller: Distiller
    state: Any
    batch_fn: Callable[[Any, jax.Array, jax.Array], Any]  # (consts, key, t) -> batch
    consts: Any  # real data / expert buffers the batch_fn reads (replicated on the mesh)
    export: Callable[[Any], dict[str, tuple]]  # state -> {artefact name: (x, y, lr)}


def context(cfg: dict, out_dir: str, quiet: bool = False, wandb: bool = False) -> Context:
    """The run's context: data and preprocessing (read on first use), its root key and its
    metric writer (files open lazily)."""
    log = LogSection(**cfg.get("log", {}))
    writer = run_writer(os.path.join(out_dir, "run"), tensorboard=log.tensorboard, wandb=wandb,
                        config=cfg, is_main=jax.process_index() == 0)
    return Context(cfg, out_dir, quiet, writer=writer)


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


def init_state(ctx: Context, distiller: Distiller, init: str) -> Any:
    """`distiller.init` on the initial set (`init_images` with the method's `init`), both
    from fold_in(run key, 0): what every single-Distiller method starts from."""
    key = jax.random.fold_in(ctx.key, 0)
    x0, y0 = init_images(ctx.replace(cfg={**ctx.cfg, "init": init}), key)
    return distiller.init(key, jnp.asarray(x0), jnp.asarray(y0))


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
    log = LogSection(**cfg.get("log", {}))
    progress = Progress(f"distill {cfg['method']}", enabled=not ctx.quiet)
    export = lambda state: {k: tuple(to_host(a) for a in v) for k, v in prep.export(state).items()}
    hooks = watch_hooks(ctx, export, progress)
    state, history = driver.run(
        prep.distiller, prep.state, prep.batch_fn, jax.random.fold_in(ctx.key, 1),
        cfg["iterations"], consts=prep.consts, mesh=mesh_from(cfg),
        run_dir=os.path.join(ctx.out_dir, "run"), config=cfg,
        ckpt_every=cfg.get("ckpt_every", 50), keep=cfg.get("ckpt_keep", 3),
        resume_step=resume_step, max_nonfinite=cfg.get("max_nonfinite", 10),
        progress=progress, log_every=log.every, stop_after=stop_after, timings=timings,
        writer=ctx.writer, hooks=hooks)
    if timings.pop("last_iteration") < cfg["iterations"]:  # stop_after ended it early
        return {"stopped_early": True}
    seconds = round(time.time() - t0, 2)
    paths = {}
    exports = export(state)
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
    best = {}
    if cfg.get("eval_every") and os.path.exists(watch.best_path(ctx.out_dir)):
        paths["best"] = watch.best_path(ctx.out_dir)
        best = {"best": artefact.load(paths["best"]).meta.get("selection")}
    if log.plots and jax.process_index() == 0:
        plots.write_run_plots(ctx.out_dir)
    return {"artefacts": paths, "distill_seconds": seconds, **timings, **best, "history": history}


def watch_hooks(ctx: Context, export: Callable[[Any], dict], progress: Progress | None = None
                ) -> tuple:
    """The driver hooks of `log.image_every` (image grids) and `eval_every` (evaluation on
    the validation split, the best set in OUT/best/)."""
    cfg, hooks = ctx.cfg, []
    log = LogSection(**cfg.get("log", {}))
    if log.image_every:
        hooks.append(watch.ImageGrid(log.image_every, cfg["iterations"], export, ctx.pre,
                                     ctx.ds.num_classes, ctx.writer))
    if cfg.get("eval_every"):
        hooks.append(periodic_eval(ctx, export, progress))
    return tuple(hooks)


def periodic_eval(ctx: Context, export: Callable[[Any], dict],
                  progress: Progress | None = None) -> watch.PeriodicEval:
    """The `eval_every` hook: `eval.val_protocol` (default: `eval.protocol` with its
    overrides) + `eval.val_overrides`, `eval.val_seeds` networks, keys from fold_in(key, 4)."""
    cfg = ctx.cfg
    if len(ctx.ds.y_val) == 0:
        raise ValueError(f"eval_every selects on the validation split, but {ctx.ds.name} has "
                         f"none (a class has fewer than 10 training images); unset eval_every")
    ev = EvalSection(**cfg.get("eval", {}))
    over = {**(ev.overrides if ev.val_protocol is None else {}), **ev.val_overrides}
    proto = get_protocol(ev.val_protocol or ev.protocol, **over)
    data = eval_data(ctx.ds, ctx.pre)

    def evaluate(key, x, y, lr):
        return evaluate_set(key, x, y, data, proto, ev.val_seeds, lr=lr)

    def save_best(t, x, y, lr, selection):
        if jax.process_index() == 0:
            artefact.save(watch.best_path(ctx.out_dir), np.asarray(x), np.asarray(y),
                          preprocess=ctx.pre, method=cfg["method"], dataset=ctx.ds.name,
                          num_classes=ctx.ds.num_classes, ipc=cfg["ipc"],
                          seed=int(cfg.get("seed", 0)), config=cfg, lr=lr, overwrite=True,
                          extra={"selection": selection})

    note = progress.note if progress is not None and not ctx.quiet else None
    return watch.PeriodicEval(
        cfg["eval_every"], cfg["iterations"], export, jax.random.fold_in(ctx.key, 4), evaluate,
        save_best, ctx.writer, os.path.join(ctx.out_dir, "run", "eval.jsonl"),
        {"protocol": proto.name, "epochs": proto.train.epochs, "seeds": ev.val_seeds},
        note)


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
    watch.log_final(ctx.writer, ctx.cfg.get("iterations", 1), out)
    if jax.process_index() == 0 and LogSection(**ctx.cfg.get("log", {})).plots:
        plots.write_run_plots(ctx.out_dir, {k: r["accuracy_mean"] for k, r in out.items()})
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
