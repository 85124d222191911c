"""Statistics matching end to end: teacher (squeeze) -> recover -> relabel (KD student).

    teacher   `jaxdd.pipelines.teacher.ensure_teacher`: load the config's teacher
              directory, or train it there
    recover   `recover`: SRe2L/CDA/G-VBSM/DWA batches against the frozen teacher(s), each
              saved to OUT/batches/ when done (a batch is a pure function of (key, IPC
              index, first class), so a restart skips finished batches and gives the same
              images), then the artefact OUT/artefact/ (hard labels, no lr)
    relabel   `relabel`: students trained on the artefact with the teacher's soft labels,
              online or stored (DIR/labels.npz) or made on the fly by a fitted low-rank
              projector (`--labels projector`, DIR/projector.npz: HeLlO,
              `jaxdd.labels.projector`), test accuracy appended to the artefact

Run directory: OUT/run.json holds the fingerprint of the config parts that determine the
images (everything but the `relabel` section); another config in the same OUT is refused.
Batch (i, c0) uses the key fold_in(fold_in(fold_in(key(seed), 1), i), c0): the batches and
the artefact are exactly those of `jaxdd.methods.statistics.recover.recover_all` with key fold_in(key(seed), 1).

RDED (`method="rded"`, no optimisation) goes through `recover` as well: it is dispatched
to `jaxdd.pipelines.rded` and writes the same OUT/artefact.

Reporting: `report="last"` (default) is the final-epoch student. `report="best"` also
evaluates every `eval_every` epochs and reports, next to the last, the best of that curve:
selected on the test split ("best (test-selected; optimistic)", what the RDED and G-VBSM
scripts print) or, with `select="val"`, the test accuracy at the epoch of the best
validation accuracy ("best (val-selected)"). With streamed data the students train in
segments of `eval_every` epochs resumed from their state (`relabel.train_student_epochs`:
the same students as one run), and the eval loader makes one pass over the test (and val)
split between segments. `jaxdd relabel --checkpoint-dir CK` trains in such segments on any
data (about a tenth of the epochs each with report="last") and saves the students after
each one in CK (Orbax): a killed relabel resumes there, bit-exactly.

G-VBSM's conv statistics (`recover.conv_stats`) need dataset targets: computed once per
teacher over the training split (streamed data: one pass of the eval loader, batches
split over the mesh) and cached under TEACHER_DIR/conv_targets/<key hash>/
(`jaxdd.population.conv_targets`). With `recover.ipc_per_batch` g > 1 a batch holds g images of each
of `batch_size` classes (IPC indices i0..i0+g-1); batch files keep the name of i0.

Several teachers: `teacher.num_teachers` networks of one architecture are vmapped together
(`recover.stacked_teachers`, their losses averaged every iteration); `teacher.model` as a
list trains and loads one directory per architecture (`jaxdd.pipelines.teacher`), and the
teachers then go to `make_recover` as a list: every one each iteration
(`recover.teacher_schedule="mean"`) or G-VBSM's rotation, teacher t mod T at iteration t
("rotate"; one teacher of one architecture can rotate its `num_teachers` seeds too). Each
teacher's conv targets are cached in its own directory. Relabel's ensemble
(`relabel.ensemble`) takes every teacher of every directory the artefact names, averaged
plainly (`ensemble_reduce="mean"`, G-VBSM CIFAR-100 / Tiny-ImageNet) or rescaled to the
mean Frobenius norm first ("rescale", G-VBSM ImageNet-1K).
"""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from jaxdd import artefact, safeio
from jaxdd.population import conv_targets as conv_targets_lib
from jaxdd import data as jdata
from jaxdd.population import teachers as jteachers
from jaxdd.evaluate import get_protocol
from jaxdd.population.train import preprocess_sha
from jaxdd.labels import projector as jprojector
from jaxdd.labels import relabel as jrelabel
from jaxdd.methods.statistics.recover import (RecoverConfig, batch_layout, make_recover,
                                             pixel_bounds, stack_teachers)
from jaxdd.models import get_model
from jaxdd.pipelines.common import (Context, dataclass_from, load_data, mesh_from,
                                    resumable_batch)
from jaxdd.pipelines.teacher import (check_compatible, check_run_dir, ensure_teachers,
                                     teacher_config, teacher_dirs, teacher_models, teacher_ready)
from jaxdd.pipelines.spec import Method, RunOptions
from jaxdd.data import stream
from jaxdd.run import driver
from jaxdd.run.mesh import make_mesh, put_replicated, to_host
from jaxdd.run.checkpoint import Checkpointer, CheckpointError
from jaxdd.run.progress import Progress
from jaxdd.evaluate.core import array_digest, chunk_size
from jaxdd.train.loop import TrainConfig, accuracy, steps_per_epoch

METHODS = ("sre2l", "cda", "gvbsm", "dwa")

# Student recipes (spec section 7). `sre2l` is the spec's SRe2L ImageNet-1K recipe; the
# others are marked where the spec gives no numbers of their own.
_SRE2L = dict(optimizer="adamw", lr=1e-3, weight_decay=0.01, momentum=0.9, schedule="cosine",
              epochs=300, batch_size=1024, temperature=20.0, t2_factor=False, lr_per_epoch=True,
              cutmix_alpha=1.0, crop_min_scale=0.08, flip=True, ensemble=False, loss="kd",
              ce_weight=0.1, cosine_span=1.0, decay_norms_biases=False, pad_crop=0,
              mixup_alpha=0.0, shuffle_patches=1,
              ensemble_reduce="rescale")  # ensemble: rescale to the mean norm (G-VBSM
                                          # ImageNet-1K) | mean (plain mean of the logits)
