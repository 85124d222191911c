"""Trajectory matching end to end: buffer (experts) -> MTT/TESLA/DATM/FTD -> artefact."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import data as jdata
from jaxdd.population import experts as jexperts
from jaxdd.augment import dsa
from jaxdd.methods import mtt
from jaxdd.models import auto_chunks, get_model
from jaxdd.pipelines.common import Context, Prepared, dataclass_from, init_images, run_prepared
from jaxdd.pipelines.spec import Method
from jaxdd.run.progress import Progress


def buffer_dir(cfg: dict) -> str:
    """Experts are shared by every IPC of a preset: one buffer per (dataset, model, recipe)."""
    if cfg.get("buffer_dir"):
        return cfg["buffer_dir"]
    tag = f"{cfg['dataset'].replace('/', '_').replace(':', '_')}-{cfg['model']}-{cfg.get('preprocess', 'normalize')}"
    ecfg = cfg.get("experts", {})
    opt = ecfg.get("optimizer", "sgd") + ("-ast" if ecfg.get("loss_scales") or ecfg.get("grad_penalty") else "")
    return os.path.join(os.environ.get("JAXDD_BUFFERS", "runs/buffers"), f"{tag}-{opt}-s{cfg.get('seed', 0)}")


def build_experts(ctx: Context) -> str:
    cfg = ctx.cfg
    path = buffer_dir(cfg)
    ecfg = dataclass_from(jexperts.ExpertConfig, cfg.get("experts", {}))
    jexperts.build_buffer(path, ctx.ds, cfg["model"], ecfg, int(cfg.get("seed", 0)),
                          preprocess=ctx.pre,
                          progress_cb=Progress("buffer", enabled=not ctx.quiet))
    return path


def init_correct_images(ctx: Context, key: jax.Array, apply_fn, experts_E) -> tuple[np.ndarray, np.ndarray]:
    """DATM's initial set in model space: real images of each class that an expert of
    `experts_E` (leaves (E, ...)) classifies correctly (`mtt.datm_pick_correct`)."""
    if ctx.cfg.get("init", "real") != "real":
        raise ValueError(f"mtt.init_correct_only picks real images; it needs init='real', "
                         f"not {ctx.cfg['init']!r}")
    chunk = mtt.DATM_PICK_CHUNK
    predict_fn = jax.jit(lambda p, x: jnp.argmax(apply_fn(p, x), axis=-1))

    def predict(e: int, idx: np.ndarray) -> np.ndarray:
        x = jdata.apply(ctx.pre, ctx.ds.x_train[idx])
        x = np.pad(x, ((0, chunk - len(idx)),) + ((0, 0),) * (x.ndim - 1))   # one compiled shape
        return np.asarray(predict_fn(jax.tree.map(lambda a: a[e], experts_E), x))[:len(idx)]

    num_experts = jax.tree.leaves(experts_E)[0].shape[0]
    idx = mtt.datm_pick_correct(key, ctx.ds.class_indices, ctx.cfg["ipc"], predict, num_experts)
    y = np.repeat(np.arange(ctx.ds.num_classes, dtype=np.int32), ctx.cfg["ipc"])
    return jdata.apply(ctx.pre, ctx.ds.x_train[idx]), y


def init_kmeans_images(ctx: Context, key: jax.Array, apply_fn, expert) -> tuple[np.ndarray, np.ndarray]:
    """AST's representative initial set (`pix_init avg`): per class, the real images nearest
    to the `ipc` k-means centres of `expert`'s logits of all that class's training images
    (`mtt.kmeans_representatives`, key fold_in(key, class))."""
    if ctx.cfg.get("init", "real") != "real":
        raise ValueError(f"mtt.init_kmeans picks real images; it needs init='real', not {ctx.cfg['init']!r}")
    chunk = mtt.DATM_PICK_CHUNK
    logits_fn = jax.jit(lambda x: apply_fn(expert, x))
    picked = []
    for c, ix in enumerate(ctx.ds.class_indices):
        ix = np.asarray(ix)
        feats = []
        for i in range(0, len(ix), chunk):
            x = jdata.apply(ctx.pre, ctx.ds.x_train[ix[i:i + chunk]])
            n = len(x)
            x = np.pad(x, ((0, chunk - n),) + ((0, 0),) * (x.ndim - 1))  # one compiled shape
            feats.append(np.asarray(logits_fn(x))[:n])
        sel = mtt.kmeans_representatives(jax.random.fold_in(key, c), np.concatenate(feats), ctx.cfg["ipc"])
        picked.append(ix[np.asarray(sel)])
    idx = np.concatenate(picked)
    y = np.repeat(np.arange(ctx.ds.num_classes, dtype=np.int32), ctx.cfg["ipc"])
    return jdata.apply(ctx.pre, ctx.ds.x_train[idx]), y


def make_batch_fn(mcfg: mtt.MTTConfig, num_experts: int):
    """The driver's `batch_fn(stacked, key, t)`: the iteration's expert segment(s) from
    `stack_experts`' leaves (E, T, ...); W = mcfg.windows_per_step windows (leaves (W, ...))
    when W > 1 (`mtt.sample_windows`), the start epochs bounded by DATM's schedule."""

    def batch_fn(stacked, key, t):
        upper = mtt.datm_upper_bound(t, mcfg.current_max_start or mcfg.max_start,
                                     mcfg.max_start, mcfg.expansion_end)
        e, s = mtt.sample_windows(key, mcfg.windows_per_step, num_experts, mcfg.min_start, upper)
        theta_0, theta_t = jexperts.take_segment(stacked, e, s, mcfg.expert_epochs)
        if not (mcfg.ast_balance or (mcfg.ast_intermediate and mcfg.expert_epochs > 1)):
            return mtt.ExpertSegment(theta_0, theta_t)
        mid = None
        if mcfg.ast_intermediate and mcfg.expert_epochs > 1:
            take = functools.partial(jexperts.take_intermediate, stacked, expert_epochs=mcfg.expert_epochs)
            mid = take(e, s) if mcfg.windows_per_step == 1 else jax.vmap(take)(e, s)
        return mtt.ExpertSegment(theta_0, theta_t, mid, s if mcfg.ast_balance else None)

    return batch_fn


