"""Train a population of networks resumably: what expert buffers and BN teachers share.

A population directory holds a JSON manifest (identity of the setup, one record per member:
epochs done, completeness, test accuracy, train time, and a status), the fitted
preprocessing (`preprocess.npz`), one Orbax directory per member and, while a member is
unfinished, its latest full training state under `resume/<member>/`. Every epoch is one
jitted chunk of the shared loop (`jaxdd.train.train_epochs`, epoch e draws from
fold_in(key, e)) saved before the next starts, so an interrupted run continues
bit-identically. A manifest built with another setup is refused; the population size
alone (`grow_key`) may grow. Member i uses key fold_in(key, i). Several members can train
as one compiled program per epoch (`group_step`, `run_group_epochs`: stacked states split
over the mesh), saved member by member as above.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.sharding import Mesh, PartitionSpec as P

import jaxdd
from jaxdd import data as jdata
from jaxdd import safeio
from jaxdd.models import Model
from jaxdd.train.loop import AugmentFn, TrainConfig, TrainState, accuracy, train_epochs

PREPROCESS_FILE = "preprocess.npz"
_IDENTITY_KEYS = ("model", "num_classes", "input_shape", "dataset", "dataset_fingerprint",
                  "preprocess", "preprocess_sha256", "seed")

__all__ = ["PREPROCESS_FILE", "write_manifest", "new_manifest", "identity",
           "setup_diff", "dataset_fingerprint", "preprocess_sha", "key_and_seed", "manager",
           "member_dir", "resume_dir", "read_preprocess", "fit_or_stored_preprocess",
           "compile_member", "GROUP_MODES", "group_step", "stack_members", "open_population",
           "on_device", "restore_resume", "save_resume", "run_epochs", "run_group_epochs",
           "close_population"]


# ---------------------------------------------------------------------------------------
# Manifest


def write_manifest(path: str, manifest: dict[str, Any]) -> None:
    """A population manifest, atomically (indent 1: the on-disk format of existing dirs)."""
    safeio.write_json(path, manifest, indent=1)


def new_manifest(fmt: str, version: int, members: str, *, model: str, num_classes: int,
                 input_shape: Sequence[int], dataset: str, x_train: np.ndarray | None,
                 y_train: np.ndarray, pre: jdata.Preprocess, config: Any, seed: Any,
                 layout: str, versions: Mapping[str, str] | None = None,
                 model_info: Mapping[str, Any] | None = None,
                 counts: Mapping[str, int] | None = None) -> dict[str, Any]:
    """A fresh population manifest (status incomplete, no member records yet); `versions`,
    `model_info` and `counts` add fields after the library versions, the model and the
    training-set size. `x_train` None: a streamed training set, identified by its labels."""
    return {
        "format": fmt, "format_version": version,
        "jaxdd_version": jaxdd.__version__, "jax_version": jax.__version__, **(versions or {}),
        "model": model, "num_classes": num_classes, "input_shape": list(input_shape),
        **(model_info or {}),
        "dataset": dataset, "dataset_fingerprint": dataset_fingerprint(x_train, y_train),
        "num_train": int(len(y_train)), **(counts or {}),
        "preprocess": pre.kind, "preprocess_sha256": preprocess_sha(pre),
        # as it reads back from buffer.json (tuples become lists), so that a resumed
        # request compares equal to what was stored
        "config": json.loads(json.dumps(dataclasses.asdict(config))), "seed": seed,
        "layout": layout,
        "status": "incomplete", members: [],
    }


def identity(m: Mapping[str, Any], grow_key: str, free_keys: Sequence[str] = ()
             ) -> dict[str, Any]:
    """Fields that must match to resume/extend a population (`grow_key` may grow; config
    fields in `free_keys` change how, not what, is trained, so they may differ)."""
    cfg = {k: v for k, v in m["config"].items() if k != grow_key and k not in free_keys}
    return {**{k: m[k] for k in _IDENTITY_KEYS}, "config": cfg}


def setup_diff(stored: Mapping[str, Any], asked: Mapping[str, Any],
               grow_key: str, free_keys: Sequence[str] = ()) -> dict[str, tuple]:
    """Fields (and config fields) whose stored and requested values differ."""
    a, b = identity(stored, grow_key, free_keys), identity(asked, grow_key, free_keys)
    diff = {k: (v, b.get(k)) for k, v in a.items() if k != "config" and b.get(k) != v}
    diff.update({f"config.{k}": (v, b["config"].get(k))
                 for k, v in a["config"].items() if b["config"].get(k) != v})
    return diff


def dataset_fingerprint(x: np.ndarray | None, y: np.ndarray) -> str:
    """Cheap identity of a training set: shapes, all labels, <= 1024 strided images (a
    streamed set, x None: its labels in record order)."""
    h = hashlib.sha256()
    if x is None:
        h.update(b"streamed")
        h.update(np.ascontiguousarray(y).tobytes())
        return h.hexdigest()[:16]
    h.update(repr((x.shape, str(x.dtype), y.shape)).encode())
    h.update(np.ascontiguousarray(y).tobytes())
    stride = max(1, len(x) // 1024)
    h.update(np.ascontiguousarray(x[::stride]).tobytes())
    return h.hexdigest()[:16]


def preprocess_sha(p: jdata.Preprocess) -> str:
    h = hashlib.sha256()
    for k, v in sorted(jdata.to_dict(p).items()):
        h.update(k.encode())
        h.update(np.ascontiguousarray(np.asarray(v)).tobytes() if isinstance(v, np.ndarray)
                 else repr(v).encode())
    return h.hexdigest()[:16]


def key_and_seed(key_or_seed: jax.Array | int) -> tuple[jax.Array, Any]:
    """(key, what the manifest records: the int seed, or the key's data as a nested list)."""
    if isinstance(key_or_seed, (int, np.integer)):
        return jax.random.key(int(key_or_seed)), int(key_or_seed)
    key = key_or_seed
    raw = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    return key, np.asarray(raw).tolist()


# ---------------------------------------------------------------------------------------
# Directories and checkpoints


def manager(directory: str, *, keep_latest: bool = False, read_only: bool = False
            ) -> ocp.CheckpointManager:
    # Synchronous saves: the step is on disk (atomically renamed) before the next epoch runs,
    # which is what makes the resume bookkeeping simple; a save is ms against an epoch's s.
    options = ocp.CheckpointManagerOptions(
        max_to_keep=1 if keep_latest else None, create=not read_only, read_only=read_only,
        enable_async_checkpointing=False, cleanup_tmp_directories=not read_only)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def member_dir(out_dir: str, prefix: str, i: int) -> str:
    return os.path.join(out_dir, f"{prefix}_{i:03d}")


def resume_dir(out_dir: str, prefix: str, i: int) -> str:
    return os.path.join(out_dir, "resume", f"{prefix}_{i:03d}")


def read_preprocess(out_dir: str, error: type[Exception]) -> jdata.Preprocess:
    """The fitted preprocessing stored with the population."""
    path = os.path.join(out_dir, PREPROCESS_FILE)
    try:
        with np.load(path, allow_pickle=False) as z:
            return jdata.from_dict(dict(z))
    except (OSError, ValueError, KeyError) as e:
        raise error(f"cannot read preprocessing {path}: {e}") from e


def on_device(pre: jdata.Preprocess, x: np.ndarray, y: np.ndarray
              ) -> tuple[jax.Array, jax.Array]:
    """(preprocessed images, int32 labels) as device arrays."""
    return jnp.asarray(jdata.apply(pre, x)), jnp.asarray(y, jnp.int32)


def restore_resume(resume: ocp.CheckpointManager, step: int, state0: TrainState) -> TrainState:
    """state0 with the variables and optimiser state saved at `step` (epochs done)."""
    saved = resume.restore(step, args=ocp.args.StandardRestore(
        {"variables": state0.variables, "opt_state": state0.opt_state}))
    return state0._replace(variables=saved["variables"], opt_state=saved["opt_state"],
                           epoch=jnp.asarray(step, jnp.int32))


# ---------------------------------------------------------------------------------------
# Training


def compile_member(model: Model, tcfg: TrainConfig, augment: AugmentFn | None,
                   run: Callable[..., TrainState] = train_epochs) -> tuple[Callable, Callable]:
    """(jitted one-epoch step, jitted accuracy) of one member; `run` has train_epochs'
    signature (e.g. the GSAM variant)."""
    epoch_fn = jax.jit(lambda state, x, y: run(state, model, tcfg, x, y, 1, augment))
    acc_fn = jax.jit(lambda variables, x, y: accuracy(model, variables, x, y))
    return epoch_fn, acc_fn


GROUP_MODES = ("unroll", "vmap")


def group_step(epoch_fn: Callable, mesh: Mesh, mode: str = "unroll") -> Callable:
    """One compiled epoch of a group of members: `epoch_fn` (one member's step) on a stacked
    state (leading axis = members) split over the mesh's `data` axis, the data replicated.
    On each device its members run `mode`: "unroll", the one-member program once per member
    (the same kernels as one at a time: bit-identical), or "vmap", one batched program
    (larger kernels; XLA's batched matmuls may round the last bit differently)."""
    if mode not in GROUP_MODES:
        raise ValueError(f"unknown group mode {mode!r}; use one of {GROUP_MODES}")

    def local(state_k, x, y):
        if mode == "vmap":
            return jax.vmap(epoch_fn, in_axes=(0, None, None))(state_k, x, y)
        k = state_k.epoch.shape[0]
        out = [epoch_fn(jax.tree.map(lambda a: a[j], state_k), x, y) for j in range(k)]
        return stack_members(out)

    return jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P(), P()),
                                 out_specs=P("data"), check_vma=False))