RECIPES: dict[str, dict[str, Any]] = {
    # AdamW 1e-3, wd 0.01 (not on biases/norms), cosine per epoch, T 20, no T^2
    "sre2l": dict(_SRE2L),
    # SRe2L's CIFAR relabel (VILA-Lab/SRe2L SRe2L/*small_dataset/relabel_cifar.py): per image
    # RandomCrop(32, padding=4) + flip (:51-52; no resized crop), MixUp with lambda ~
    # Beta(0.8, 0.8) of the images, labelled by the teacher (:111-119, :133, :138), T 30
    # (:107), AdamW lr 1e-3 wd 0.01 on every parameter (:104), cosine per epoch (:106), batch
    # 128 and 400 epochs (relabel_cifar.sh:2,6).
    "sre2l_cifar": dict(_SRE2L, epochs=400, batch_size=128, temperature=30.0,
                        decay_norms_biases=True, crop_min_scale=1.0, pad_crop=4,
                        cutmix_alpha=0.0, mixup_alpha=0.8),
    # CDA trains its students with SRe2L's KD code; the spec lists no recipe of its own.
    "cda": dict(_SRE2L),
    # RDED validation/main.py: AdamW(0.9, 0.999) lr 1e-3 (ResNet-18 / ConvNet students), wd
    # 0.01, KL at T 20 with CutMix (alpha 1), RandomResizedCrop scale (1/factor, 1) + flip
    # (factor 1 at 32/64 px: no crop), scheduler 0.5 (1 + cos(pi e / (2 E))) stepped per
    # epoch (half a cosine: the lr ends at half its start), batch 100 at CIFAR-100 IPC 10
    # (200 at IPC 50: set relabel.batch_size). It prints the best test accuracy of every
    # 10th epoch in the last 20 % (here: report="best", select="test"). At factor f > 1
    # (validation/main.py:115-126) each image's f x f patches are shuffled (ShufflePatches)
    # before a RandomResizedCrop of area (1/f, 1): `relabel_options` sets shuffle_patches = f
    # and crop_min_scale = 1/f from the artefact's rded.factor unless they are given.
    "rded": dict(_SRE2L, batch_size=100, crop_min_scale=1.0, cosine_span=0.5),
    # G-VBSM: the teachers' logits rescaled to the mean Frobenius norm and averaged (spec 4;
    # the ImageNet-1K branch; its CIFAR-100 relabel/generate_soft_label_with_db.py:282-284
    # has the rescaling commented out and takes the plain mean: ensemble_reduce="mean"),
    # student loss "logit matching" eq. (3): MSE(logits) + 0.1 CE(student, y). Optimiser
    # numbers: the spec gives none, so SRe2L's (G-VBSM's CIFAR-100 train.sh: SGD 0.1,
    # batch 64, ce_weight 0.15 — pass them as options).
    "gvbsm": dict(_SRE2L, ensemble=True, loss="mse_ce", ce_weight=0.1),
    # G-VBSM's ensemble with SRe2L's KD loss (eq. 2) instead of logit matching.
    "gvbsm_kd": dict(_SRE2L, ensemble=True),
    # INFER (github zhangxin-xd/UFC ufc_validation/val_static.py, sh/ufc_cifar.sh): the
    # plain mean of the M teachers' logits (:186-196), AdamW lr 1e-3 wd 0.01 on every
    # parameter (:213), CosineAnnealingLR(T_max=epochs) stepped per epoch (:214), KLDiv
    # batchmean of log_softmax(s / T) vs softmax(t / T), T 30, no T^2 (:246-249), MixUp
    # Beta(0.8, 0.8) with the labels mixed alike (:218-228, :238-239), RandomCrop(32, pad
    # 4) + flip (:66-71), batch 64, 400 epochs (sh/ufc_cifar.sh). Use with mode "static"
    # (labels once per clean image, the INFER artefact's default).
    "infer": dict(_SRE2L, epochs=400, batch_size=64, temperature=30.0, decay_norms_biases=True,
                  crop_min_scale=1.0, pad_crop=4, cutmix_alpha=0.0, mixup_alpha=0.8,
                  ensemble=True, ensemble_reduce="mean"),
    # INFER+Dyn (val_dyn.py): the same student, labels from the teachers on every augmented
    # batch (mode "online"), 80 epochs (sh/ufc_cifar.sh).
    "infer_dyn": dict(_SRE2L, epochs=80, batch_size=64, temperature=30.0,
                      decay_norms_biases=True, crop_min_scale=1.0, pad_crop=4,
                      cutmix_alpha=0.0, mixup_alpha=0.8, ensemble=True, ensemble_reduce="mean"),
}
RELABEL_DEFAULTS = dict(recipe="sre2l", mode="online", top_k=0, seeds=3, seed=0,
                        protocol="cpu", model=None, report="last", label_dtype="float16",
                        top_k_rest="uniform",  # top_k: the other classes' mass uniform | drop
                        label_epochs=0,   # label pruning: M epochs of augmentations, replayed
                        eval_every=10,    # report="best": evaluate every this many epochs
                        select="test",    # report="best": pick the epoch on test | val
                        labels="teacher",   # teacher: its logits (online / stored) | projector:
                                            # a fitted low-rank projector (HeLlO), see
                                            # jaxdd.labels.projector
                        rank=4,             # projector: rank R of its low-rank head
                        extractor="teacher",  # projector: frozen features: teacher | random
                        body_rank=0,        # projector: LoRA rank on the extractor (0 = off)
                        fit_epochs=300,     # projector: epochs of fitting to the teacher
                        fit_lr=3e-2)        # projector: Adam lr (cosine to 0) of the fit
REPORT_LABELS = {"test": "best (test-selected; optimistic)", "val": "best (val-selected)"}


# ---------------------------------------------------------------------------------------
# Recover


def recover_config(cfg: dict) -> RecoverConfig:
    """RecoverConfig from the config's `recover` section (lists -> tuples: it is hashable)."""
    r = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.get("recover", {}).items()}
    return dataclass_from(RecoverConfig, r)


def _check_teacher_set(teachers: list, tdirs: list[str]) -> None:
    """Refuse teachers that cannot be matched together: other data, classes, image shape or
    preprocessing than the first."""
    _, _, pre0, man0 = teachers[0]
    for d, (_, _, pre, man) in zip(tdirs, teachers):
        check_compatible(man, man0["dataset"], int(man0["num_classes"]), man0["input_shape"])
        if preprocess_sha(pre) != preprocess_sha(pre0):
            raise ValueError(f"teacher {d} uses other preprocessing than {tdirs[0]}; train "
                             f"every teacher with the same `preprocess`")


def _refuse_bn_free(cfg: dict, rcfg: RecoverConfig, ds: Any) -> None:
    """Before anything is written: a teacher model without BatchNorm is matched through its
    conv inputs only, so it needs recover.conv_stats (G-VBSM's instance-norm ConvNet)."""
    if rcfg.conv_stats:
        return
    for name, d in zip(teacher_models(cfg), teacher_dirs(cfg)):
        if ds is not None:
            k, shape = ds.num_classes, tuple(ds.image_shape)
        else:  # no data read: the teachers are complete, their manifests name the shape
            man = jteachers.read_manifest(d)
            k, shape = int(man["num_classes"]), tuple(man["input_shape"])
        if not get_model(name, k, shape).has_batch_stats:
            raise ValueError(f"teacher model {name!r} has no BatchNorm: it can only be matched "
                             f"through conv statistics (set recover.conv_stats=True) or use a "
                             f"BN model")


def _no_batch(consts: Any, key: jax.Array, t: jax.Array) -> None:
    """Recovery reads no real data: every step's batch is empty."""
    return None


def run(ctx: Context, options: RunOptions) -> dict:
    """The registry's `run`: recover (or RDED) into ctx.out_dir, artefact paths included."""
    res = recover(ctx.cfg, ctx.out_dir, ctx.quiet, ctx)
    return {**res, "artefacts": {"artefact": res["artefact"]}}


def _int_seed(key: jax.Array) -> int:
    """A 32-bit numpy seed from a jax key (for draws made on the host)."""
    return int(np.asarray(jax.random.key_data(key)).ravel()[-1])


