"""RDED end to end: teacher (load or train) -> crop selection -> OUT/artefact.

Reached through `jaxdd distill --config CONFIG` with `method="rded"` (statistics matching
and RDED share the teacher and the relabel step). The config's `rded` section holds
`jaxdd.methods.rded.RDEDConfig` fields. The selection is a Distiller (`make_rded`) driven
by `jaxdd.run.driver`: one step per batch of `rded.class_batch` classes, checkpointed after
every step in OUT/run/ (a restart resumes there).

    pool      `mipc` real training images per class (fewer if a class is smaller), drawn
              with fold_in(key(seed), 0) (record indices only), in the teacher's pixel space
    select    classes in chunks of `rded.class_batch`; class c uses fold_in(fold_in(key(seed),
              1), c), so chunking (and a restart from OUT/run/) never changes the images.
              Step t gets the pools of its own classes as a per-step driver input
              (`driver.run(step_input=...)`): in memory they are cut from the pools of all
              classes, prepared once; streamed data (`image_size` set, e.g. ImageNet) reads
              only those pool records (`stream.read_images`, resize + centre-crop to the
              model size) while step t - 1 runs, so no step holds more than
              class_batch * mipc images and the training set is never read whole
    artefact  OUT/artefact/ with hard labels; `jaxdd relabel` adds the teacher's soft labels
              (recipe `rded` unless the config's relabel section names another)
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import artefact
from jaxdd import data as jdata
from jaxdd.data import stream
from jaxdd.data.sources import sample_from_classes
from jaxdd.population import teachers as jteachers
from jaxdd.methods import rded as mrded
from jaxdd.methods.base import Distiller, SynState, check_init
from jaxdd.pipelines.common import Context, dataclass_from, mesh_from
from jaxdd.pipelines.teacher import check_compatible, ensure_teacher, image_config
from jaxdd.pipelines.spec import Method, RunOptions
from jaxdd.run import driver
from jaxdd.run.progress import Progress

__all__ = ["rded_config", "pool_size", "pool_reader", "make_rded", "run"]


def rded_config(cfg: dict) -> mrded.RDEDConfig:
    """RDEDConfig from the config's `rded` section (lists -> tuples: it is hashable)."""
    r = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.get("rded", {}).items()}
    return dataclass_from(mrded.RDEDConfig, r)


def pool_size(ds: jdata.Dataset | stream.StreamedDataset, ipc: int, rc: mrded.RDEDConfig,
              class_indices: list[np.ndarray] | None = None) -> int:
    """Images per class in the pool: mipc, capped by the smallest class; clear errors when
    IPC * factor^2 crops (one per real image) cannot be had."""
    counts = np.array([len(ix) for ix in (ds.class_indices if class_indices is None
                                          else class_indices)])
    need = ipc * rc.factor ** 2
    if ipc < 1:
        raise ValueError(f"IPC must be >= 1, got {ipc}")
    k = int(counts.argmin())
    if need > counts[k]:
        raise ValueError(f"RDED IPC {ipc} with factor {rc.factor} keeps {need} crops per class, "
                         f"one per real image, but class {k} of {ds.name} has {counts[k]} "
                         f"training images; use --ipc <= {counts[k] // rc.factor ** 2}")
    if need > rc.mipc:
        raise ValueError(f"RDED IPC {ipc} with factor {rc.factor} keeps {need} crops per class, "
                         f"but the pool holds rded.mipc = {rc.mipc} images per class; raise "
                         f"rded.mipc to at least {need}")
    return int(min(rc.mipc, counts[k]))


