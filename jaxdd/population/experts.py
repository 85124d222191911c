"""Expert trajectories ("buffers") for trajectory matching (MTT, TESLA, FTD, DATM).

`build_buffer` trains `num_experts` fresh networks on the full real training set and stores
each one's parameters at initialisation and after every epoch (a trajectory is `epochs + 1`
parameter pytrees); the distillation driver reads them back with `load_expert_epoch` /
`load_segment`, or all at once on the device with `stack_experts`.

On-disk layout (one (expert, epoch) is readable without touching the rest)::

    out_dir/
      buffer.json              manifest: model, dataset, preprocessing, config, seed,
                               per-expert progress / test accuracy / train time, status
      preprocess.npz           the fitted `Preprocess` (jaxdd.data.preprocess.to_dict)
      expert_000/              Orbax CheckpointManager, step = epoch, all steps kept
        0/ 1/ ... 50/          params pytree after that many epochs (0 = init)
      expert_001/ ...
      resume/expert_001/       Orbax CheckpointManager, latest step only: the full training
                               state (variables incl. BN statistics, optimiser state) of an
                               unfinished expert; deleted once the expert is complete

Resume: every epoch is one jitted chunk of the compiled loop (`jaxdd.train.train_epochs`,
epoch e draws from fold_in(key, e)), saved before the next starts. On restart with the same
manifest identity, complete experts are skipped and an unfinished one continues from its
last saved (trajectory epoch, resume state) pair, so the result is bit-identical to an
uninterrupted run. A manifest built with another config, model, dataset, preprocessing or
seed is refused. `num_experts` alone may grow (experts are independent: fold_in(key, i)).

Expert i uses key fold_in(key, i): train_init splits it into the init key and the loop key.

Groups (`experts_per_program = K > 1`): the unfinished experts are taken K at a time; a
group's states are stacked (leading axis = expert) and split over the `data` axis of a mesh
of gcd(K, devices) devices, and each epoch of the whole group is one compiled call
(`population.train.group_step`): per device its experts run unrolled (`group_mode =
"unroll"`, the one-expert program once per expert: every checkpoint bit-identical to one at
a time, on 1 or 8 devices) or vmapped (`"vmap"`: batched kernels, last-bit differences).
After each call every expert is brought back to the host and saved exactly as a lone expert
is, so layout, manifest, per-epoch resume (experts of a killed group may resume from
different epochs; they share the calls) and the reading functions are unchanged.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import shutil
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from jax.sharding import NamedSharding, PartitionSpec as P

from jaxdd import data as jdata
from jaxdd import safeio
from jaxdd.augment import DSA_DEFAULT, dsa_augment
from jaxdd.models import Model, get_model
from jaxdd.population.train import (GROUP_MODES, PREPROCESS_FILE, close_population,
                                    compile_member, group_step, stack_members,
                                    fit_or_stored_preprocess, key_and_seed, manager, member_dir,
                                    new_manifest, on_device, open_population,
                                    read_preprocess, restore_resume, resume_dir,
                                    run_group_epochs, save_resume, write_manifest)
from jaxdd.run.mesh import make_mesh, put, replicated
from jaxdd.train.loop import TrainConfig, TrainState, train_epochs, train_init

PyTree = Any
MANIFEST = "buffer.json"
FORMAT_VERSION = 1
_GSAM_EPS = 1e-12  # the GSAM reference's perturb_eps (norm denominators)


_AST_FIELDS = ("loss_scales", "grad_penalty")


class BufferError(RuntimeError):
    """A buffer on disk is missing, corrupt, incomplete or built with another config."""


# ---------------------------------------------------------------------------------------
# Config


@dataclasses.dataclass(frozen=True)
class ExpertConfig:
    """How experts are trained; defaults are MTT's `buffer.py` recipe (spec section 1)."""

    num_experts: int = 100      # independent networks (expert i uses fold_in(key, i))
    epochs: int = 50            # epochs per expert; a trajectory holds epochs + 1 pytrees
    batch_size: int = 256       # real images per SGD step
    lr: float = 0.01            # SGD step size (MTT lr_teacher)
    momentum: float = 0.0       # SGD momentum (MTT: none; AST: 0.9)
    weight_decay: float = 0.0   # coupled L2 as torch SGD (MTT: none)
    schedule: str = "constant"  # lr schedule: constant (MTT) | step | cosine | ast (x0.6 after epoch E//2+1)
    dsa: str = DSA_DEFAULT  # DSA on every batch; "" = none
    optimizer: str = "sgd"      # sgd (MTT/TESLA/DATM-plain) | gsam (FTD/DATM experts)
    gsam_rho: float = 0.01      # GSAM perturbation radius (constant, as FTD's buffers)
    gsam_alpha: float = 0.3     # GSAM weight of the removed orthogonal component (0.3 / 1.0)
    gsam_adaptive: bool = True  # adaptive (ASAM-style) perturbation e ~ g * w^2
    # Experts trained together, one compiled program per epoch for the group (their states
    # stacked, split over gcd(group, devices) devices); 1 = one at a time. A buffer may be
    # resumed or extended with other values of these two fields.
    experts_per_program: int = 1
    # How a device runs its experts of a group: "unroll" = the one-expert program once per
    # expert (bit-identical to one at a time), "vmap" = one batched program (vmapped over
    # the experts' states; batched kernels may differ in the last bit).
    group_mode: str = "unroll"
    # AST experts (buffer.py --loss_decay --gp True; with momentum 0.9, weight_decay 1e-3,
    # schedule "ast"): loss_scales[e] multiplies epoch e's loss (AST: 0.5, 0.55, ..., 0.95
    # for epochs 0-9; () = off); grad_penalty = lambda of the input-gradient penalty
    # (AST: 2; 0 = off), computed on the un-augmented batch (`train.loop.input_gradient_penalty`)
    loss_scales: tuple[float, ...] = ()
    grad_penalty: float = 0.0

    def __post_init__(self):
        if self.num_experts < 1:
            raise ValueError(f"num_experts must be >= 1, got {self.num_experts}")
        if self.experts_per_program < 1:
            raise ValueError(f"experts_per_program must be >= 1, got {self.experts_per_program}")
        if self.group_mode not in GROUP_MODES:
            raise ValueError(f"unknown group_mode {self.group_mode!r}; use one of {GROUP_MODES}")
        if self.optimizer not in ("sgd", "gsam"):
            raise ValueError(f"unknown expert optimizer {self.optimizer!r}; use sgd or gsam")
        if self.gsam_rho < 0:
            raise ValueError(f"gsam_rho must be >= 0, got {self.gsam_rho}")
        object.__setattr__(self, "loss_scales", tuple(float(v) for v in self.loss_scales))
        if any(not v > 0 for v in self.loss_scales):
            raise ValueError(f"loss_scales must all be > 0, got {self.loss_scales}")
        if self.grad_penalty < 0:
            raise ValueError(f"grad_penalty must be >= 0, got {self.grad_penalty}")
        if self.optimizer == "gsam" and (self.loss_scales or self.grad_penalty):
            raise ValueError("AST's loss_scales / grad_penalty run with optimizer='sgd', not gsam")
        self.train_config()  # validates epochs, batch_size, schedule

    def train_config(self) -> TrainConfig:
        """The shared loop's config (GSAM reuses its optimiser: SGD on the GSAM direction)."""
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay,
                           schedule=self.schedule, optimizer="sgd", dsa=self.dsa)


