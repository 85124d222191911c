"""The one distillation loop shared by every method.

    key_t = fold_in(key, t);  batch = batch_fn(consts, key_t[0], t);  state = step(state, batch, key_t[1])

Everything random is a function of (key, t), so a run resumed from a checkpoint at step t
continues exactly as the uninterrupted run. The loop dispatches step t before pulling
step t-1's metrics to the host (keeps the accelerator busy) and checkpoints periodically
and at the end. Every method runs wrapped in `skip_nonfinite`: a step that would make the
state NaN/inf is skipped (the state is kept) and logged with `nonfinite: 1`; a step is
checked before it is checkpointed, and `max_nonfinite` skips in a row stop the run with a
message naming the iteration, the state and every checkpoint intact.

Data too large to be a constant (RDED's candidate pools on ImageNet) comes in per step:
`step_input(t)` is a host pytree read for step t (a pure function of t, so a resumed run
reads what the uninterrupted one read) and `batch_fn` then gets (consts, input_t); the
input of step t + 1 is read while step t runs on the device.

Logging goes through one `jaxdd.run.metrics.MetricWriter` (tags `train/<metric>`; by
default `metrics.jsonl` in the run directory), and periodic work (image grids, evaluation
during distillation) through `Hook`s, called with step t's state before step t+1 is
dispatched; both are told where a resumed run starts (`start(step)`).
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.methods.base import Distiller, skip_nonfinite, step_keys
from jaxdd.run import mesh as jmesh
from jaxdd.run.checkpoint import Checkpointer
from jaxdd.run.metrics import JsonlWriter, MetricWriter
from jaxdd.run.progress import Progress


class NonFiniteError(FloatingPointError):
    pass


class Hook(Protocol):
    """A periodic action of the loop (CLU's `PeriodicAction` shape): `start(step)` once,
    after the restore (0: a fresh run); then `hook(t, state)` after every step t, with the
    state of step t (read it before returning: the next step donates it). It decides
    itself whether t is due."""

    def start(self, step: int) -> None: ...

    def __call__(self, t: int, state: Any) -> None: ...


def make_step(distiller: Distiller, batch_fn: Callable[[Any, jax.Array, jax.Array], Any]):
    """Fuse batch sampling and the method step into one pure function of
    (state, consts, key, t); `consts` (real data, expert buffers) are arguments, not
    closure constants, so large arrays are neither embedded in the program nor copied."""

    def full_step(state, consts, key, t):
        k_batch, k_step = step_keys(key, t)
        return distiller.step(state, batch_fn(consts, k_batch, t), k_step)

    return full_step


_COMPILED: dict = {}  # (distiller, batch_fn, argument signature) -> compiled step


def _compiled_step(distiller, batch_fn, args, in_sh, out_sh, jit_kwargs):
    """The guarded step compiled ahead of time for these arguments, once per process (a
    recover run calls the driver once per batch with the same distiller and shapes)."""
    sig = jax.tree.map(lambda a: (getattr(a, "shape", None), str(getattr(a, "dtype", type(a)))),
                       args)
    key = (distiller, batch_fn, str(jax.tree.structure(args)), str(jax.tree.leaves(sig)),
           str(in_sh), tuple(sorted((jit_kwargs or {}).items())))
    if key not in _COMPILED:
        step = jax.jit(make_step(skip_nonfinite(distiller), batch_fn), donate_argnums=(0,),
                       in_shardings=in_sh, out_shardings=out_sh, **(jit_kwargs or {}))
        _COMPILED.clear()  # keep one program alive: a new run no longer needs the old one
        _COMPILED[key] = step.lower(*args).compile()
    return _COMPILED[key]


def _host_metrics(m: dict) -> dict:
    return {k: (float(v) if np.ndim(v) == 0 else np.asarray(v).tolist()) for k, v in m.items()}


def run(distiller: Distiller, state: Any, batch_fn: Callable, key: jax.Array, iterations: int, *,
        consts: Any = None, mesh: jax.sharding.Mesh | None = None, run_dir: str | None = None,
        config: dict | None = None, ckpt_every: int = 100, keep: int = 3, resume: bool = True,
        resume_step: int | None = None, progress: Progress | None = None, log_every: int = 10,
        jit_kwargs: dict | None = None, stop_after: int | None = None,
        timings: dict | None = None, max_nonfinite: int = 10,
        writer: MetricWriter | None = None, hooks: tuple[Hook, ...] = (),
        step_input: Callable[[int], Any] | None = None) -> tuple[Any, list[dict]]:
    """Run `iterations` steps (resuming from run_dir if it holds a checkpoint).

    `stop_after` ends the loop early after that many steps of this call (tests, budgets).
    Returns the final state and the logged metrics (every `log_every` steps, and every
    skipped step). The state is placed on `mesh` (default: all devices) by
    `jaxdd.run.mesh.state_shardings`; consts are replicated. `timings`, if given, receives
    `compile_seconds` (ahead-of-time compile of the step, measured apart from the steps;
    served from the persistent compilation cache that the CLI enables when the same program
    was compiled before), `steps_seconds` and `nonfinite_steps` (skipped steps).
    `writer` receives the logged metrics as `train/<name>` (default: `metrics.jsonl` in
    run_dir, process 0 only); `hooks` run after every step (see `Hook`). `step_input`: a
    host pytree per step t (same shapes every step, replicated), given to `batch_fn` as
    (consts, step_input(t)) in place of consts.
    """
    if iterations < 1 or ckpt_every < 1 or max_nonfinite < 1:
        raise ValueError(f"iterations, ckpt_every and max_nonfinite must be >= 1, got "
                         f"{iterations}, {ckpt_every}, {max_nonfinite}")
    mesh = mesh or jmesh.make_mesh()
    state_sh = jmesh.state_shardings(state, mesh)
    repl = jmesh.replicated(mesh)
    state = jmesh.put(state, state_sh)
    consts = jmesh.put(consts, jax.tree.map(lambda _: repl, consts))
    key = jmesh.put(key, repl)
    ckpt = Checkpointer(run_dir, config or {}, ckpt_every, keep) if run_dir else None
    start = 0
    if ckpt and resume:
        restored = ckpt.restore(state, resume_step)
        if restored is not None:
            start, state = restored
    history: list[dict] = []
    if writer is None and run_dir and jax.process_index() == 0:
        writer = JsonlWriter({"train": os.path.join(run_dir, "metrics.jsonl")})
    if writer is not None:
        writer.start(start)
    for hook in hooks:
        hook.start(start)
    pending = None  # (t, metrics) of the previous step, read after dispatching the next
    skips = {"total": 0, "in_a_row": 0}

    def consts_at(t):  # what the step gets as consts: with step_input, (consts, input_t)
        if step_input is None:
            return consts
        inp = step_input(t)
        return consts, jmesh.put(inp, jax.tree.map(lambda _: repl, inp))

    def check(t, metrics):
        m = _host_metrics(metrics)
        bad = bool(m.get("nonfinite", 0))
        skips["total"] += bad
        skips["in_a_row"] = skips["in_a_row"] + 1 if bad else 0
        if bad or t % log_every == 0 or t == iterations:
            history.append({**m, "iteration": t})
            if writer is not None:
                writer.write_scalars(t, {f"train/{k}": v for k, v in m.items()})
        if bad and progress:
            progress.note(f"iteration {t}: non-finite loss/update (loss={m.get('loss')}); "
                          f"step skipped, state kept")
        if skips["in_a_row"] >= max_nonfinite:
            where = (f"checkpoints in {os.path.join(run_dir, 'checkpoints')} are intact"
                     if run_dir else "nothing was saved")
            raise NonFiniteError(
                f"{skips['in_a_row']} non-finite steps in a row, the last at iteration {t} "
                f"(loss={m.get('loss')}); every one was skipped and the {where}. Lower the "
                f"image/label learning rate or check the data, in a new --out")
        if progress:
            progress(t, iterations, f"loss {m.get('loss', float('nan')):.4f}")

    t = start
    if start < iterations:  # compile ahead of time so compile and step times are reported apart
        consts_t = consts_at(start + 1)
        t_compile = time.perf_counter()
        step = _compiled_step(distiller, batch_fn,
                              (state, consts_t, key, jnp.asarray(start + 1, jnp.int32)),
                              (state_sh, repl, repl, repl), (state_sh, repl), jit_kwargs)
        if timings is not None:
            timings["compile_seconds"] = round(time.perf_counter() - t_compile, 2)
    t_steps = time.perf_counter()
    try:
        for t in range(start + 1, iterations + 1):
            state, metrics = step(state, consts_t, key, jnp.asarray(t, jnp.int32))
            last = t == iterations or (stop_after is not None and t - start >= stop_after)
            if step_input is not None and not last:
                consts_t = consts_at(t + 1)  # read while step t runs
            if pending is not None:
                check(*pending)
            pending = (t, metrics)
            for hook in hooks:
                hook(t, state)
            if ckpt and (t % ckpt_every == 0 or t == iterations):
                check(*pending)  # a step is checked before it is checkpointed
                pending = None
                ckpt.save(t, state, force=True)
            if stop_after is not None and t - start >= stop_after:
                break
        if pending is not None:
            check(*pending)
    finally:
        if ckpt:
            ckpt.close()
        if writer is not None:
            writer.flush()
    if timings is not None:
        timings["steps_seconds"] = round(time.perf_counter() - t_steps, 2)
        timings["nonfinite_steps"] = skips["total"]
        timings["last_iteration"] = t
    return state, history