def pool_reader(ds: jdata.Dataset | stream.StreamedDataset, pre: jdata.Preprocess,
                idx_KxP: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """classes_B -> (B, P, H, W, C) float32 pools in model space (training-split record
    indices idx_KxP). In memory: cut from all pools, preprocessed once; streamed: only the
    records of those classes are read and decoded, each class once per call."""
    k, p = idx_KxP.shape
    shape = tuple(ds.image_shape)
    if not isinstance(ds, stream.StreamedDataset):
        x_pool = jdata.apply(pre, ds.x_train[idx_KxP.reshape(-1)]).reshape(k, p, *shape)
        return lambda classes_B: x_pool[np.asarray(classes_B)]

    def read(classes_B):
        uniq, inv = np.unique(np.asarray(classes_B), return_inverse=True)
        x = stream.read_images(ds.train, idx_KxP[uniq].reshape(-1), shape, threads=ds.workers)
        return jdata.apply(pre, x).reshape(len(uniq), p, *shape)[inv.reshape(-1)]
    return read


class RDEDState(NamedTuple):
    syn: SynState          # (K * ipc, H, W, C) images, filled class batch by class batch
    ce_KxM: jax.Array      # (K, ipc * f^2) eq. (1) scores of the kept crops
    key: jax.Array         # the selection key (class c uses fold_in(key, c))


class RDEDBatch(NamedTuple):
    x_pool_BxPxHxWxC: jax.Array  # the pools of this step's classes (model space, per step)
    classes_B: jax.Array         # int32 class ids (the last batch repeats the last class)
    teacher: Any                 # teacher variables (an argument, not a program constant)


def make_rded(rc: mrded.RDEDConfig, model: Any, num_classes: int, ipc: int) -> Distiller:
    """RDED as a Distiller: init(key, x_like, y) -> empty set; step t selects and tiles the
    crops of one batch of classes (`RDEDBatch`). Class c's images depend only on
    fold_in(key, c) and its pool, so batching and restarts never change them."""
    m = ipc * rc.factor ** 2

    def init(key: jax.Array, x_init_NHWC: jax.Array, y_init: jax.Array) -> RDEDState:
        check_init(x_init_NHWC, y_init)
        x = jnp.zeros(jnp.shape(x_init_NHWC), jnp.float32)
        return RDEDState(SynState(x, jnp.asarray(y_init, jnp.int32), None),
                         jnp.zeros((num_classes, m), jnp.float32), key)

    def step(state: RDEDState, batch: RDEDBatch, key: jax.Array):
        del key  # the selection key lives in the state (fold_in per class)
        x_BxIxHWC, ce_BxM = mrded.rded(state.key, lambda xb: model.apply(batch.teacher, xb),
                                       batch.x_pool_BxPxHxWxC, batch.classes_B, ipc, rc)
        rows = (batch.classes_B[:, None] * ipc + jnp.arange(ipc)[None, :]).reshape(-1)
        x = state.syn.x_syn_NHWC.at[rows].set(x_BxIxHWC.reshape(-1, *x_BxIxHWC.shape[2:]))
        new = RDEDState(state.syn._replace(x_syn_NHWC=x),
                        state.ce_KxM.at[batch.classes_B].set(ce_BxM), state.key)
        return new, {"loss": ce_BxM.mean()}

    return Distiller(init, step)


def _step_classes(t: Any, b: int, k_classes: int) -> Any:
    """Classes of step t (1-based): b consecutive ones, the last step repeating the last."""
    xp = jnp if isinstance(t, jax.Array) else np
    return xp.minimum((t - 1) * b + xp.arange(b), k_classes - 1)


def run(ctx: Context, options: RunOptions) -> dict:
    """Teacher -> RDED images (one Distiller through the driver) -> OUT/artefact."""
    cfg = {**ctx.cfg, "relabel": {"recipe": "rded", **(ctx.cfg.get("relabel") or {})}}
    seed, ipc, ds = int(cfg.get("seed", 0)), int(cfg["ipc"]), ctx.ds
    rc = rded_config(cfg)
    streamed = isinstance(ds, stream.StreamedDataset)
    class_idx = stream.class_index(ds.train) if streamed else ds.class_indices  # labels only
    pool = pool_size(ds, ipc, rc, class_idx)
    mesh = mesh_from(cfg)
    tdir, teacher_seconds = ensure_teacher(cfg, ds, ctx.quiet, mesh)
    model, vlist, pre, tman = jteachers.load_teachers(tdir, 1)
    check_compatible(tman, ds.name, ds.num_classes, ds.image_shape)
    k_classes, shape, b = ds.num_classes, ds.image_shape, min(rc.class_batch, ds.num_classes)
    key = jax.random.key(seed)
    idx_KxP = sample_from_classes(jax.random.fold_in(key, 0), class_idx, pool).reshape(
        k_classes, pool)
    pools_of = pool_reader(ds, pre, idx_KxP)
    y_syn = np.repeat(np.arange(k_classes, dtype=np.int32), ipc)
    distiller = make_rded(rc, model, k_classes, ipc)
    state = distiller.init(jax.random.fold_in(key, 1), np.zeros((len(y_syn), *shape)), y_syn)

    def batch_fn(consts, k, t):
        teacher, pool_BxP = consts
        return RDEDBatch(pool_BxP, _step_classes(t, b, k_classes), teacher)

    steps = -(-k_classes // b)
    t0, timings = time.time(), {}
    state, _ = driver.run(
        distiller, state, batch_fn, jax.random.fold_in(key, 2), steps,
        consts=vlist[0], step_input=lambda t: pools_of(_step_classes(t, b, k_classes)),
        mesh=mesh, run_dir=os.path.join(ctx.out_dir, "run"),
        config=image_config(cfg), ckpt_every=1,
        keep=cfg.get("ckpt_keep", 3), resume_step=options.resume_step, log_every=1,
        max_nonfinite=1, progress=Progress("rded", enabled=not ctx.quiet), writer=ctx.writer,
        stop_after=options.stop_after, timings=timings)
    if timings["last_iteration"] < steps:  # stop_after ended it early
        return {"stopped_early": True}
    seconds = round(time.time() - t0, 2)
    x_syn, ce = np.asarray(state.syn.x_syn_NHWC), np.asarray(state.ce_KxM)
    art_dir = os.path.join(ctx.out_dir, "artefact")
    accs = [r["test_accuracy"] for r in tman["teachers"] if r["complete"]][:1]
    info = {"teacher_dir": os.path.abspath(tdir), "teacher_model": tman["model"],
            "teacher_test_accuracy": accs, "teacher_seconds": teacher_seconds,
            "distill_seconds": seconds, "final_ce": float(ce.mean()),
            "pool_per_class": pool, "factor": rc.factor, "num_crop": rc.num_crop,
            "batches": steps}
    if jax.process_index() == 0:
        artefact.save(art_dir, x_syn, y_syn, preprocess=pre, method="rded", dataset=ds.name,
                      num_classes=k_classes, ipc=ipc, seed=seed, config=cfg, lr=None,
                      overwrite=True, extra=info)
    return {"out": ctx.out_dir, "artefact": art_dir, "artefacts": {"artefact": art_dir},
            "method": "rded", "dataset": ds.name, "ipc": ipc, "teacher": tdir, **info}


METHODS = [Method("rded", "statistics", mrded.RDEDConfig, run, sections=("teacher", "relabel"),
                  doc="realistic, diverse crops selected by the teacher (no optimisation)")]
