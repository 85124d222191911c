"""INFER end to end: teachers (load or train) -> base images -> compensators -> OUT/artefact.

Reached through `jaxdd distill|recover --config CONFIG` with `method="infer"` (statistics
matching, RDED and INFER share the teacher and the relabel step). The config's `infer`
section holds `jaxdd.methods.infer.INFERConfig` fields; M = `teacher.num_teachers`.

    base      B = infer.base_sets or floor(IPC K / (K + M)) random real training images per
              class (eq. 3 of `jaxdd.methods.infer`), drawn with fold_in(key(seed), 0)
              (record indices only; streamed data reads just those records), in the
              teachers' pixel space
    compensate  for base set b and teacher m, one compensator (`make_infer`, driven by
              `jaxdd.run.driver` for infer.iterations steps; the teacher's variables are
              the step's batch, so every (b, m) runs one compiled program) with key
              fold_in(fold_in(fold_in(key(seed), 1), b), m); each finished compensator is
              saved to OUT/compensators/ and is the unit of resumption
    artefact  OUT/artefact/: the K B (M + 1) instances (eq. 1, what students train on), the
              base images (part `base_KxBxHxWxC`) and the compensators (part
              `compensators_BxMxHxWxC`) stored apart, and meta.json's `budget`: bytes of
              base images, compensators and hard labels (the instances are derived: not
              counted); `jaxdd relabel` adds the soft labels (recipe `infer`, mode
              `static`: one ensemble label per instance, mixed linearly under MixUp, as
              the reference's val_static.py; mode `online` is its val_dyn.py)
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import artefact
from jaxdd import data as jdata
from jaxdd.data import stream
from jaxdd.data.sources import sample_from_classes
from jaxdd.methods import infer as minfer
from jaxdd.methods.statistics.recover import pixel_bounds
from jaxdd.pipelines.common import Context, dataclass_from, mesh_from, resumable_batch
from jaxdd.pipelines.spec import Method, RunOptions
from jaxdd.pipelines.teacher import (check_compatible, check_run_dir, ensure_teacher,
                                     teacher_config)
from jaxdd.population import teachers as jteachers
from jaxdd.run import driver
from jaxdd.run.progress import Progress

__all__ = ["infer_config", "base_images", "run"]

# The student defaults an INFER artefact carries (the reference's val_static.py).
RELABEL = {"recipe": "infer", "mode": "static"}


def infer_config(cfg: dict) -> minfer.INFERConfig:
    """INFERConfig from the config's `infer` section (lists -> tuples: it is hashable)."""
    r = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.get("infer", {}).items()}
    return dataclass_from(minfer.INFERConfig, r)


def base_images(ds: jdata.Dataset | stream.StreamedDataset, pre: jdata.Preprocess,
                key: jax.Array, per_class: int) -> tuple[np.ndarray, np.ndarray]:
    """(K, B, H, W, C) float32 random real training images in model space and their
    (K, B) record indices; streamed data reads only those records."""
    streamed = isinstance(ds, stream.StreamedDataset)
    class_idx = stream.class_index(ds.train) if streamed else ds.class_indices
    small = min(len(ix) for ix in class_idx)
    if per_class > small:
        raise ValueError(f"INFER needs {per_class} base images per class, but a class of "
                         f"{ds.name} has {small} training images; lower --ipc or infer.base_sets")
    idx = sample_from_classes(key, class_idx, per_class)
    shape = tuple(ds.image_shape)
    x = stream.read_images(ds.train, idx, shape) if streamed else ds.x_train[idx]
    k = ds.num_classes
    return (np.asarray(jdata.apply(pre, x), np.float32).reshape(k, per_class, *shape),
            idx.reshape(k, per_class))


def _teacher_batch(consts, key, t):
    """The step's batch is the teacher of this compensator (a replicated constant)."""
    return minfer.INFERBatch(consts)