# ---------------------------------------------------------------------------------------
# GSAM


def gsam_direction(grad_fn: Callable[[PyTree], PyTree], params: PyTree, grads: PyTree, *,
                   rho: float | jax.Array, alpha: float | jax.Array, adaptive: bool = True,
                   eps: float = _GSAM_EPS) -> PyTree:
    """GSAM update direction at w (Zhuang et al. 2022; the FTD experts' optimiser).

    With g = grads = grad L(w):
      e      = rho * g * w^2 / (||w * g|| + eps)     (adaptive; else rho * g / (||g|| + eps))
      g_p    = grad_fn(w + e)                        (gradient at the perturbed point)
      cos    = <g, g_p> / (||g|| ||g_p|| + eps)
      g_vert = g - cos ||g|| g_p / (||g_p|| + eps)   (part of g orthogonal to g_p)
      d      = g_p - alpha * g_vert
    Descending along -g_vert lowers the surrogate gap L(w + e) - L(w) without changing
    the perturbed loss to first order. The base optimiser then steps from w (not w + e)
    with d. Norms are global over the whole pytree, as in the reference.
    """
    if adaptive:
        norm = optax.tree.norm(jax.tree.map(lambda w, g: w * g, params, grads))
        e = jax.tree.map(lambda w, g: rho * g * w * w / (norm + eps), params, grads)
    else:
        norm = optax.tree.norm(grads)
        e = jax.tree.map(lambda g: rho * g / (norm + eps), grads)
    g_p = grad_fn(jax.tree.map(jnp.add, params, e))
    norm_g, norm_gp = optax.tree.norm(grads), optax.tree.norm(g_p)
    cos = optax.tree.vdot(grads, g_p) / (norm_g * norm_gp + eps)
    g_vert = jax.tree.map(lambda g, gp: g - cos * norm_g * gp / (norm_gp + eps), grads, g_p)
    return jax.tree.map(lambda gp, gv: gp - alpha * gv, g_p, g_vert)