def stack_members(members: Sequence[Any]) -> Any:
    """Pytrees of equal structure stacked along a new leading (member) axis."""
    return jax.tree.map(lambda *a: jnp.stack(a), *members)


def open_population(out_dir: str, man_path: str, m: dict[str, Any], old: dict | None,
                    pre: jdata.Preprocess, *, members: str, grow_key: str, requested: int,
                    refuse: Callable[[dict[str, tuple]], Exception],
                    free_keys: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Merge the stored manifest `old` into the new one `m` (refusing another setup with
    `refuse(diff)`; config fields in `free_keys` may differ), add records for new members,
    write the preprocessing and the manifest. Returns every member's record (m[members])."""
    records: list[dict[str, Any]] = []
    if old is not None:
        if identity(old, grow_key, free_keys) != identity(m, grow_key, free_keys):
            raise refuse(setup_diff(old, m, grow_key, free_keys))
        records = list(old[members])
        m["config"][grow_key] = max(requested, old["config"][grow_key])
    records += [dict(index=i, epochs_done=0, complete=False, test_accuracy=None,
                     train_time_s=0.0) for i in range(len(records), m["config"][grow_key])]
    m[members] = records
    pre_path = os.path.join(out_dir, PREPROCESS_FILE)
    safeio.savez(pre_path, **jdata.to_dict(pre))
    write_manifest(man_path, m)
    return records


def run_epochs(state: TrainState, start: int, epochs: int, epoch_fn: Callable,
               data: tuple[jax.Array, jax.Array], save: Callable[[int, TrainState], None],
               rec: dict[str, Any], t0: float, man_path: str, m: dict[str, Any],
               progress: tuple[Callable[[int, int], None] | None, int, int],
               ndigits: int | None = None) -> tuple[TrainState, int]:
    """Epochs start+1..epochs of one member: train, `save(epoch, state)`, update its record
    and the manifest, report progress (callback, epochs done, total). Returns (state, done)."""
    states, done = run_group_epochs([state], [start], epochs, epoch_fn, data,
                                    lambda j, epoch, s: save(epoch, s), [rec], [t0], man_path,
                                    m, progress, ndigits)
    return states[0], done


def run_group_epochs(states: Sequence[TrainState], starts: Sequence[int], epochs: int,
                     epoch_fn: Callable, data: tuple[jax.Array, jax.Array],
                     save: Callable[[int, int, TrainState], None],
                     recs: Sequence[dict[str, Any]], t0s: Sequence[float], man_path: str,
                     m: dict[str, Any],
                     progress: tuple[Callable[[int, int], None] | None, int, int],
                     ndigits: int | None = None, *,
                     stack: Callable[[list[TrainState]], Any] = lambda states: states[0],
                     unstack: Callable[[Any], list[TrainState]] = lambda state: [state]
                     ) -> tuple[list[TrainState], int]:
    """`run_epochs` for members trained together: each `epoch_fn` call advances every member
    of the `stack`ed state by one epoch from its own epoch (members resumed from different
    epochs share the calls); member j (`unstack`) is saved with `save(j, epoch, state)`, its
    record (`recs[j]`, timed from `t0s[j]`) and the manifest updated and progress reported
    until it reaches `epochs`; a member already there rides along unsaved. The default
    stack/unstack is one unstacked member. Returns (each member's state at `epochs`, done)."""
    progress_cb, done, total = progress
    states, at = list(states), list(starts)
    state = stack(states)
    while min(at) < epochs:
        state = epoch_fn(state, *data)
        for j, member in enumerate(unstack(state)):
            if at[j] == epochs:
                continue
            at[j] += 1
            states[j] = member
            save(j, at[j], member)
            seconds = time.perf_counter() - t0s[j]
            recs[j].update(epochs_done=at[j],
                           train_time_s=seconds if ndigits is None else round(seconds, ndigits))
            write_manifest(man_path, m)
            done += 1
            if progress_cb is not None:
                progress_cb(done, total)
    return states, done


def save_resume(resume: ocp.CheckpointManager, epoch: int, state: TrainState) -> None:
    """The full training state after `epoch` epochs (what `restore_resume` reads)."""
    resume.save(epoch, args=ocp.args.StandardSave(
        {"variables": state.variables, "opt_state": state.opt_state}))


def close_population(out_dir: str, man_path: str, m: dict[str, Any],
                     records: list[dict[str, Any]]) -> None:
    """Final status in the manifest; drop resume/ once it is empty."""
    m["status"] = "complete" if all(r["complete"] for r in records) else "incomplete"
    write_manifest(man_path, m)
    try:
        os.rmdir(os.path.join(out_dir, "resume"))  # empty once every member is complete
    except OSError:
        pass


def fit_or_stored_preprocess(preprocess: str | jdata.Preprocess, stored_kind: str | None,
                             out_dir: str, x_train: np.ndarray, dataset_name: str,
                             error: type[Exception]) -> jdata.Preprocess:
    """A fitted `Preprocess` as given; a kind: the stored fit when the population was built
    with that kind (`stored_kind`; no refit on resume), else a fit on x_train."""
    if not isinstance(preprocess, str):
        return preprocess
    if stored_kind == preprocess:
        return read_preprocess(out_dir, error)
    return jdata.fit_preprocess(preprocess, x_train, dataset_name=dataset_name)