def recover(cfg: dict, out_dir: str, quiet: bool = False, ctx: Context | None = None) -> dict:
    """Teacher (load or train) -> recovered images -> OUT/artefact; returns a summary dict.

    Each batch is one Distiller (`make_recover`) driven by `jaxdd.run.driver` for
    recover.iterations steps (non-finite steps skipped and counted, as for every method);
    a finished batch is saved to OUT/batches/ and is the unit of resumption.

    Training images are read only when something needs them: real init (one image per
    (class, IPC index), read per batch), G-VBSM's conv targets, or a teacher still to be
    trained. With several processes (`jax.distributed`) batch n is recovered by process
    n mod P on its own devices and written by it; process 0 then assembles the artefact
    from OUT/batches/ (a filesystem every process sees). `ctx.writer` (a
    `jaxdd.run.metrics.MetricWriter`) gets each batch's final losses as `recover/*` at step
    = batch number, once all batches are done."""
    ctx = ctx or Context(cfg, out_dir, quiet)
    method = cfg.get("method", "sre2l")
    seed = int(cfg.get("seed", 0))
    ipc = int(cfg["ipc"])
    rcfg = recover_config(cfg)
    streamed = cfg.get("image_size") is not None
    needs_data = rcfg.init == "real" or rcfg.conv_stats or not teacher_ready(cfg)
    ds = ctx.ds if needs_data else None
    _refuse_bn_free(cfg, rcfg, ds)
    check_run_dir(out_dir, cfg)
    mesh = mesh_from(cfg)
    tdirs, teacher_seconds = ensure_teachers(cfg, ds, quiet, mesh)
    num = teacher_config(cfg).num_teachers
    per_dir = num if rcfg.stacked_teachers else 1
    teachers = [jteachers.load_teachers(d, per_dir) for d in tdirs]  # (model, vlist, pre, man)
    model, vlist, pre, tman = teachers[0]
    k_classes, shape = int(tman["num_classes"]), tuple(int(s) for s in tman["input_shape"])
    if ds is not None:
        check_compatible(tman, ds.name, ds.num_classes, ds.image_shape)
    else:  # nothing read: the teacher defines the classes and the image shape
        want = shape if not streamed else (int(cfg["image_size"]),) * 2 + shape[2:]
        check_compatible(tman, cfg["dataset"], k_classes, want)
    _check_teacher_set(teachers, tdirs)
    # A list (several architectures, or a rotation) or one model's stacked teachers.
    listed = len(tdirs) > 1 or rcfg.teacher_schedule == "rotate"
    if listed:
        models = [m for m, vl, _, _ in teachers for _ in vl]
        variables = [v for _, vl, _, _ in teachers for v in vl]
    else:
        variables = stack_teachers(vlist) if rcfg.stacked_teachers else vlist[0]
    bounds = pixel_bounds(pre)
    key = jax.random.key(seed)
    real_init = None   # (cls, ipcs) -> initial images of a batch, model space, flat
    if rcfg.init == "real" and streamed:  # DWA / EDC: read only the batch's own images
        idx_KxI = stream.sample_class_indices(ds.train.labels(), k_classes, ipc,
                                              _int_seed(jax.random.fold_in(key, 0)))
        real_init = lambda at: jdata.apply(pre, stream.read_images(  # noqa: E731
            ds.train, idx_KxI[at].reshape(-1), shape, threads=ds.workers))
    elif rcfg.init == "real":
        xr, _ = jdata.sample_per_class(jax.random.fold_in(key, 0), ds, ipc)
        x_init = jdata.apply(pre, xr).reshape(k_classes, ipc, *shape)
        real_init = lambda at: x_init[at].reshape(-1, *shape)  # noqa: E731
    k_rec = jax.random.fold_in(key, 1)

    bdir = os.path.join(out_dir, "batches")
    os.makedirs(bdir, exist_ok=True)
    jobs = batch_layout(rcfg, k_classes, ipc)
    conv_targets, conv_dirs = None, []
    if rcfg.conv_stats and listed:  # one entry per teacher, in its own directory's cache
        conv_targets = []
        for d, (m, vl, _, man) in zip(tdirs, teachers):
            for v in vl:
                t, dirs = conv_targets_lib.teacher_targets(
                    os.path.join(d, "conv_targets"), m, [v], man["model"], ds, pre, rcfg,
                    progress=Progress(f"conv targets {man['model']}", enabled=not quiet),
                    mesh=mesh)
                conv_targets.append(t)
                conv_dirs += dirs
    elif rcfg.conv_stats:  # G-VBSM: dataset statistics of every conv input, cached per teacher
        conv_targets, conv_dirs = conv_targets_lib.teacher_targets(
            os.path.join(tdirs[0], "conv_targets"), model, vlist, tman["model"], ds, pre, rcfg,
            stacked=rcfg.stacked_teachers, progress=Progress("conv targets", enabled=not quiet),
            mesh=mesh)
    distiller = (make_recover(rcfg, models, variables, bounds, conv_targets) if listed
                 else make_recover(rcfg, model, variables, bounds, conv_targets))
    procs, me = jax.process_count(), jax.process_index()
    if procs > 1:  # each process recovers its own batches on its own devices
        mesh = make_mesh(devices=jax.local_devices())
    mine = [n for n in range(len(jobs)) if n % procs == me]
    progress = Progress(f"recover {method}", every=0.0 if len(mine) < 50 else 2.0,
                        enabled=not quiet)
    path_of = lambda i, c0: os.path.join(bdir, f"ipc{i:05d}_c{c0:06d}.npz")  # noqa: E731
    t0 = time.time()
    for done, n in enumerate(mine):  # class-major batches of len(ipcs) per class
        i, cls, ipcs = jobs[n]
        c0, at = int(cls[0]), (cls[:, None], ipcs[None, :])

        def compute(i=i, cls=cls, ipcs=ipcs, c0=c0, at=at):
            x0 = (jnp.zeros((len(cls) * len(ipcs), *shape), jnp.float32) if real_init is None
                  else jnp.asarray(real_init(at)))
            k_init, k_loop = jax.random.split(jax.random.fold_in(jax.random.fold_in(k_rec, i), c0))
            state = distiller.init(k_init, x0, jnp.asarray(np.repeat(cls, len(ipcs)), jnp.int32))
            try:
                state, hist = driver.run(distiller, state, _no_batch, k_loop, rcfg.iterations,
                                         mesh=mesh, log_every=rcfg.iterations,
                                         max_nonfinite=int(cfg.get("max_nonfinite", 10)))
            except driver.NonFiniteError as e:
                raise driver.NonFiniteError(f"recover batch (IPC index {i}, classes {c0}.."
                                            f"{cls[-1]}): {e}; lower recover.lr") from None
            last = hist[-1]
            return {"x": np.asarray(state.syn.x_syn_NHWC),
                    **{k: np.float32(last[k]) for k in ("loss", "ce", "bn")},
                    "nonfinite_steps": np.int32(sum(h.get("nonfinite", 0) for h in hist))}

        z = resumable_batch(path_of(i, c0), compute)
        progress(done + 1, len(mine), f"ce {float(z['ce']):.3f} bn {float(z['bn']):.3f}")
    seconds = round(time.time() - t0, 2)
    art_dir = os.path.join(out_dir, "artefact")
    accs = [a for _, vl, _, man in teachers
            for a in [r["test_accuracy"] for r in man["teachers"] if r["complete"]][:len(vl)]]
    summary = {"out": out_dir, "artefact": art_dir, "method": method, "dataset": cfg["dataset"],
               "ipc": ipc, "teacher": tdirs[0], "teacher_dirs": tdirs,
               "teacher_test_accuracy": accs,
               "teacher_seconds": teacher_seconds, "distill_seconds": seconds,
               "batches": len(jobs), "batches_here": len(mine)}
    if procs > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxdd recover: every batch written")
        if me != 0:  # wait for process 0's artefact, so a next stage can read it
            multihost_utils.sync_global_devices("jaxdd recover: artefact written")
            return summary

    out = np.zeros((k_classes, ipc, *shape), np.float32)
    finals = []
    for i, cls, ipcs in jobs:
        path = path_of(i, int(cls[0]))
        if not os.path.exists(path):
            raise FileNotFoundError(f"recover batch {path} is missing: with several processes "
                                    f"OUT must be on a filesystem every process sees")
        with np.load(path) as z:
            out[cls[:, None], ipcs[None, :]] = z["x"].reshape(len(cls), len(ipcs), *shape)
            finals.append({k: float(z[k]) for k in ("loss", "ce", "bn")})
    x_syn = out.reshape(k_classes * ipc, *shape)
    y_syn = np.repeat(np.arange(k_classes, dtype=np.int32), ipc)
    for n, final in enumerate(finals):
        ctx.writer.write_scalars(n + 1, {f"recover/{k}": v for k, v in final.items()})
    ctx.writer.flush()
    mean = {k: float(np.mean([f[k] for f in finals])) for k in ("loss", "ce", "bn")}
    artefact.save(art_dir, x_syn, y_syn, preprocess=pre, method=method, dataset=cfg["dataset"],
                  num_classes=k_classes, ipc=ipc, seed=seed, config=cfg, lr=None, overwrite=True,
                  extra={"distill_seconds": seconds, "teacher_dir": os.path.abspath(tdirs[0]),
                         "teacher_dirs": [os.path.abspath(d) for d in tdirs],
                         "teacher_model": tman["model"],
                         "teacher_models": [man["model"] for _, _, _, man in teachers],
                         "teacher_schedule": rcfg.teacher_schedule if listed else "mean",
                         "teacher_test_accuracy": accs,
                         "teacher_seconds": teacher_seconds, "final_loss": mean["loss"],
                         "final_ce": mean["ce"], "final_bn": mean["bn"], "batches": len(jobs),
                         "conv_targets": [os.path.abspath(d) for d in conv_dirs]})
    if procs > 1:
        multihost_utils.sync_global_devices("jaxdd recover: artefact written")
    return {**summary, "final_ce": mean["ce"], "final_bn": mean["bn"]}