def gsam_train_epochs(state: TrainState, model: Model, cfg: TrainConfig, x_NHWC: jax.Array,
                      y_target: jax.Array, num_epochs: int, augment_fn=None, *,
                      rho: float, alpha: float, adaptive: bool = True) -> TrainState:
    """`train_epochs` with every SGD step taken along the GSAM direction (two passes/step).

    Same batches, augmentations, masking and optimiser as the shared loop, so chunked ==
    one-shot and rho = 0 reproduces plain SGD up to float rounding.
    """
    direction = functools.partial(_gsam_hook, rho=rho, alpha=alpha, adaptive=adaptive)
    return train_epochs(state, model, cfg, x_NHWC, y_target, num_epochs, augment_fn,
                        direction_fn=direction)


def _gsam_hook(grad_fn, params, grads, *, rho, alpha, adaptive):
    return gsam_direction(grad_fn, params, grads, rho=rho, alpha=alpha, adaptive=adaptive)


@functools.lru_cache(maxsize=16)
def _compiled(model_name: str, num_classes: int, input_shape: tuple[int, int, int],
              cfg: ExpertConfig) -> tuple[Model, Callable, Callable]:
    """(model, jitted one-epoch step, jitted accuracy), cached so reruns reuse compiles."""
    model = get_model(model_name, num_classes, input_shape)
    if cfg.optimizer == "gsam":
        run = functools.partial(gsam_train_epochs, rho=cfg.gsam_rho, alpha=cfg.gsam_alpha,
                                adaptive=cfg.gsam_adaptive)
    elif cfg.loss_scales or cfg.grad_penalty:   # AST experts
        run = functools.partial(train_epochs, epoch_loss_scale=tuple(cfg.loss_scales),
                                grad_penalty=cfg.grad_penalty)
    else:
        run = train_epochs
    return model, *compile_member(model, cfg.train_config(), dsa_augment(cfg.dsa), run)


# ---------------------------------------------------------------------------------------
# Manifest


class ExpertRecord(NamedTuple):
    index: int
    epochs_done: int                # trajectory epochs on disk beyond init
    complete: bool
    test_accuracy: float | None     # top-1 in [0, 1] after the last epoch (None: no test set)
    train_time_s: float             # wall time of training + saving, summed over resumes


@dataclasses.dataclass(frozen=True)
class BufferInfo:
    """A buffer's manifest, parsed."""

    out_dir: str
    model_name: str
    num_classes: int
    input_shape: tuple[int, int, int]  # (H, W, C)
    dataset: str
    preprocess_kind: str
    config: ExpertConfig
    seed: Any                          # int, or the key's data as a nested list
    experts: tuple[ExpertRecord, ...]
    status: str                        # "complete" | "incomplete"
    param_count: int
    jaxdd_version: str

    @property
    def num_experts(self) -> int:
        return len(self.experts)

    @property
    def epochs(self) -> int:
        return self.config.epochs

    @property
    def complete_experts(self) -> list[int]:
        return [r.index for r in self.experts if r.complete]

    def model(self) -> Model:
        return get_model(self.model_name, self.num_classes, self.input_shape)

    def preprocess(self) -> jdata.Preprocess:
        """The fitted preprocessing the experts were trained in (apply it to new data)."""
        return read_preprocess(self.out_dir, BufferError)


def _read_manifest(out_dir: str) -> dict[str, Any]:
    return safeio.read_versioned_json(
        os.path.join(out_dir, MANIFEST), "jaxdd.expert_buffer", FORMAT_VERSION, BufferError,
        f"no expert buffer at {out_dir} ({MANIFEST} missing)")


