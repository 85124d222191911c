"""RDED end to end: teacher (load or train) -> crop selection -> OUT/artefact.

Reached through `jaxdd recover --config CONFIG` with `method="rded"` (statistics matching
and RDED share the teacher, the run directory and the relabel step). The config's `rded`
section holds `jaxdd.methods.rded.RDEDConfig` fields.

    pool      `mipc` real training images per class (fewer if a class is smaller), drawn
              with fold_in(key(seed), 0), in the teacher's pixel space
    select    classes in chunks of `rded.class_batch`; class c uses fold_in(fold_in(key(seed),
              1), c), so chunking (and a restart, which skips the chunks saved under
              OUT/batches/) never changes the images
    artefact  OUT/artefact/ with hard labels; `jaxdd relabel` adds the teacher's soft labels
              (recipe `rded` unless the config's relabel section names another)
"""

from __future__ import annotations

import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import artefact
from jaxdd import data as jdata
from jaxdd.population import teachers as jteachers
from jaxdd.methods import rded as mrded
from jaxdd.pipelines.common import dataclass_from, resumable_batch
from jaxdd.pipelines.teacher import check_compatible, check_run_dir, ensure_teacher
from jaxdd.run.progress import Progress

__all__ = ["rded_config", "pool_size", "run"]


def rded_config(cfg: dict) -> mrded.RDEDConfig:
    """RDEDConfig from the config's `rded` section (lists -> tuples: it is hashable)."""
    r = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.get("rded", {}).items()}
    return dataclass_from(mrded.RDEDConfig, r)


def pool_size(ds: jdata.Dataset, ipc: int, rc: mrded.RDEDConfig) -> int:
    """Images per class in the pool: mipc, capped by the smallest class; clear errors when
    IPC * factor^2 crops (one per real image) cannot be had."""
    counts = np.array([len(ix) for ix in ds.class_indices])
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


def run(cfg: dict, out_dir: str, quiet: bool = False) -> dict:
    """Teacher -> RDED images -> OUT/artefact; returns a summary dict (as `recover`'s)."""
    cfg = {**cfg, "relabel": {"recipe": "rded", **(cfg.get("relabel") or {})}}
    seed, ipc = int(cfg.get("seed", 0)), int(cfg["ipc"])
    rc = rded_config(cfg)
    ds = jdata.load_dataset(cfg["dataset"], seed=seed)
    pool = pool_size(ds, ipc, rc)
    check_run_dir(out_dir, cfg)
    tdir, teacher_seconds = ensure_teacher(cfg, ds, quiet)
    model, vlist, pre, tman = jteachers.load_teachers(tdir, 1)
    check_compatible(tman, ds.name, ds.num_classes, ds.image_shape)
    k_classes, shape = ds.num_classes, ds.image_shape
    key = jax.random.key(seed)
    idx_KxP = jdata.sample_indices_per_class(jax.random.fold_in(key, 0), ds, pool).reshape(
        k_classes, pool)
    k_sel = jax.random.fold_in(key, 1)
    select = jax.jit(lambda tv, xp, labels: mrded.rded(
        k_sel, lambda xb: model.apply(tv, xb), xp, labels, ipc, rc))

    bdir = os.path.join(out_dir, "batches")
    os.makedirs(bdir, exist_ok=True)
    starts = list(range(0, k_classes, rc.class_batch))
    out = np.zeros((k_classes, ipc, *shape), np.float32)
    ce = np.zeros((k_classes, ipc * rc.factor ** 2), np.float32)
    progress = Progress("rded", every=0.0 if len(starts) < 50 else 2.0, enabled=not quiet)
    t0 = time.time()
    for n, c0 in enumerate(starts):
        cls = np.arange(c0, min(c0 + rc.class_batch, k_classes))
        path = os.path.join(bdir, f"c{c0:06d}.npz")

        def compute(cls=cls, c0=c0):
            xp = jdata.apply(pre, ds.x_train[idx_KxP[cls].reshape(-1)]).reshape(
                len(cls), pool, *shape)
            x, s = select(vlist[0], jnp.asarray(xp), jnp.asarray(cls, jnp.int32))
            x, s = np.asarray(x), np.asarray(s)
            if not (np.isfinite(x).all() and np.isfinite(s).all()):
                raise FloatingPointError(f"RDED classes {c0}..{cls[-1]}: the teacher gave "
                                         f"NaN/inf scores; check the teacher at {tdir}")
            return {"x": x, "ce": s}

        z = resumable_batch(path, compute)
        out[cls], ce[cls] = z["x"], z["ce"]
        progress(n + 1, len(starts), f"mean kept CE {float(ce[cls].mean()):.3f}")
    seconds = round(time.time() - t0, 2)

    x_syn = out.reshape(k_classes * ipc, *shape)
    y_syn = np.repeat(np.arange(k_classes, dtype=np.int32), ipc)
    art_dir = os.path.join(out_dir, "artefact")
    accs = [r["test_accuracy"] for r in tman["teachers"] if r["complete"]][:1]
    info = {"teacher_dir": os.path.abspath(tdir), "teacher_model": tman["model"],
            "teacher_test_accuracy": accs, "teacher_seconds": teacher_seconds,
            "distill_seconds": seconds, "final_ce": float(ce.mean()),
            "pool_per_class": pool, "factor": rc.factor, "num_crop": rc.num_crop,
            "batches": len(starts)}
    artefact.save(art_dir, x_syn, y_syn, preprocess=pre, method="rded", dataset=ds.name,
                  num_classes=k_classes, ipc=ipc, seed=seed, config=cfg, lr=None,
                  overwrite=True, extra=info)
    return {"out": out_dir, "artefact": art_dir, "method": "rded", "dataset": ds.name,
            "ipc": ipc, "teacher": tdir, **info}