# ---------------------------------------------------------------------------------------
# Relabel


def resolve_artefact_dir(path: str) -> str:
    """DIR may be an artefact or a recover run directory holding DIR/artefact/."""
    inner = os.path.join(path, "artefact")
    return inner if not artefact.exists(path) and artefact.exists(inner) else path


def relabel_options(art_meta: dict, overrides: dict) -> dict:
    """Recipe defaults <- the artefact config's `relabel` section <- explicit overrides."""
    saved = dict(art_meta.get("config", {}).get("relabel", {}) or {})
    opts = {**RELABEL_DEFAULTS, **{k: v for k, v in saved.items() if v is not None}}
    opts.update({k: v for k, v in overrides.items() if v is not None})
    if opts["recipe"] not in RECIPES:
        raise ValueError(f"unknown student recipe {opts['recipe']!r}; use {', '.join(RECIPES)}")
    recipe = dict(RECIPES[opts["recipe"]])
    merged = {**recipe, **{k: v for k, v in saved.items() if k in recipe and v is not None},
              **{k: v for k, v in overrides.items() if k in recipe and v is not None}}
    opts.update(merged)
    given = {k for d in (saved, overrides) for k, v in d.items() if v is not None}
    factor = int((art_meta.get("config", {}).get("rded") or {}).get("factor", 1) or 1)
    if opts["recipe"] == "rded" and factor > 1:  # RDED's student augmentation at factor f
        opts.update({k: v for k, v in (("shuffle_patches", factor),
                                       ("crop_min_scale", 1.0 / factor)) if k not in given})
    if opts["mode"] not in ("online", "stored", "static"):
        raise ValueError(f"relabel mode {opts['mode']!r}; use online, stored (per epoch) or "
                         f"static (one label per image, INFER)")
    if opts["ensemble_reduce"] not in ("rescale", "mean"):
        raise ValueError(f"ensemble_reduce {opts['ensemble_reduce']!r}; use rescale (G-VBSM) "
                         f"or mean")
    if opts["mode"] == "static" and int(opts["top_k"]):
        raise ValueError("static labels are mixed linearly and need every logit: top_k 0")
    if (opts["mode"] == "static" or opts["labels"] == "projector") and \
            opts["label_dtype"] not in ("float16", "bfloat16", "float32"):
        what = "static labels are" if opts["mode"] == "static" else "the projector is"
        raise ValueError(f"{what} stored as floats: use --label-dtype float16, bfloat16 "
                         f"or float32 (int8 / int4 codes are for --mode stored)")
    if opts["labels"] not in ("teacher", "projector"):
        raise ValueError(f"labels {opts['labels']!r}; use teacher (its logits) or projector")
    if opts["labels"] == "projector":
        if overrides.get("mode") in ("stored", "static"):
            raise ValueError("labels projector generates the labels on the fly (nothing but "
                             "the projector is stored); drop --mode " + overrides["mode"])
        opts["mode"] = "online"
        jprojector.ProjectorConfig(**projector_fields(opts))  # validates rank, extractor, ...
    if opts["report"] not in ("last", "best"):
        raise ValueError(f"report {opts['report']!r}; use last (final epoch) or best")
    if opts["select"] not in REPORT_LABELS:
        raise ValueError(f"select {opts['select']!r}; use test or val")
    if int(opts["eval_every"]) < 1:
        raise ValueError(f"eval_every must be >= 1, got {opts['eval_every']}")
    return opts