def run(ctx: Context, options: RunOptions) -> dict:
    """Teachers -> base images -> B x M compensators (Distillers through the driver) ->
    OUT/artefact with the base images and compensators as separate parts."""
    cfg = {**ctx.cfg, "relabel": {**RELABEL, **(ctx.cfg.get("relabel") or {})}}
    seed, ipc, ds = int(cfg.get("seed", 0)), int(cfg["ipc"]), ctx.ds
    ic = infer_config(cfg)
    m_count = teacher_config(cfg).num_teachers
    k_classes, shape = ds.num_classes, tuple(ds.image_shape)
    b_count = ic.base_sets or minfer.num_base_sets(ipc, k_classes, m_count)
    if b_count * (k_classes + m_count) > ipc * k_classes:
        raise ValueError(f"infer.base_sets = {b_count} with {m_count} compensators each "
                         f"stores {b_count * (k_classes + m_count)} images > IPC {ipc} x "
                         f"{k_classes} classes; use base_sets <= "
                         f"{(ipc * k_classes) // (k_classes + m_count)} or None")
    check_run_dir(ctx.out_dir, cfg)
    mesh = mesh_from(cfg)
    tdir, teacher_seconds = ensure_teacher(cfg, ds, ctx.quiet, mesh)
    model, vlist, pre, tman = jteachers.load_teachers(tdir, m_count)
    check_compatible(tman, ds.name, ds.num_classes, ds.image_shape)
    key = jax.random.key(seed)
    base, base_idx = base_images(ds, pre, jax.random.fold_in(key, 0), b_count)
    bounds = pixel_bounds(pre)
    distiller = minfer.make_infer(ic, model, bounds)
    y_k = np.arange(k_classes, dtype=np.int32)  # host: each init makes its own (donated) copy
    k_comp = jax.random.fold_in(key, 1)
    cdir = os.path.join(ctx.out_dir, "compensators")
    os.makedirs(cdir, exist_ok=True)
    jobs = [(b, m) for b in range(b_count) for m in range(m_count)]
    procs, me = jax.process_count(), jax.process_index()
    if procs > 1:
        raise NotImplementedError("INFER runs in one process (its compensators are small "
                                  "batches); start it without jax.distributed")
    progress = Progress("distill infer", every=0.0 if len(jobs) < 50 else 2.0,
                        enabled=not ctx.quiet)
    comp = np.zeros((b_count, m_count, *shape), np.float32)
    finals, t0 = [], time.time()
    for done, (b, m) in enumerate(jobs):
        def compute(b=b, m=m):
            k_init, k_loop = jax.random.split(jax.random.fold_in(jax.random.fold_in(k_comp, b), m))
            state = distiller.init(k_init, jnp.asarray(base[:, b]), y_k)
            try:
                state, hist = driver.run(distiller, state, _teacher_batch, k_loop, ic.iterations,
                                         consts=vlist[m], mesh=mesh, log_every=ic.iterations,
                                         max_nonfinite=int(cfg.get("max_nonfinite", 10)))
            except driver.NonFiniteError as e:
                raise driver.NonFiniteError(f"INFER compensator (base set {b}, teacher {m}): "
                                            f"{e}; lower infer.lr") from None
            last = hist[-1]
            return {"u": np.asarray(state.comp_HxWxC),
                    **{k: np.float32(last[k]) for k in ("loss", "ce", "bn")},
                    "nonfinite_steps": np.int32(sum(h.get("nonfinite", 0) for h in hist))}

        z = resumable_batch(os.path.join(cdir, f"b{b:05d}_m{m:03d}.npz"), compute)
        comp[b, m] = z["u"]
        finals.append({k: float(z[k]) for k in ("loss", "ce", "bn")})
        progress(done + 1, len(jobs), f"ce {float(z['ce']):.3f} bn {float(z['bn']):.3f}")
        if options.stop_after is not None and options.stop_after <= done + 1 < len(jobs):
            return {"stopped_early": True}  # a budgeted call: OUT/compensators/ resumes it
    seconds = round(time.time() - t0, 2)
    for n, final in enumerate(finals):
        ctx.writer.write_scalars(n + 1, {f"infer/{k}": v for k, v in final.items()})
    ctx.writer.flush()
    x_syn, y_syn = minfer.instances(base, comp, bounds if ic.clip else None)
    mean = {k: float(np.mean([f[k] for f in finals])) for k in ("loss", "ce", "bn")}
    budget = {"base_image_bytes": int(base.nbytes), "compensator_bytes": int(comp.nbytes),
              "label_bytes": int(y_syn.nbytes), "instance_bytes": int(x_syn.nbytes),
              "ipc_budget_bytes": int(ipc * k_classes * np.prod(shape) * 4),
              "note": "stored set = base images + compensators (+ labels); the instances "
                      "are base + compensator (clamped), kept for training, not counted"}
    accs = [r["test_accuracy"] for r in tman["teachers"] if r["complete"]][:m_count]
    info = {"teacher_dir": os.path.abspath(tdir), "teacher_model": tman["model"],
            "teacher_test_accuracy": accs, "teacher_seconds": teacher_seconds,
            "distill_seconds": seconds, "final_loss": mean["loss"], "final_ce": mean["ce"],
            "final_bn": mean["bn"], "base_sets": b_count, "compensators_per_base": m_count,
            "instances_per_class": b_count * (m_count + 1), "budget": budget,
            # what the budget holds, in the units the relabel report reads
            "image_bytes": budget["base_image_bytes"],
            "compensator_bytes": budget["compensator_bytes"],
            "base_record_indices": base_idx.tolist() if base_idx.size <= 10000 else None}
    art_dir = os.path.join(ctx.out_dir, "artefact")
    if me == 0:
        artefact.save(art_dir, x_syn, y_syn, preprocess=pre, method="infer", dataset=ds.name,
                      num_classes=k_classes, ipc=ipc, seed=seed, config=cfg, lr=None,
                      overwrite=True, extra=info,
                      parts={"base_KxBxHxWxC": base, "compensators_BxMxHxWxC": comp})
    return {"out": ctx.out_dir, "artefact": art_dir, "artefacts": {"artefact": art_dir},
            "method": "infer", "dataset": ds.name, "ipc": ipc, "teacher": tdir,
            **{k: v for k, v in info.items() if k != "base_record_indices"}}


METHODS = [Method("infer", "statistics", minfer.INFERConfig, run,
                  sections=("teacher", "relabel"),
                  doc="universal feature compensators added to real images of every class")]