def prepare(ctx: Context) -> Prepared:
    cfg = ctx.cfg
    mcfg = dataclass_from(mtt.MTTConfig, {**cfg["mtt"], "iterations": cfg["iterations"]})
    path = build_experts(ctx)
    info = jexperts.load_buffer(path)
    stacked = jexperts.stack_experts(path, mcfg.max_start, mcfg.expert_epochs)
    num_experts = len(info.complete_experts)
    model = get_model(cfg["model"], ctx.ds.num_classes, ctx.ds.image_shape)
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    label_experts = None   # DATM: the checkpoints that pick the images and give label logits
    if mcfg.label_mode == "learned" or mcfg.init_correct_only:
        label_experts = (jexperts.stack_final(path) if mcfg.label_expert_epoch == "final"
                         else jax.tree.map(lambda a: a[:, -1], stacked))
    if mcfg.init_correct_only:
        x0, y0 = init_correct_images(ctx, jax.random.fold_in(ctx.key, 0), apply_fn, label_experts)
    elif mcfg.init_kmeans:   # AST: the first complete expert's last epoch (buffer[0][-1])
        final = jax.tree.map(lambda a: a[0], jexperts.stack_final(path, experts=info.complete_experts[:1]))
        x0, y0 = init_kmeans_images(ctx, jax.random.fold_in(ctx.key, 0), apply_fn, final)
    else:
        x0, y0 = init_images(ctx, jax.random.fold_in(ctx.key, 0))
    batch = mcfg.batch_syn or len(x0)
    if mcfg.image_chunks == "auto":
        mcfg = dataclasses.replace(mcfg, image_chunks=auto_chunks(model, batch, mtt.AUTO_MAX_CHUNKS))
    if not ctx.quiet:
        print(f"[distill] {mcfg.syn_steps} inner steps on {batch} images, student forward in "
              f"{mcfg.image_chunks} chunk(s) (mtt.image_chunks={cfg['mtt'].get('image_chunks', 'auto')!r})",
              file=sys.stderr, flush=True)
    augment = functools.partial(dsa, strategy=mcfg.dsa_strategy) if mcfg.dsa_strategy else mtt.identity_augment
    distiller = mtt.make_mtt(mcfg, apply_fn, augment)
    if mcfg.label_mode == "learned":   # DATM: logits of the experts that get the image right
        y0, _ = mtt.datm_init_labels(apply_fn, label_experts, jnp.asarray(x0), jnp.asarray(y0))
    elif mcfg.label_mode == "tesla":
        first = jax.tree.map(lambda a: a[0, -1], stacked)
        y0 = mtt.tesla_assign_labels(apply_fn, first, jnp.asarray(x0))
    state = distiller.init(jax.random.fold_in(ctx.key, 0), jnp.asarray(x0), jnp.asarray(y0))

    def export(state):
        lr = float(np.exp(np.asarray(state.syn.log_lr)))
        out = {"artefact": (state.syn.x_syn_NHWC, state.syn.y_syn, lr)}
        if state.x_ema_NHWC is not None:   # FTD: the EMA images are evaluated too
            out["artefact_ema"] = (state.x_ema_NHWC, state.syn.y_syn, lr)
        return out

    return Prepared(distiller, state, make_batch_fn(mcfg, num_experts), stacked, export)


METHODS = [Method("mtt", "trajectory", mtt.MTTConfig, run_prepared(prepare), sections=("experts",),
                  doc="trajectory matching: MTT, TESLA (grad_mode, label_mode), DATM, FTD")]