def _info(out_dir: str, m: Mapping[str, Any]) -> BufferInfo:
    return BufferInfo(
        out_dir=out_dir, model_name=m["model"], num_classes=int(m["num_classes"]),
        input_shape=tuple(m["input_shape"]), dataset=m["dataset"],
        preprocess_kind=m["preprocess"], config=ExpertConfig(**m["config"]), seed=m["seed"],
        experts=tuple(ExpertRecord(**r) for r in m["experts"]), status=m["status"],
        param_count=int(m["param_count"]), jaxdd_version=m["jaxdd_version"])


def load_buffer(out_dir: str) -> BufferInfo:
    """Read a buffer's manifest (complete or not)."""
    return _info(out_dir, _read_manifest(out_dir))


def imported_from(out_dir: str) -> dict[str, Any] | None:
    """The `imported` record of a buffer made elsewhere (`jaxdd import`), else None."""
    return _read_manifest(out_dir).get("imported")


def _use_imported(out_dir: str, m: Mapping[str, Any], asked: Mapping[str, Any]) -> BufferInfo:
    """An imported buffer is used as it is (never retrained or extended) when it was
    imported for the same model, dataset and fitted preprocessing as asked."""
    keys = ("model", "num_classes", "input_shape", "dataset", "preprocess", "preprocess_sha256")
    diff = {k: (m.get(k), asked.get(k)) for k in keys if m.get(k) != asked.get(k)}
    if diff:
        raise BufferError(
            f"{out_dir} holds experts imported from {m['imported'].get('from')} for another "
            f"setup (stored, requested): {diff}; import them again with this config's "
            f"--dataset, --model, --preprocess and --seed, or use another buffer_dir")
    return _info(out_dir, m)


# ---------------------------------------------------------------------------------------
# Building


def _as_arrays(source: Any) -> tuple[str, np.ndarray, np.ndarray, np.ndarray | None,
                                     np.ndarray | None, int | None]:
    """(name, x_train, y_train, x_test, y_test, num_classes) from a name/Dataset/arrays."""
    if isinstance(source, str):
        # Experts train on the *full* training split (MTT), so no validation hold-out.
        source = jdata.load_dataset(source, val_per_class=0)
    if isinstance(source, jdata.Dataset):
        return (source.name, source.x_train, source.y_train, source.x_test, source.y_test,
                source.num_classes)
    if isinstance(source, Mapping):
        get = source.get
        name = str(get("name", "arrays"))
        return (name, np.asarray(source["x_train"]), np.asarray(source["y_train"]),
                None if get("x_test") is None else np.asarray(get("x_test")),
                None if get("y_test") is None else np.asarray(get("y_test")),
                get("num_classes"))
    if isinstance(source, (tuple, list)) and len(source) in (2, 4):
        xs = [np.asarray(a) for a in source]
        return ("arrays", xs[0], xs[1], *(xs[2:] if len(xs) == 4 else (None, None)), None)
    raise TypeError("dataset must be a name, a jaxdd.data.Dataset, (x_train, y_train[, x_test, "
                    "y_test]) or a mapping with x_train, y_train[, x_test, y_test, name, "
                    f"num_classes]; got {type(source).__name__}")