def projector_fields(opts: dict) -> dict:
    """ProjectorConfig fields from the relabel options."""
    return dict(rank=int(opts["rank"]), extractor=opts["extractor"],
                body_rank=int(opts["body_rank"]), fit_epochs=int(opts["fit_epochs"]),
                fit_lr=float(opts["fit_lr"]),
                dtype=opts["label_dtype"], extractor_seed=int(opts["seed"]))


def relabel(art_path: str, teacher_path: str | list[str] | None, overrides: dict | None = None,
            quiet: bool = False, ds: Any = None, checkpoint_dir: str | None = None) -> dict:
    """Train `seeds` students on the artefact with soft labels; evaluate; record the result.

    All seeds share the augmentation key (hence the same stored labels, as FKD) and differ
    in their initialisation; stored and online labels give the same students. `ds`: the
    evaluation data (default: the artefact's dataset, streamed when its config sets
    image_size); a `StreamedDataset` is evaluated through the loader.
    `checkpoint_dir` (`jaxdd relabel --checkpoint-dir`): the students train in segments
    (of `eval_every` epochs with report="best", else about a tenth of the epochs) and their
    state (and the curve so far) is saved after each; a rerun resumes after the last saved
    segment and ends with the students of an uninterrupted segmented run, bit for bit. The
    directory is claimed for this artefact, teacher(s) and relabel options.
    """
    art_path = resolve_artefact_dir(art_path)
    art = artefact.load(art_path)
    paths = ([teacher_path] if isinstance(teacher_path, str) else list(teacher_path or [])
             or art.meta.get("teacher_dirs") or
             ([art.meta["teacher_dir"]] if art.meta.get("teacher_dir") else []))
    if not paths:
        raise ValueError("no teacher: pass --teacher DIR (the artefact does not name one)")
    o = relabel_options(art.meta, overrides or {})
    if not o["ensemble"]:
        paths = paths[:1]  # one teacher: the first network of the first directory
    teachers = [jteachers.load_teachers(p, None if o["ensemble"] else 1) for p in paths]
    k_classes, shape = art.num_classes, tuple(art.meta["image_shape"])
    for p, (_, _, tpre, tman) in zip(paths, teachers):
        check_compatible(tman, art.meta["dataset"], k_classes, shape)
        if preprocess_sha(tpre) != preprocess_sha(art.preprocess):
            raise ValueError(f"the teacher at {p} uses other preprocessing than the "
                             f"artefact ({tpre.kind} vs {art.preprocess.kind}); relabel needs both "
                             f"in the same pixel space")
    teacher_path = paths[0]
    model, vlist, _, tman = teachers[0]
    n_teachers = sum(len(vl) for _, vl, _, _ in teachers)
    art_cfg = art.meta.get("config", {}) or {}
    if ds is None:
        ds = load_data({"dataset": art.meta["dataset"], "seed": int(art.meta.get("seed", 0)),
                        "image_size": art_cfg.get("image_size"),
                        "data_workers": art_cfg.get("data_workers", 0)})
    elif ds.name != art.meta["dataset"]:
        raise ValueError(f"the artefact was made from {art.meta['dataset']}, the evaluation "
                         f"data is {ds.name}; pass that dataset's data")
    streamed = isinstance(ds, stream.StreamedDataset)
    student_name = o["model"] or get_protocol(o["protocol"]).model
    student = get_model(student_name, k_classes, shape)
    tcfg = TrainConfig(epochs=int(o["epochs"]), batch_size=int(o["batch_size"]), lr=float(o["lr"]),
                       momentum=float(o["momentum"]), weight_decay=float(o["weight_decay"]),
                       schedule=o["schedule"], optimizer=o["optimizer"], dsa="")
    rcfg = jrelabel.RelabelConfig(
        temperature=float(o["temperature"]), t2_factor=bool(o["t2_factor"]),
        crop_min_scale=float(o["crop_min_scale"]), flip=bool(o["flip"]),
        cutmix_alpha=float(o["cutmix_alpha"]), label_dtype=o["label_dtype"],
        top_k=int(o["top_k"]), lr_per_epoch=bool(o["lr_per_epoch"]), loss=o["loss"],
        ce_weight=float(o["ce_weight"]), cosine_span=float(o["cosine_span"]),
        decay_norms_biases=bool(o["decay_norms_biases"]), pad_crop=int(o["pad_crop"]),
        pad_fill=black_pixel(art.preprocess), mixup_alpha=float(o["mixup_alpha"]),
        shuffle_patches=int(o["shuffle_patches"]), top_k_rest=o["top_k_rest"],
        label_epochs=int(o["label_epochs"]))
    if rcfg.top_k and not 0 < rcfg.top_k <= k_classes:
        raise ValueError(f"top_k {rcfg.top_k} must be in 1..{k_classes}")

    mesh = make_mesh()  # every device of every process: data-parallel students
    n_dev = mesh.devices.size
    on_mesh = lambda tree: put_replicated(tree, mesh)  # noqa: E731
    # ensemble: per directory its teachers stacked (one vmapped architecture each)
    tvars = on_mesh([stack_teachers(vl) for _, vl, _, _ in teachers] if o["ensemble"]
                    else vlist[0])
    tmodels = [m for m, _, _, _ in teachers]

    def teacher_fn(tv, x_NHWC):
        if o["ensemble"]:
            logits_TxBxK = jnp.concatenate([jax.vmap(lambda v, m=m: m.apply(v, x_NHWC))(tv_d)
                                            for m, tv_d in zip(tmodels, tv)])
            return jrelabel.ensemble_logits(logits_TxBxK, rescale=o["ensemble_reduce"] == "rescale")
        return model.apply(tv, x_NHWC)

    n = art.x_syn_NHWC.shape[0]
    bs = min(tcfg.batch_size, n)
    # the batch split over the devices when it divides (else each device runs it whole)
    batch_sharding = (NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
                      if n_dev > 1 and bs % n_dev == 0 else None)
    x = on_mesh(np.asarray(art.x_syn_NHWC, np.float32))
    y = on_mesh(np.asarray(art.y_syn if art.y_syn.ndim == 1 else art.y_syn.argmax(-1), np.int32))
    key = jax.random.key(int(o["seed"]))
    aug_key = on_mesh(jax.random.fold_in(key, 1))
    keys = on_mesh(jax.random.split(jax.random.fold_in(key, 0), int(o["seeds"])))
    # INFER records what its set stores (base images, compensators); others: the images
    image_bytes = int(art.x_syn_NHWC.astype(np.float32).nbytes)
    if "compensator_bytes" in art.meta:
        image_bytes = int(art.meta["image_bytes"])
    compensator_bytes = int(art.meta.get("compensator_bytes", 0))
    labels_path, stored_bytes, file_bytes = None, 0, 0
    best, select, every = o["report"] == "best", o["select"], int(o["eval_every"])
    if streamed:
        # report="best": the students train in segments of `every` epochs, each followed by
        # one pass of the eval loader over the test (and val) split (`_segments`)
        if best and select == "val" and ds.val is None:
            raise ValueError(f"select='val' needs a validation split, and {ds.name} was opened "
                             f"without one; use select='test' (optimistic) or report='last'")
        xy_test = xy_val = None
        eval_sets = ()
    else:
        xy_test = on_mesh((jdata.apply(art.preprocess, ds.x_test), np.asarray(ds.y_test)))
        xy_val = (on_mesh((jdata.apply(art.preprocess, ds.x_val), np.asarray(ds.y_val)))
                  if len(ds.y_val) else None)
        if best and select == "val" and xy_val is None:
            raise ValueError(f"select='val' needs a validation split, and {ds.name} was loaded "
                             f"without one; use select='test' (optimistic) or report='last'")
        # report="best": the curve holds test accuracy (column 0) and, when selecting on it,
        # validation accuracy (column 1) after every `every` epochs and after the last one.
        eval_sets = (xy_test,) + ((xy_val,) if best and select == "val" else ())

    def fit(k, ev, x, y, ak, **labels_kw):  # the data as arguments: nothing is a constant
        kw = dict(aug_key=ak, y_syn=y, batch_sharding=batch_sharding, **labels_kw)
        if not best:
            return jrelabel.train_student(k, student, tcfg, rcfg, x, **kw), None
        eval_fn = lambda v: jnp.stack([accuracy(student, v, xe, ye) for xe, ye in ev])
        return jrelabel.train_student_evals(k, student, tcfg, rcfg, x, eval_fn, every, **kw)

    is_main = jax.process_index() == 0
    t0 = time.time()
    if not quiet and is_main:
        print(f"[relabel] {o['seeds']} {student_name} students x {tcfg.epochs} epochs "
              f"({steps_per_epoch(n, bs)} steps each), "
              + ("projector (HeLlO)" if o["labels"] == "projector" else o["mode"])
              + f" labels, loss {rcfg.loss}"
              + (f", evaluated every {every} epochs" if best else "")
              + (", compiled in segments of the evaluations" if best and streamed
                 else ", checkpointed segments" if checkpoint_dir is not None
                 else ", one compiled program")
              + (f", batches split over {n_dev} devices" if batch_sharding is not None else ""),
              file=sys.stderr, flush=True)
    proj = None
    if o["labels"] == "projector":  # HeLlO: fit, store, then generate labels on the fly
        proj, pparams, xv, w0 = _fit_projector(o, art_path, teacher_path, model, vlist[0],
                                               teacher_fn, tvars, x, y, aug_key, key, bs,
                                               rcfg, on_mesh, is_main)
        labels_path, stored_bytes = proj["file"], proj["bytes"]
        file_bytes = os.path.getsize(labels_path)
        ext = lambda xv, w0: jprojector.Extractor(model, xv, w0)  # noqa: E731
        label_args = (pparams, xv, w0)
        label_kw = lambda la: dict(  # noqa: E731
            teacher_fn=jprojector.label_fn(la[0], ext(la[1], la[2])))
    elif o["mode"] == "static":  # INFER: one label per clean image, stored once
        gen = jax.jit(lambda tv, x: jrelabel.static_labels(lambda xb: teacher_fn(tv, xb), x,
                                                           bs, rcfg))
        static = np.asarray(to_host(gen(tvars, x)))
        labels_path = os.path.join(art_path, "labels_static.npz")
        if is_main:
            safeio.savez(labels_path, values=static, meta_seed=np.asarray(int(o["seed"])),
                         meta_temperature=np.asarray(rcfg.temperature),
                         meta_teacher=np.asarray(os.path.abspath(teacher_path)))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("jaxdd relabel: labels written")
        with np.load(labels_path) as z:  # train from what is on disk
            static = z["values"]
        stored_bytes, file_bytes = int(static.nbytes), os.path.getsize(labels_path)
        label_args, label_kw = on_mesh(static), lambda st: dict(static=st)
    elif o["mode"] == "stored":
        gen = jax.jit(lambda tv, x, ak: jrelabel.generate_labels(
            lambda xb: teacher_fn(tv, xb), x, ak, tcfg.epochs, bs, rcfg))
        labels = jax.tree.map(to_host, gen(tvars, x, aug_key))
        labels_path = os.path.join(art_path, "labels.npz")
        if is_main:
            jrelabel.save_labels(labels_path, labels, seed=int(o["seed"]), epochs=tcfg.epochs,
                                 batch_size=bs, temperature=rcfg.temperature, top_k=rcfg.top_k,
                                 label_dtype=rcfg.label_dtype, top_k_rest=rcfg.top_k_rest,
                                 label_epochs=rcfg.label_epochs,
                                 teacher=os.path.abspath(teacher_path))
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices("jaxdd relabel: labels written")
        stored, _ = jrelabel.load_labels(labels_path)  # train from what is on disk
        stored_bytes = jrelabel.label_bytes(stored)
        file_bytes = os.path.getsize(labels_path)
        label_args, label_kw = on_mesh(stored), lambda st: dict(stored=st)
    else:
        label_args = tvars
        label_kw = lambda tv: dict(teacher_fn=lambda xb: teacher_fn(tv, xb))  # noqa: E731
    if streamed:  # one pass over the test (and val) split per evaluation, all seeds at once
        eval_bs = -(-256 // n_dev) * n_dev
        seeds_apply = jax.vmap(student.apply, in_axes=(0, None))
        ev_sharding = NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))
        split_acc = lambda split, v: stream.loader_accuracy(  # noqa: E731
            seeds_apply, v, ds.loader(split, batch_size=eval_bs, sharding=ev_sharding,
                                      preprocess=art.preprocess))
    # every seed's accuracy on an in-memory split
    acc = jax.jit(jax.vmap(lambda v, xe, ye: accuracy(student, v, xe, ye),
                           in_axes=(0, None, None)))
    segmented = (streamed and best) or checkpoint_dir is not None
    if segmented:
        if best and streamed:
            evaluate = lambda v: [split_acc("test", v)] + (  # noqa: E731
                [split_acc("val", v)] if select == "val" else [])
        elif best:
            evaluate = lambda v: [to_host(acc(v, *xy)) for xy in eval_sets]  # noqa: E731
        else:
            evaluate = None
        ckpt = None
        if checkpoint_dir is not None:
            ckpt = Checkpointer(checkpoint_dir, {
                "relabel": "students",
                "set_sha256": array_digest([art.x_syn_NHWC, art.y_syn]),
                "teachers_sha256": array_digest(jax.tree.leaves(   # the host copies
                    [vl for _, vl, _, _ in teachers] if o["ensemble"] else vlist[0])),
                "student": student_name, "options": {k: o[k] for k in sorted(o)}},
                every=1, keep=2, async_save=False, flag="--checkpoint-dir", resume_flag=None)
        variables, curve = _segments(
            lambda c, e0, num, la, x, y, ak: jrelabel.train_student_epochs(
                c, ak, student, tcfg, rcfg, x, e0, num, y_syn=y, batch_sharding=batch_sharding,
                **label_kw(la)),
            jax.jit(jax.vmap(lambda k: jrelabel.init_student(k, student, tcfg, rcfg)))(keys),
            (label_args, x, y, aug_key),
            jrelabel.eval_epochs(tcfg.epochs, every if best else chunk_size(tcfg.epochs)),
            evaluate, (1 + (select == "val")) if best else 0,
            Progress("relabel", enabled=not quiet and is_main), ckpt)
    else:
        train = jax.jit(jax.vmap(lambda k, la, *a: fit(k, *a, **label_kw(la)),
                                 in_axes=(0,) + (None,) * 5))
        variables, curve = train(keys, label_args, eval_sets, x, y, aug_key)
    jax.block_until_ready(variables)
    t_train = time.time() - t0
    if streamed and best:  # the curve's last row is the final student
        test = curve[:, -1, 0]
        val = curve[:, -1, 1] if select == "val" else np.array([np.nan])
    elif streamed:
        test = split_acc("test", variables)
        val = np.array([np.nan])  # the val split is cut from train by labels: a full pass
    else:
        if best:  # the curve's last row is the final student
            curve = np.asarray(to_host(curve), np.float64)     # (seeds, evaluations, 1 or 2)
            test = curve[:, -1, 0]
        else:
            test = np.asarray(to_host(acc(variables, *xy_test)), np.float64)
        val = (np.asarray(to_host(acc(variables, *xy_val)), np.float64) if xy_val is not None
               else np.array([np.nan]))
    loss_txt = ("kd (KL at temperature T, eq. 2)" if rcfg.loss == "kd" else
                f"mse_ce (G-VBSM logit matching: MSE(logits) + {rcfg.ce_weight:g} CE(y), eq. 3)")
    res = {
        "accuracy_mean": float(test.mean()), "accuracy_std": float(test.std()),
        "accuracies": test.tolist(), "val_accuracy_mean": float(val.mean()),
        "seeds": int(o["seeds"]), "protocol": f"kd-{o['recipe']}", "model": student_name,
        "report": "final epoch" if not best else f"final epoch + {REPORT_LABELS[select]}",
        "mode": o["mode"], "recipe": o["recipe"],
        "epochs": tcfg.epochs, "batch_size": bs, "optimizer": tcfg.optimizer, "lr": tcfg.lr,
        "weight_decay": tcfg.weight_decay, "schedule": tcfg.schedule,
        "lr_per_epoch": rcfg.lr_per_epoch, "cosine_span": rcfg.cosine_span,
        "temperature": rcfg.temperature, "t2_factor": rcfg.t2_factor, "top_k": rcfg.top_k,
        "top_k_rest": rcfg.top_k_rest if rcfg.top_k else None,
        "label_dtype": rcfg.label_dtype, "label_epochs": rcfg.label_epochs,
        "stored_label_epochs": jrelabel.stored_epochs(tcfg.epochs, rcfg.label_epochs),
        "ensemble": bool(o["ensemble"]),
        "num_teachers": n_teachers, "loss": loss_txt, "ce_weight": rcfg.ce_weight,
        "augment": {"crop_min_scale": rcfg.crop_min_scale, "pad_crop": rcfg.pad_crop,
                    "flip": rcfg.flip, "cutmix_alpha": rcfg.cutmix_alpha,
                    "mixup_alpha": rcfg.mixup_alpha, "shuffle_patches": rcfg.shuffle_patches},
        "decay_norms_biases": rcfg.decay_norms_biases,
        "eval_seed": int(o["seed"]), "teacher_dir": os.path.abspath(teacher_path),
        "teacher_dirs": [os.path.abspath(p) for p in paths],
        "teacher_test_accuracy": [a for _, vl, _, man in teachers for a in
                                  [r["test_accuracy"] for r in man["teachers"] if r["complete"]][:len(vl)]],
        "image_bytes": image_bytes, "label_bytes": stored_bytes,
        **({"compensator_bytes": compensator_bytes} if "compensator_bytes" in art.meta else {}),
        "label_bytes_if_stored": jrelabel.estimate_label_bytes(
            n, tcfg.epochs, k_classes, rcfg.label_dtype, rcfg.top_k,
            label_epochs=rcfg.label_epochs, batch_size=bs),
        "ensemble_reduce": o["ensemble_reduce"] if o["ensemble"] else None,
        "labels_file": labels_path, "labels_file_bytes": file_bytes, "labels": o["labels"],
        "method": art.meta["method"], "dataset": art.meta["dataset"], "ipc": art.meta["ipc"],
        "train_seconds": round(t_train, 2), "seconds": round(time.time() - t0, 2),
    }
    if proj is not None:
        res["projector"] = proj
    if best:
        res.update(best_report(curve, jrelabel.eval_epochs(tcfg.epochs, every), select),
                   eval_every=every)
    if is_main:
        artefact.add_evaluation(art_path, res)
    return {**res, "artefact": art_path}


