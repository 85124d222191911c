"""Orbax checkpoints of a whole distillation state, with a config fingerprint.

A run directory holds `run.json` (the config fingerprint it was started with) and
`checkpoints/<step>/` written by an Orbax `CheckpointManager` (async, bounded number
kept). A checkpoint from another config is refused; an unreadable latest checkpoint is
reported by name and nothing is ever deleted by a failed restore.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used (message says what to do)."""


def fingerprint(config: dict) -> str:
    """Stable hash of the parts of a config that determine the result."""
    blob = json.dumps(config, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Checkpointer:
    """Thin wrapper over `ocp.CheckpointManager` for one run directory."""

    def __init__(self, run_dir: str, config: dict, every: int, keep: int = 3,
                 async_save: bool = True):
        self.run_dir = os.path.abspath(run_dir)
        self.every = every
        os.makedirs(self.run_dir, exist_ok=True)
        self._check_config(config)
        self.manager = ocp.CheckpointManager(
            os.path.join(self.run_dir, "checkpoints"),
            # A save killed half-way leaves `<step>.orbax-checkpoint-tmp-<n>` (Orbax writes
            # to a tmp dir and renames it once complete, so it is never a listed step). It is
            # removed here: left in place, Orbax later deletes it instead of the real <step>.
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 cleanup_tmp_directories=True,
                                                 enable_async_checkpointing=async_save))

    def _check_config(self, config: dict) -> None:
        path = os.path.join(self.run_dir, "run.json")
        fp = fingerprint(config)
        if os.path.exists(path):
            with open(path) as f:
                old = json.load(f)
            if old.get("fingerprint") != fp:
                changed = sorted(k for k in set(old.get("config", {})) | set(config)
                                 if old.get("config", {}).get(k) != json.loads(json.dumps(config.get(k), default=str)))
                raise CheckpointError(
                    f"{self.run_dir} holds a run with a different config (changed: "
                    f"{', '.join(changed) or 'unknown'}); use another --out or the original config")
        elif jax.process_index() == 0:
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"fingerprint": fp, "config": config}, f, indent=2, default=str)
            os.replace(tmp, path)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def save(self, step: int, state: Any, force: bool = False) -> None:
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
            hint = (f"resume from the previous good one with --resume-step {prev[-1]}"
                    if prev else "start a new run with another --out")
            raise CheckpointError(
                f"checkpoint {os.path.join(self.run_dir, 'checkpoints', str(step))} is unreadable "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); {hint}. Nothing was deleted.") from None
        return step, state

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