def build_buffer(out_dir: str, dataset: Any, model_name: str, cfg: ExpertConfig,
                 key_or_seed: jax.Array | int, *, preprocess: str | jdata.Preprocess = "none",
                 progress_cb: Callable[[int, int], None] | None = None) -> BufferInfo:
    """Train `cfg.num_experts` experts and store their trajectories under `out_dir`.

    `dataset`: a name for `load_dataset` (full training split), a `Dataset`, or arrays
    (x_train, y_train[, x_test, y_test]) / a mapping (uint8 or float in [0, 1]).
    `preprocess`: a kind to fit on the training set, or a fitted `Preprocess`.
    Resumes an interrupted run in `out_dir` (bit-identical); refuses a different config.
    A larger `num_experts` extends a stored buffer; a smaller one trains only the first
    `num_experts` (the manifest keeps the larger count, and its status says whether all
    are complete). `progress_cb(done_epochs, total_epochs)` is called after every saved
    epoch (counts over the requested experts, including epochs already on disk).
    Trajectories hold `params` only (BN running statistics are not part of them).
    """
    name, x_train, y_train, x_test, y_test, num_classes = _as_arrays(dataset)
    if x_train.ndim == 3:  # (N, H, W) greyscale
        x_train = x_train[..., None]
        x_test = None if x_test is None else x_test[..., None]
    num_classes = int(num_classes or int(np.max(y_train)) + 1)
    key, seed = key_and_seed(key_or_seed)
    os.makedirs(out_dir, exist_ok=True)

    man_path = os.path.join(out_dir, MANIFEST)
    old = _read_manifest(out_dir) if os.path.exists(man_path) else None
    stored = (old["preprocess"] if old is not None
              and os.path.exists(os.path.join(out_dir, PREPROCESS_FILE)) else None)
    pre = fit_or_stored_preprocess(preprocess, stored, out_dir, x_train, name, BufferError)
    input_shape = tuple(int(s) for s in x_train.shape[1:])
    model, epoch_fn, acc_fn = _compiled(model_name, num_classes, input_shape, cfg)
    param_count = sum(int(np.prod(s.shape)) for s in
                      jax.tree.leaves(jax.eval_shape(model.init, jax.random.key(0))["params"]))

    m = new_manifest(
        "jaxdd.expert_buffer", FORMAT_VERSION, "experts", model=model_name,
        num_classes=num_classes, input_shape=input_shape, dataset=name, x_train=x_train,
        y_train=y_train, pre=pre, config=cfg, seed=seed,
        layout="expert_{i:03d}/{epoch}/ = Orbax CheckpointManager steps of params",
        versions={"orbax_version": ocp.__version__}, model_info={"param_count": param_count},
        counts={"num_test": 0 if x_test is None else int(len(x_test))})
    for k in _AST_FIELDS:   # at their defaults they are left out, so that buffers stored
        if m["config"].get(k) in ((), [], 0.0):   # before these fields existed still match
            m["config"].pop(k, None)
    if old is not None and old.get("imported"):
        return _use_imported(out_dir, old, m)
    records = open_population(
        out_dir, man_path, m, old, pre, members="experts", grow_key="num_experts",
        requested=cfg.num_experts, free_keys=("experts_per_program", "group_mode"),
        refuse=lambda diff: BufferError(
            f"{man_path} was built with a different setup; refusing to mix trajectories. "
            f"Differences (stored, requested): {diff}. Use another out_dir or delete it."))

    data = on_device(pre, x_train, y_train)
    test = None if x_test is None else on_device(pre, x_test, y_test)
    todo = records[:cfg.num_experts]  # stored experts beyond the request are kept as they are
    total = len(todo) * cfg.epochs
    done = sum(r["epochs_done"] for r in todo)
    for rec in todo:
        if rec["complete"]:
            shutil.rmtree(resume_dir(out_dir, "expert", rec["index"]), ignore_errors=True)
    pending = [r for r in todo if not r["complete"]]
    size = cfg.experts_per_program
    for group in (pending[g:g + size] for g in range(0, len(pending), size)):
        t0s = [time.perf_counter() - rec["train_time_s"] for rec in group]
        with contextlib.ExitStack() as stack:
            trajs, states, starts = [], [], []
            for rec in group:
                i = rec["index"]
                state0 = train_init(jax.random.fold_in(key, i), model, cfg.train_config(),
                                    len(x_train))
                traj = stack.enter_context(manager(member_dir(out_dir, "expert", i)))
                resume = stack.enter_context(manager(resume_dir(out_dir, "expert", i),
                                                     keep_latest=True))
                state, start = _restore_progress(state0, traj, resume, out_dir, i)
                done += start - rec["epochs_done"]
                rec["epochs_done"] = start
                if start == 0:
                    traj.save(0, args=ocp.args.StandardSave(state.variables["params"]))
                trajs.append((traj, resume))
                states.append(state)
                starts.append(start)

            def save(j, epoch, state):
                trajs[j][0].save(epoch, args=ocp.args.StandardSave(state.variables["params"]))
                save_resume(trajs[j][1], epoch, state)

            step, group_data, fns = ((epoch_fn, data, {}) if size == 1 else
                                     _group_layout(states, data, epoch_fn, cfg.group_mode))
            states, done = run_group_epochs(states, starts, cfg.epochs, step, group_data, save,
                                            group, t0s, man_path, m,
                                            (progress_cb, done, total), **fns)
        for rec, state, t0 in zip(group, states, t0s):
            if test is not None:
                rec["test_accuracy"] = float(acc_fn(state.variables, *test))
            rec.update(epochs_done=cfg.epochs, complete=True,
                       train_time_s=time.perf_counter() - t0)
            write_manifest(man_path, m)
            shutil.rmtree(resume_dir(out_dir, "expert", rec["index"]), ignore_errors=True)
    close_population(out_dir, man_path, m, records)
    return _info(out_dir, m)