def _segments(segment_fn, carry, args: tuple, epochs_R: list[int], evaluate, cols: int,
              progress: Progress, ckpt: Checkpointer | None = None) -> tuple[Any, Any]:
    """The seeds' students trained in segments ending at epochs_R, `evaluate(variables)` (a
    list of `cols` (seeds,) accuracies, test first; None: no curve) after each.

    segment_fn(carry, first_epoch, num_epochs, *args) -> carry is one student's
    `train_student_epochs`; it is vmapped over the seeds' carries and compiled once per
    segment length (the carry is donated). `ckpt`: the carry and the curve so far are saved
    (synchronously: the next segment donates them) at step = epochs done after every
    segment, and training resumes after the latest save. Returns (final variables, curve
    (seeds, R, cols) in `train_student_evals`' layout, or None)."""
    seeds = jax.tree.leaves(carry)[0].shape[0]
    curve = np.full((seeds, len(epochs_R), cols), np.nan) if evaluate else None
    pack = lambda c, cv: {"carry": c, **({"curve": cv} if cv is not None else {})}  # noqa: E731
    done, r0 = 0, 0
    if ckpt is not None:
        restored = ckpt.restore(pack(carry, curve))
        if restored is not None:
            done, state = restored
            if done not in epochs_R:
                raise CheckpointError(f"checkpoint step {done} in {ckpt.run_dir} is not a "
                                      f"segment end ({epochs_R}); use a new --checkpoint-dir")
            carry, r0 = state["carry"], epochs_R.index(done) + 1
            if curve is not None:
                curve = np.array(state["curve"], np.float64)
            progress(r0, len(epochs_R), f"resumed after epoch {done}")
    segments = {}
    try:
        for r in range(r0, len(epochs_R)):
            e = epochs_R[r]
            num = e - done
            if num not in segments:
                segments[num] = jax.jit(jax.vmap(
                    lambda c, e0, *a, num=num: segment_fn(c, e0, num, *a),
                    in_axes=(0, None) + (None,) * len(args)), donate_argnums=0)
            carry = segments[num](carry, jnp.asarray(done, jnp.int32), *args)
            done = e
            extra = ""
            if curve is not None:
                curve[:, r] = np.stack([np.asarray(a, np.float64) for a in evaluate(carry[0])],
                                       axis=-1)
                extra = f"epoch {e}: test {100 * curve[:, r, 0].mean():.2f} %"
            if ckpt is not None:
                ckpt.save(e, pack(carry, curve), force=True)
            progress(r + 1, len(epochs_R), extra)
    finally:
        if ckpt is not None:
            ckpt.close()
    return carry[0], curve


