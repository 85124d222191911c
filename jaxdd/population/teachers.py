"""Teachers for statistics matching (the "squeeze" stage): BN classifiers on real data.

`train_teachers` trains `num_teachers` networks (teacher i from fold_in(key, i); several
for G-VBSM) on the training split and stores their final variables (params + BN
`batch_stats`); `load_teacher` / `load_teachers` read them back for recover and relabel.
Augmentation: a DSA family per batch (`dsa`, default), or per-image RandomCrop(padding
`pad_crop`, black fill) + flip (`pad_crop_flip`, G-VBSM's squeeze/train.py). Models
without BatchNorm train too (G-VBSM's instance-norm ConvNet teacher); recover matches them
through conv statistics only.
`save_teacher` stores given variables (e.g. converted torchvision weights,
`jaxdd.models.convert.torchvision_to_teacher`) as a complete one-teacher directory.

On-disk layout (the population conventions of `jaxdd.population.train`, shared with the
expert buffers)::

    out_dir/
      teacher.json           manifest: model, dataset (+ fingerprint), preprocessing kind
                             and hash, config, seed, per-teacher epochs / test accuracy /
                             train time, status
      preprocess.npz         the fitted `Preprocess` (jaxdd.data.preprocess.to_dict)
      teacher_000/<E>/       Orbax CheckpointManager step E = epochs: final variables
      resume/teacher_000/    latest epoch's full training state (variables, optimiser) of
                             an unfinished teacher; deleted once it is complete

Resume: every epoch is one jitted chunk of the shared loop (`jaxdd.train.train_epochs`,
epoch e draws from fold_in(key, e)) saved before the next starts, so an interrupted run
continues bit-identically. A directory built with another model, dataset, preprocessing,
recipe or seed is refused; `num_teachers` alone may grow.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import time
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from jaxdd import data as jdata
from jaxdd import safeio
from jaxdd.data import stream
from jaxdd.data.stream import StreamedDataset
from jaxdd.augment import dsa_augment
from jaxdd.augment.crops import random_flip, random_pad_crop
from jaxdd.methods.statistics.recover import pixel_bounds
from jaxdd.models import Model, Variables, get_model
from jaxdd.population.train import (close_population, compile_member, fit_or_stored_preprocess,
                                    key_and_seed, manager, member_dir, new_manifest, on_device,
                                    open_population, read_preprocess,
                                    restore_resume, resume_dir, run_epochs, save_resume,
                                    write_manifest)
from jaxdd.run import mesh as jmesh
from jaxdd.train.loop import (TrainConfig, TrainState, make_optimizer, make_update,
                              soft_cross_entropy, train_init)
from jaxdd.tree import tree_all_finite

MANIFEST = "teacher.json"
FORMAT_VERSION = 1

__all__ = ["TeacherConfig", "StoredTeacherConfig", "TeacherError", "train_teachers",
           "save_teacher", "load_teacher", "load_teachers", "read_manifest", "is_complete"]


class TeacherError(ValueError):
    """A teacher directory that is missing, corrupt or built with another setup."""


@dataclasses.dataclass(frozen=True)
class TeacherConfig:
    """How teachers are trained; defaults: the SRe2L CIFAR-100 ResNet-18 recipe (spec 1)."""

    num_teachers: int = 1        # independent networks (teacher i uses fold_in(key, i)); G-VBSM > 1
    epochs: int = 200            # passes over the training split
    batch_size: int = 128        # images per SGD step
    lr: float = 0.1              # SGD step size at t = 0
    momentum: float = 0.9        # SGD momentum (PyTorch convention)
    weight_decay: float = 5e-4   # coupled L2, as torch SGD
    schedule: str = "cosine"     # cosine (per step) | step | constant (G-VBSM's weak teachers)
    dsa: str = "crop_flip"       # per-batch DSA family: translate-crop or flip; "" = none
    # Per-image RandomCrop(size, padding=pad_crop) with black padding + horizontal flip (the
    # torchvision transform of G-VBSM's squeeze/train.py); 0 = off. Needs dsa="".
    pad_crop: int = 0

    def __post_init__(self):
        if self.num_teachers < 1:
            raise TeacherError(f"num_teachers must be >= 1, got {self.num_teachers}")
        if self.pad_crop < 0:
            raise TeacherError(f"pad_crop must be >= 0, got {self.pad_crop}")
        if self.pad_crop and self.dsa:
            raise TeacherError(f"teacher.pad_crop={self.pad_crop} replaces the DSA augmentation; "
                               f"set teacher.dsa='' (it is {self.dsa!r})")
        self.train_config()  # validates epochs, batch size, schedule

    def train_config(self) -> TrainConfig:
        return TrainConfig(epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           momentum=self.momentum, weight_decay=self.weight_decay,
                           schedule=self.schedule, optimizer="sgd", dsa=self.dsa)


@dataclasses.dataclass(frozen=True)
class StoredTeacherConfig:
    """Manifest config of a teacher stored from given weights (nothing was trained here)."""

    num_teachers: int = 1   # one stored network
    epochs: int = 0         # the Orbax step of its variables: no epochs run by jaxdd
    source: str = ""        # where the weights came from (e.g. a .pth path)


def pad_crop_flip(pad: int, fill_C: tuple[float, ...] | None
                  ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """augment_fn(key, x_NHWC): per-image RandomCrop(padding=pad) filled with `fill_C` (a
    black pixel in model space), then a per-image horizontal flip with p = 0.5."""
    fill = None if fill_C is None else np.asarray(fill_C, np.float32)

    def augment(key: jax.Array, x_NHWC: jax.Array) -> jax.Array:
        k_crop, k_flip = jax.random.split(key)
        x_NHWC = random_pad_crop(k_crop, x_NHWC, pad, fill, per_image=True)
        return random_flip(k_flip, x_NHWC, per_image=True)
    return augment


def black_fill(pre: jdata.Preprocess) -> tuple[float, ...] | None:
    """A black pixel in model space (torchvision pads the raw image with 0, then
    normalises); None (pad with 0) for ZCA kinds, which have no per-channel box."""
    bounds = pixel_bounds(pre)
    return None if bounds is None else tuple(float(v) for v in bounds[0])


@functools.lru_cache(maxsize=8)
def _compiled(model_name: str, num_classes: int, input_shape: tuple[int, int, int],
              cfg: TeacherConfig, fill_C: tuple[float, ...] | None = None
              ) -> tuple[Model, Callable, Callable]:
    """(model, jitted one-epoch step, jitted accuracy), cached across calls. Models without
    BatchNorm train too (G-VBSM's instance-norm ConvNet-W128 teacher: conv statistics
    only); recover refuses them unless conv statistics are on."""
    model = get_model(model_name, num_classes, input_shape)
    augment = pad_crop_flip(cfg.pad_crop, fill_C) if cfg.pad_crop else dsa_augment(cfg.dsa)
    return model, *compile_member(model, cfg.train_config(), augment)


def read_manifest(out_dir: str) -> dict[str, Any]:
    """The parsed manifest of a teacher directory (clear errors when absent or corrupt)."""
    return safeio.read_versioned_json(
        os.path.join(out_dir, MANIFEST), "jaxdd.teacher", FORMAT_VERSION, TeacherError,
        f"no teacher at {out_dir} ({MANIFEST} missing); train one with "
        f"`jaxdd teacher --dataset D --model M --out {out_dir}`")


def is_complete(out_dir: str, num_teachers: int = 1) -> bool:
    """True when `out_dir` holds at least `num_teachers` finished teachers."""
    try:
        m = read_manifest(out_dir)
    except TeacherError:
        return False
    return sum(r["complete"] for r in m["teachers"][:num_teachers]) >= num_teachers


def train_teachers(out_dir: str, dataset: jdata.Dataset | StreamedDataset, model_name: str,
                   cfg: TeacherConfig, key_or_seed: jax.Array | int, *,
                   preprocess: str | jdata.Preprocess = "normalize",
                   progress_cb: Callable[[int, int], None] | None = None,
                   mesh: Mesh | None = None) -> dict[str, Any]:
    """Train (or resume, or extend) `cfg.num_teachers` teachers on the training split.

    The validation split of `dataset` is left out (it stays unseen for model selection);
    test accuracy is recorded per teacher. Returns the manifest.

    An in-memory `Dataset` trains one jitted scan per epoch on device-resident arrays (DSA
    `cfg.dsa` augmentation). A `StreamedDataset` (`jaxdd.data.stream.open_streamed`)
    trains data-parallel on `mesh` (default: every device on one `data` axis), one jitted
    step per loader batch: each global batch (random-resized-crop + flip, a function of
    (seed, epoch, step)) is split over the devices and BatchNorm's batch statistics are
    reduced over all of them (over the batch's `mask`ed images only: a skipped corrupt
    record counts neither in the loss nor in BN), so the step is the one-device step of the
    same global batch;
    epochs are whole loader passes (the remainder is dropped), and a resumed teacher reads
    exactly the batches it would have read.
    """
    key, seed = key_and_seed(key_or_seed)
    streamed = isinstance(dataset, StreamedDataset)
    os.makedirs(out_dir, exist_ok=True)
    man_path = os.path.join(out_dir, MANIFEST)
    old = read_manifest(out_dir) if os.path.exists(man_path) else None
    stored_kind = None if old is None else old["preprocess"]
    if streamed:
        x_train, y_train = None, dataset.train.labels()
        pre = (read_preprocess(out_dir, TeacherError) if stored_kind == preprocess
               else preprocess if not isinstance(preprocess, str)
               else stream.fit_streamed_preprocess(preprocess, dataset))
        held_out = 0 if dataset.val is None else len(dataset.val)
    else:
        x_train, y_train = dataset.x_train, dataset.y_train
        pre = fit_or_stored_preprocess(preprocess, stored_kind, out_dir, x_train, dataset.name,
                                       TeacherError)
        held_out = len(dataset.y_val)
    shape = tuple(int(s) for s in dataset.image_shape)
    if streamed and cfg.pad_crop:
        raise TeacherError("teacher.pad_crop is for in-memory data; a streamed dataset's loader "
                           "does its own random-resized-crop + flip (set teacher.pad_crop=0)")
    model, epoch_fn, acc_fn = _compiled(model_name, dataset.num_classes, shape, cfg,
                                        black_fill(pre) if cfg.pad_crop else None)
    m = new_manifest(
        "jaxdd.teacher", FORMAT_VERSION, "teachers", model=model_name,
        num_classes=dataset.num_classes, input_shape=shape, dataset=dataset.name,
        x_train=x_train, y_train=y_train, pre=pre, config=cfg, seed=seed,
        layout="teacher_{i:03d}/{epochs}/ = Orbax step of the final variables",
        counts={"num_val_held_out": int(held_out)})
    refuse = lambda diff: TeacherError(  # noqa: E731
        f"{out_dir} holds teachers built with a different setup (stored, requested): {diff}; "
        f"use another directory")
    if old is not None:  # directories from before the field: trained without it
        old["config"].setdefault("pad_crop", 0)
    records = open_population(out_dir, man_path, m, old, pre, members="teachers",
                              grow_key="num_teachers", requested=cfg.num_teachers, refuse=refuse)
    if streamed:
        streamed_run = _StreamedTeacher(model, cfg, dataset, pre, mesh)
        n_schedule, data = streamed_run.n_schedule, ()
        test_accuracy = streamed_run.test_accuracy
    else:
        n_schedule, data = len(x_train), on_device(pre, x_train, y_train)
        test = on_device(pre, dataset.x_test, dataset.y_test)
        test_accuracy = lambda variables: float(acc_fn(variables, *test))  # noqa: E731
    todo = records[:cfg.num_teachers]
    total = len(todo) * cfg.epochs
    done = sum(r["epochs_done"] for r in todo)
    tcfg = cfg.train_config()
    for rec in todo:
        i = rec["index"]
        if rec["complete"]:
            continue
        t0 = time.perf_counter() - rec["train_time_s"]
        state = train_init(jax.random.fold_in(key, i), model, tcfg, n_schedule)
        if streamed:
            epoch_fn = streamed_run.epoch_fn(state.key)
            state = streamed_run.place(state)
        with manager(resume_dir(out_dir, "teacher", i), keep_latest=True) as resume:
            start = resume.latest_step() or 0
            if start:
                state = restore_resume(resume, start, state)
            done += start - rec["epochs_done"]
            state, done = run_epochs(state, start, cfg.epochs, epoch_fn, data,
                                     functools.partial(save_resume, resume), rec, t0, man_path,
                                     m, (progress_cb, done, total), ndigits=2)
        if not bool(tree_all_finite(state.variables)):
            raise FloatingPointError(f"teacher {i} diverged (NaN/inf weights); lower its lr")
        with manager(member_dir(out_dir, "teacher", i)) as final:
            final.save(cfg.epochs, args=ocp.args.StandardSave(state.variables))
        rec.update(complete=True, test_accuracy=round(test_accuracy(state.variables), 4),
                   train_time_s=round(time.perf_counter() - t0, 2))
        write_manifest(man_path, m)
        shutil.rmtree(resume_dir(out_dir, "teacher", i), ignore_errors=True)
    close_population(out_dir, man_path, m, records)
    return m


class _StreamedTeacher:
    """The data-parallel training of one teacher on a `StreamedDataset` (see train_teachers)."""

    def __init__(self, model: Model, cfg: TeacherConfig, data: StreamedDataset,
                 pre: jdata.Preprocess, mesh: Mesh | None):
        self.model, self.cfg, self.data, self.pre = model, cfg, data, pre
        self.mesh = jmesh.make_mesh() if mesh is None else mesh
        axis = self.mesh.axis_names[0]
        n_dev = self.mesh.shape[axis]
        if cfg.batch_size % n_dev:
            raise TeacherError(f"teacher.batch_size {cfg.batch_size} does not split over the "
                               f"{n_dev} devices of the mesh; use a multiple of {n_dev}")
        self.batch_sharding = NamedSharding(self.mesh, P(axis))
        self.spe = len(data.train) // cfg.batch_size
        if self.spe == 0:
            raise TeacherError(f"{data.name} has {len(data.train)} training images, fewer than "
                               f"one teacher batch of {cfg.batch_size}; lower teacher.batch_size")
        self.n_schedule = self.spe * cfg.batch_size   # whole batches: the loader's epoch
        tx = make_optimizer(cfg.train_config(), cfg.epochs * self.spe)
        update = make_update(model.apply_train, soft_cross_entropy, tx)

        def step(variables, opt_state, x_NHWC, y_B, mask_B):
            target = jax.nn.one_hot(y_B, model.num_classes, dtype=x_NHWC.dtype)
            return update(variables, opt_state, x_NHWC, target, mask_B.astype(x_NHWC.dtype))

        self.step = jax.jit(step, donate_argnums=(0, 1))

    def place(self, state: TrainState) -> TrainState:
        """The training state replicated over the mesh."""
        return jmesh.put_replicated(state, self.mesh)

    def epoch_fn(self, key: jax.Array) -> Callable[[TrainState], TrainState]:
        """One loader epoch of the teacher whose loop key is `key` (its batch order and
        augmentation seed)."""
        seed = int(np.asarray(jax.random.key_data(key)).ravel()[-1])

        def run(state: TrainState) -> TrainState:
            e = int(np.asarray(state.epoch.addressable_data(0)))  # replicated: any shard
            loader = self.data.loader("train", batch_size=self.cfg.batch_size, train=True,
                                      seed=seed, start_step=e * self.spe, num_epochs=e + 1,
                                      sharding=self.batch_sharding, preprocess=self.pre)
            variables, opt_state = state.variables, state.opt_state
            for b in loader:
                variables, opt_state = self.step(variables, opt_state, b["image"], b["label"],
                                                 b["mask"])
            return state._replace(variables=variables, opt_state=opt_state,
                                  epoch=state.epoch + 1)
        return run

    def test_accuracy(self, variables: Variables) -> float:
        n_dev = self.mesh.shape[self.mesh.axis_names[0]]
        bs = -(-max(self.cfg.batch_size, 256) // n_dev) * n_dev
        loader = self.data.loader("test", batch_size=bs, sharding=self.batch_sharding,
                                  preprocess=self.pre)
        return float(stream.loader_accuracy(self.model.apply, variables, loader))


def save_teacher(out_dir: str, model_name: str, variables: Variables, *, dataset: str,
                 num_classes: int, input_shape: tuple[int, int, int], preprocess: jdata.Preprocess,
                 source: str) -> dict[str, Any]:
    """Store `variables` of registry model `model_name` as a complete one-teacher directory
    (`load_teachers` reads it); for pretrained weights, so no training set is recorded
    (num_train 0). Refuses a directory that already holds a teacher. Returns the manifest."""
    man_path = os.path.join(out_dir, MANIFEST)
    if os.path.exists(man_path):
        raise TeacherError(f"{out_dir} already holds a teacher ({MANIFEST}); use another directory")
    shape = tuple(int(s) for s in input_shape)
    model = get_model(model_name, num_classes, shape)
    want = jax.tree.map(lambda s: s.shape, jax.eval_shape(model.init, jax.random.key(0)))
    got = jax.tree.map(np.shape, variables)
    if got != want:
        raise TeacherError(f"variables do not fit model {model_name!r} with {num_classes} "
                           f"classes (their shapes differ from the model's)")
    os.makedirs(out_dir, exist_ok=True)
    none = np.zeros((0, *shape), np.uint8), np.zeros((0,), np.int32)
    m = new_manifest(
        "jaxdd.teacher", FORMAT_VERSION, "teachers", model=model_name,
        num_classes=num_classes, input_shape=shape, dataset=dataset, x_train=none[0],
        y_train=none[1], pre=preprocess, config=StoredTeacherConfig(source=source), seed=None,
        layout="teacher_000/0/ = Orbax step of the stored variables")
    records = open_population(out_dir, man_path, m, None, preprocess, members="teachers",
                              grow_key="num_teachers", requested=1, refuse=TeacherError)
    with manager(member_dir(out_dir, "teacher", 0)) as mgr:
        mgr.save(0, args=ocp.args.StandardSave(variables))
    records[0].update(complete=True)
    close_population(out_dir, man_path, m, records)
    return m


def load_teachers(out_dir: str, num: int | None = None
                  ) -> tuple[Model, list[Variables], jdata.Preprocess, dict[str, Any]]:
    """(model, [variables of the first `num` complete teachers], preprocess, manifest)."""
    m = read_manifest(out_dir)
    complete = [r["index"] for r in m["teachers"] if r["complete"]]
    num = len(complete) if num is None else num
    if len(complete) < max(num, 1):
        raise TeacherError(f"{out_dir} has {len(complete)} complete teacher(s), {max(num, 1)} "
                           f"needed; finish training with `jaxdd teacher` (it resumes)")
    model = get_model(m["model"], int(m["num_classes"]), tuple(m["input_shape"]))
    target = jax.tree.map(lambda s: np.empty(s.shape, s.dtype),
                          jax.eval_shape(model.init, jax.random.key(0)))
    out = []
    for i in complete[:num]:
        path = os.path.join(member_dir(out_dir, "teacher", i), str(m["config"]["epochs"]),
                            "default")
        try:
            with ocp.StandardCheckpointer() as ckptr:
                out.append(dict(ckptr.restore(os.path.abspath(path), target)))
        except Exception as e:  # noqa: BLE001 - Orbax/tensorstore raise many types
            raise TeacherError(f"corrupt or unreadable teacher checkpoint {path}: "
                               f"{type(e).__name__}: {str(e)[:300]}") from None
    return model, out, read_preprocess(out_dir, TeacherError), m


def load_teacher(out_dir: str, index: int = 0
                 ) -> tuple[Model, Variables, jdata.Preprocess, dict[str, Any]]:
    """(model, variables (params + batch_stats), preprocess, manifest) of one teacher."""
    model, vs, pre, m = load_teachers(out_dir, index + 1)
    return model, vs[index], pre, m