def _restore_progress(state0: TrainState, traj: ocp.CheckpointManager,
                      resume: ocp.CheckpointManager, out_dir: str, i: int
                      ) -> tuple[TrainState, int]:
    """(state, epochs done) of expert i: from the newest resume state r whose trajectory
    0..r is on disk; otherwise from scratch (init is a pure function of the key)."""
    steps = sorted(traj.all_steps())
    r = resume.latest_step()
    if r is not None and steps[:r + 1] == list(range(r + 1)):
        try:
            state = restore_resume(resume, r, state0)
        except Exception as e:  # noqa: BLE001 - any unreadable state means a restart
            raise BufferError(f"cannot read the resume state of expert {i} at "
                              f"{resume_dir(out_dir, 'expert', i)}/{r}: {e}; delete that folder to "
                              f"retrain the expert from scratch") from e
        for s in steps[r + 1:]:
            traj.delete(s)
        return state, r
    for s in steps:
        traj.delete(s)
    if r is not None:
        resume.delete(r)
    return state0, 0


def _group_layout(states: Sequence[TrainState], data: tuple[jax.Array, jax.Array],
                  epoch_fn: Callable, mode: str
                  ) -> tuple[Callable, tuple[jax.Array, jax.Array], dict[str, Callable]]:
    """How a group of K experts trains: their stacked states split along the mesh's `data`
    axis over gcd(K, devices) devices (K / that many experts per device; one device when
    they share no factor), the training set replicated there. Returns (the group's compiled
    epoch, the placed data, `run_group_epochs`' stack/unstack; unstack brings each expert
    back to the default device through the host, so its checkpoints are written exactly as
    a lone expert's)."""
    mesh = make_mesh(devices=jax.devices()[:math.gcd(len(states), jax.device_count())])
    split = NamedSharding(mesh, P("data"))

    def stack(members: list[TrainState]) -> TrainState:
        state_K = stack_members(members)
        return put(state_K, jax.tree.map(lambda _: split, state_K))

    def unstack(state_K: TrainState) -> list[TrainState]:
        v, o = jax.device_get((state_K.variables, state_K.opt_state))
        take = lambda tree, j: jax.tree.map(lambda a: jnp.asarray(a[j]), tree)  # noqa: E731
        return [s._replace(variables=take(v, j), opt_state=take(o, j))
                for j, s in enumerate(states)]

    return (_group_step(epoch_fn, mesh, mode), put(data, (replicated(mesh),) * 2),
            {"stack": stack, "unstack": unstack})


_group_step = functools.lru_cache(maxsize=16)(group_step)  # one compile per group shape


# ---------------------------------------------------------------------------------------
# Reading


@functools.lru_cache(maxsize=16)
def _abstract_params(model_name: str, num_classes: int, input_shape: tuple[int, ...]) -> PyTree:
    model = get_model(model_name, num_classes, input_shape)
    return jax.eval_shape(model.init, jax.random.key(0))["params"]


def _check_request(info: BufferInfo, expert: int, epoch: int) -> None:
    if not 0 <= expert < info.num_experts:
        raise BufferError(f"expert {expert} out of range: buffer {info.out_dir} has "
                          f"{info.num_experts} experts")
    stored = info.experts[expert].epochs_done
    if not 0 <= epoch <= stored:
        raise BufferError(f"epoch {epoch} of expert {expert} is beyond the stored epochs "
                          f"[0, {stored}] of buffer {info.out_dir}")


def _read_params(info: BufferInfo, expert: int, epoch: int) -> dict[str, np.ndarray]:
    """One (expert, epoch) params pytree as host numpy arrays."""
    path = os.path.join(member_dir(info.out_dir, "expert", expert), str(epoch))
    if not os.path.isdir(path):
        raise BufferError(f"missing checkpoint {path} (expert {expert}, epoch {epoch})")
    # numpy targets make Orbax restore to host memory (no per-leaf device transfers).
    target = jax.tree.map(lambda s: np.empty(s.shape, s.dtype), _abstract_params(
        info.model_name, info.num_classes, info.input_shape))
    try:
        with ocp.StandardCheckpointer() as ckptr:
            return ckptr.restore(os.path.abspath(os.path.join(path, "default")), target)
    except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many types
        raise BufferError(f"corrupt or unreadable checkpoint {path} (expert {expert}, "
                          f"epoch {epoch}): {type(e).__name__}: {str(e)[:400]}") from e