def _fit_projector(o: dict, art_path: str, teacher_path: str, model, teacher_vars,
                   teacher_fn, tvars, x, y, aug_key, key, bs: int, rcfg, on_mesh,
                   is_main: bool) -> tuple[dict, Any, Any, Any]:
    """HeLlO's projector for `relabel --labels projector`: fit to the teacher (augmentations
    of fold_in(fold_in(key, 2), 1)), write DIR/projector.npz (atomic), reload it (students
    train from what is on disk), and measure it on the first epoch of the student's own
    augmentations. Returns (summary, params, extractor variables, W0)."""
    pcfg = jprojector.ProjectorConfig(**projector_fields(o))
    xv = on_mesh(jprojector.extractor_variables(pcfg, model, teacher_vars))
    w0 = jax.jit(lambda xv, x, y: jprojector.initial_map(pcfg, model, xv, x, y))(xv, x, y)
    ext = lambda xv, w0: jprojector.Extractor(model, xv, w0)  # noqa: E731
    pkey = jax.random.fold_in(key, 2)
    t0 = time.time()
    fitted, curve = jax.jit(lambda tv, xv, w0, x: jprojector.fitted_projector(
        pkey, pcfg, ext(xv, w0), lambda xb: teacher_fn(tv, xb), x, bs, rcfg))(tvars, xv, w0, x)
    fitted = jax.tree.map(to_host, fitted)
    path = os.path.join(art_path, "projector.npz")
    nbytes = jprojector.projector_bytes(fitted)
    if is_main:
        jprojector.save_projector(path, fitted, rank=pcfg.rank, extractor=pcfg.extractor,
                                  extractor_seed=pcfg.extractor_seed, init=pcfg.init,
                                  body_rank=pcfg.body_rank, fit_epochs=pcfg.fit_epochs,
                                  fit_loss=pcfg.fit_loss, seed=int(o["seed"]),
                                  temperature=rcfg.temperature, dtype=pcfg.dtype,
                                  teacher=os.path.abspath(teacher_path), bytes=nbytes)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices("jaxdd relabel: projector written")
    pparams, _ = jprojector.load_projector(path)
    agree = jax.jit(lambda pp, tv, xv, w0, x, ak: jprojector.agreement(
        pp, ext(xv, w0), lambda xb: teacher_fn(tv, xb), x, ak, 1, bs, rcfg))(
        on_mesh(pparams), tvars, xv, w0, x, aug_key)
    body = jax.tree.leaves(pparams.get("body", {}))
    head_bytes = nbytes - sum(a.size * a.dtype.itemsize for a in body)
    ext_param_bytes = sum(np.asarray(a).nbytes for a in jax.tree.leaves(teacher_vars))
    summary = {
        "file": path, "bytes": jprojector.projector_bytes(pparams), "head_bytes": int(head_bytes),
        "rank": pcfg.rank, "body_rank": pcfg.body_rank, "extractor": pcfg.extractor,
        "extractor_seed": pcfg.extractor_seed, "init": pcfg.init, "dtype": pcfg.dtype,
        # what a student needs besides the projector: the teacher's body (shipped with the
        # teacher) or nothing (a fresh init regenerated from the seed)
        "extractor_bytes_extra": 0,
        "extractor_needs": (f"the teacher's body (in its {ext_param_bytes:,d} B of variables, "
                            "shipped with the teacher)" if pcfg.extractor == "teacher" else
                            f"nothing: {model.name} initialised from seed {pcfg.extractor_seed}"),
        "fit_epochs": pcfg.fit_epochs, "fit_loss": pcfg.fit_loss, "fit_lr": pcfg.fit_lr,
        "fit_loss_first": float(curve[0]), "fit_loss_last": float(curve[-1]),
        "fit_seconds": round(time.time() - t0, 2),
        # projector vs teacher on the student's first epoch of augmentations (not fitted on)
        "top1_agreement": float(agree["top1_agreement"]), "kl": float(agree["kl"])}
    return summary, on_mesh(pparams), xv, w0


