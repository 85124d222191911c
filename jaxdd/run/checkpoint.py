"""Orbax checkpoints of a whole distillation state, with a config fingerprint.

A run directory holds `run.json` (the config fingerprint it was started with) and
`checkpoints/<step>/` written by an Orbax `CheckpointManager` (async, bounded number
kept). A checkpoint from another config is refused; an unreadable latest checkpoint is
reported by name and nothing is ever deleted by a failed restore.
"""

from __future__ import annotations

import os
import re
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxdd import safeio


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (message says what to do)."""


def _reason(e: Exception) -> str:
    """First line of an Orbax/TensorStore error without object reprs (`<bound method ...>`)."""
    text = (str(e).strip().splitlines() or [""])[0]
    text = re.sub(r"<[^<>]*>", "", text).strip(" :,")[:200]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for one run directory."""

    def __init__(self, run_dir: str, config: dict, every: int, keep: int = 3,
                 async_save: bool = True, flag: str = "--out",
                 resume_flag: str | None = "--resume-step"):
        self.run_dir = os.path.abspath(run_dir)
        self.every = every
        self.flag = flag   # the option that named run_dir, for error messages
        self.resume_flag = resume_flag   # the option that picks an earlier step (None: none)
        if jax.process_index() == 0:
            safeio.claim_run(self.run_dir, config, flag)
        self.manager = ocp.CheckpointManager(
            os.path.join(self.run_dir, "checkpoints"),
            # A save killed half-way leaves `<step>.orbax-checkpoint-tmp-<n>` (Orbax writes
            # to a tmp dir and renames it once complete, so it is never a listed step). It is
            # removed here: left in place, Orbax later deletes it instead of the real <step>.
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 cleanup_tmp_directories=True,
                                                 enable_async_checkpointing=async_save))

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, force: bool = False) -> None:
        """Save `step` if it is due (or forced); an existing checkpoint of that step (a run
        resumed from an earlier one) is never overwritten."""
        if step in self.manager.all_steps():
            return
        if force or step % self.every == 0:
            self.manager.save(step, args=ocp.args.StandardSave(state), force=force)

    def restore(self, state_like: Any, step: int | None = None) -> tuple[int, Any] | None:
        """Restore `step` (default: the latest) onto the shardings of `state_like`."""
        steps = self.steps()
        if not steps:
            return None
        step = steps[-1] if step is None else step
        if step not in steps:
            raise CheckpointError(f"no checkpoint at step {step} in {self.run_dir}; available: {steps}")
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state_like)
        try:
            state = self.manager.restore(step, args=ocp.args.StandardRestore(target))
        except Exception as e:  # noqa: BLE001 - any failure here means an unusable checkpoint
            prev = [s for s in steps if s < step]
            hint = (f"resume from the previous good one with {self.resume_flag} {prev[-1]}"
                    if prev and self.resume_flag
                    else f"start a new run with another {self.flag}")
            raise CheckpointError(
                f"checkpoint {os.path.join(self.run_dir, 'checkpoints', str(step))} is unreadable "
                f"({_reason(e)}); {hint}. Nothing was deleted.") from None
        return step, state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