def load_expert_epoch(out_dir: str, expert: int, epoch: int) -> PyTree:
    """Params of one expert after `epoch` epochs (0 = init), read alone (numpy leaves)."""
    info = load_buffer(out_dir)
    _check_request(info, expert, epoch)
    return _read_params(info, expert, epoch)


def load_segment(out_dir: str, expert: int, start: int, expert_epochs: int
                 ) -> tuple[PyTree, PyTree]:
    """(theta_start, theta_target) = (traj[start], traj[start + expert_epochs])."""
    info = load_buffer(out_dir)
    _check_request(info, expert, start)
    _check_request(info, expert, start + expert_epochs)
    return _read_params(info, expert, start), _read_params(info, expert, start + expert_epochs)


def _stack(info: BufferInfo, experts: Sequence[int] | None, epochs: Sequence[int]) -> PyTree:
    """Host numpy pytree with leaves (E, len(epochs), ...): `epochs` of each expert."""
    experts = list(info.complete_experts if experts is None else experts)
    if not experts:
        raise BufferError(f"buffer {info.out_dir} has no complete experts to stack")
    for e in experts:
        _check_request(info, e, max(epochs))
    target = _abstract_params(info.model_name, info.num_classes, info.input_shape)
    out = jax.tree.map(lambda s: np.empty((len(experts), len(epochs), *s.shape), s.dtype), target)
    for a, e in enumerate(experts):
        for b, epoch in enumerate(epochs):
            params = _read_params(info, e, epoch)
            jax.tree.map(lambda dst, src: dst.__setitem__((a, b), src), out, params)
    return out


def stack_experts(out_dir: str, max_start_epoch: int, expert_epochs: int, *,
                  experts: Sequence[int] | None = None,
                  device: jax.Device | jax.sharding.Sharding | None = None) -> PyTree:
    """All epochs [0, max_start_epoch + expert_epochs] of the experts, stacked on device.

    Returns the params pytree with leaves (E, T, ...), T = max_start_epoch + expert_epochs + 1,
    so a jitted step picks (expert, start) with dynamic indexing (`take_segment`).
    Memory: E * T * param_count * 4 B (float32), e.g. ConvNet-D3/CIFAR-10 (320,010 params),
    100 experts, T = 23: 2.9 GB; pass `experts` to load a subset. Only complete experts by
    default.
    """
    t = max_start_epoch + expert_epochs + 1
    return jax.device_put(_stack(load_buffer(out_dir), experts, range(t)), device)


def stack_final(out_dir: str, *, experts: Sequence[int] | None = None) -> PyTree:
    """Each expert's last checkpoint (epoch `epochs`), stacked: host leaves (E, ...), in
    `complete_experts` order by default (DATM's label experts, `Label_Model_Timestamp = -1`)."""
    info = load_buffer(out_dir)
    return jax.tree.map(lambda a: a[:, 0], _stack(info, experts, [info.epochs]))


def take_segment(stacked_ExT: PyTree, expert: jax.Array | int, start: jax.Array | int,
                 expert_epochs: int) -> tuple[PyTree, PyTree]:
    """(theta_start, theta_target) from `stack_experts`' output; jittable (traced indices)."""
    theta_0 = jax.tree.map(lambda a: a[expert, start], stacked_ExT)
    theta_t = jax.tree.map(lambda a: a[expert, start + expert_epochs], stacked_ExT)
    return theta_0, theta_t


def take_intermediate(stacked_ExT: PyTree, expert: jax.Array | int, start: jax.Array | int,
                      expert_epochs: int) -> PyTree:
    """Epochs start+1 .. start+expert_epochs-1 of one expert, leaves (expert_epochs-1, ...)
    (AST's intermediate targets); jittable (traced indices)."""
    def one(a):
        return jax.lax.dynamic_slice_in_dim(a[expert], start + 1, expert_epochs - 1, axis=0)
    return jax.tree.map(one, stacked_ExT)


__all__ = ["ExpertConfig", "BufferInfo", "ExpertRecord", "BufferError", "build_buffer",
           "load_buffer", "imported_from", "load_expert_epoch", "load_segment", "stack_experts", "stack_final",
           "take_segment", "take_intermediate", "gsam_direction", "gsam_train_epochs"]