def black_pixel(pre: jdata.Preprocess) -> tuple[float, ...]:
    """A black pixel in the model space of per-channel preprocessing (what RandomCrop's zero
    padding of [0, 1] pixels becomes there): -mean/std for normalize, 0 otherwise (for ZCA
    kinds 0 is the mean image, the nearest per-channel value)."""
    if pre.kind != "normalize":
        return ()
    return tuple(float(v) for v in -np.asarray(pre.mean_C, np.float64)
                 / np.asarray(pre.std_C, np.float64))


def best_report(curve_SxRxM: np.ndarray, epochs_R: list[int], select: str) -> dict:
    """Best-of-curve fields per seed. Column 0 is test accuracy, column 1 (select='val')
    validation accuracy; the selected epoch is the first maximum of the selection column."""
    c = np.asarray(curve_SxRxM, np.float64)
    idx_S = c[:, :, 0 if select == "test" else 1].argmax(axis=1)
    best_S = c[np.arange(c.shape[0]), idx_S, 0]
    out = {"best_label": REPORT_LABELS[select], "select": select,
           "best_accuracy_mean": float(best_S.mean()), "best_accuracy_std": float(best_S.std()),
           "best_accuracies": best_S.tolist(), "best_epochs": [epochs_R[i] for i in idx_S],
           "eval_epochs": list(epochs_R), "test_curve": c[:, :, 0].tolist()}
    if select == "val":
        out["val_curve"] = c[:, :, 1].tolist()
    return out


def config_summary(cfg: dict) -> dict:
    """The dataclass configs a recover config resolves to (for logs and errors)."""
    return {"recover": dataclasses.asdict(recover_config(cfg)),
            "teacher": dataclasses.asdict(teacher_config(cfg))}


METHODS = [Method(name, "statistics", RecoverConfig, run, section="recover",
                  sections=("teacher", "relabel"), doc=doc) for name, doc in (
    ("sre2l", "squeeze, recover (BN statistics), relabel"),
    ("cda", "SRe2L with a curriculum of crop scales"),
    ("gvbsm", "SRe2L with conv/patch statistics, teacher ensembles, diversity"),
    ("dwa", "SRe2L with real init and a perturbed teacher per batch"))]
