"""Watching a distillation: the driver hooks that log image grids and evaluate the set
during the run, keeping the best one on the validation split, and the final table.

Both hooks are `jaxdd.run.driver.Hook`s: `start(step)` after the restore, then `hook(t,
state)` after every step. `export(state)` gives host copies `{name: (x, y, lr)}` and must be
called by every process (it gathers a multi-process set); only process 0 writes.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import jax
import numpy as np

from jaxdd import artefact
from jaxdd import data as jdata
from jaxdd.run.metrics import MetricWriter, read_jsonl

Export = Callable[[Any], dict[str, tuple]]


def _due(t: int, every: int | None, iterations: int) -> bool:
    return bool(every) and (t % every == 0 or t == iterations)


def hard_labels(y: np.ndarray) -> np.ndarray:
    y = np.asarray(y)
    return y if y.ndim == 1 else y.argmax(-1)


class ImageGrid:
    """`train/images`: the synthetic set in pixel space (one row per class) every `every`
    iterations and at the last one."""

    def __init__(self, every: int, iterations: int, export: Export, pre: jdata.Preprocess,
                 num_classes: int, writer: MetricWriter):
        self.every, self.iterations, self.export = every, iterations, export
        self.pre, self.num_classes, self.writer = pre, num_classes, writer

    def start(self, step: int) -> None:
        pass

    def __call__(self, t: int, state: Any) -> None:
        if not _due(t, self.every, self.iterations):
            return
        x, y, _ = self.export(state)["artefact"]
        grid = artefact.grid_image(jdata.invert(self.pre, np.asarray(x), clip=True),
                                   hard_labels(y), self.num_classes)
        self.writer.write_images(t, {"train/images": grid})


class PeriodicEval:
    """Evaluate the set every `every` iterations (and at the last) with a cheap protocol,
    select on the validation split, and keep the best set as an artefact.

    `evaluate(key, x, y, lr) -> evaluate_set's dict`; the key of iteration t is
    `fold_in(key, t)`, so a resumed run evaluates exactly as the uninterrupted one.
    `save_best(t, x, y, lr, selection)` writes the best artefact (process 0). The curve is
    logged as `eval/*` (eval.jsonl: `val_accuracy`, `test_accuracy`, `best_val_accuracy`,
    `best_iteration`); after a resume from step s the best so far is restored from the
    logged evaluations of iterations <= s (the log the resumed run keeps).
    """

    def __init__(self, every: int, iterations: int, export: Export, key: jax.Array,
                 evaluate: Callable[..., dict], save_best: Callable[..., None],
                 writer: MetricWriter, log_path: str, describe: dict,
                 note: Callable[[str], None] | None = None):
        self.every, self.iterations, self.export, self.key = every, iterations, export, key
        self.evaluate, self.save_best, self.writer = evaluate, save_best, writer
        self.log_path, self.describe, self.note = log_path, describe, note
        self.best: tuple[float, int] | None = None   # (val accuracy, iteration)

    def start(self, step: int) -> None:
        self.best = None
        for e in read_jsonl(self.log_path):
            if e.get("iteration", 0) <= step and "val_accuracy" in e:
                self._consider(float(e["val_accuracy"]), int(e["iteration"]))

    def _consider(self, val: float, t: int) -> bool:
        """Keep (val, t) if it beats the best so far (ties keep the earlier iteration)."""
        if math.isfinite(val) and (self.best is None or val > self.best[0]):
            self.best = (val, t)
            return True
        return False

    def __call__(self, t: int, state: Any) -> None:
        if not _due(t, self.every, self.iterations):
            return
        x, y, lr = self.export(state)["artefact"]
        r = self.evaluate(jax.random.fold_in(self.key, t), np.asarray(x), np.asarray(y), lr)
        val = float(r["val_accuracy_mean"])
        if self._consider(val, t):
            self.save_best(t, x, y, lr, {
                "selected_on": "validation", "label": "best (val-selected)", "iteration": t,
                "val_accuracy": val, "test_accuracy": float(r["accuracy_mean"]),
                **self.describe})
        best_val, best_t = self.best or (float("nan"), 0)
        self.writer.write_scalars(t, {
            "eval/val_accuracy": val, "eval/test_accuracy": float(r["accuracy_mean"]),
            "eval/best_val_accuracy": best_val, "eval/best_iteration": best_t,
            "eval/seconds": float(r["seconds"])})
        self.writer.flush()
        if self.note:
            self.note(f"iteration {t}: val {100 * val:.2f} % (best {100 * best_val:.2f} % at "
                      f"{best_t})")


def final_table(evaluations: dict[str, dict]) -> str:
    """The final evaluations as a Markdown table (TensorBoard's text tab renders it)."""
    rows = ["| set | test accuracy (%) | val accuracy (%) | seeds | protocol |",
            "|---|---|---|---|---|"]
    for name, r in evaluations.items():
        rows.append(f"| {name} | {100 * r['accuracy_mean']:.2f} ± {100 * r['accuracy_std']:.2f} "
                    f"| {100 * r.get('val_accuracy_mean', float('nan')):.2f} | {r['seeds']} "
                    f"| {r['protocol']} |")
    return "\n".join(rows)


def log_final(writer: MetricWriter, step: int, evaluations: dict[str, dict]) -> None:
    """`final/<set>/test_accuracy` (+ std, val) and the `final/results` table."""
    scalars = {}
    for name, r in evaluations.items():
        scalars[f"final/{name}/test_accuracy"] = r["accuracy_mean"]
        scalars[f"final/{name}/test_accuracy_std"] = r["accuracy_std"]
        scalars[f"final/{name}/val_accuracy"] = r.get("val_accuracy_mean", float("nan"))
    writer.write_scalars(step, scalars)
    writer.write_texts(step, {"final/results": final_table(evaluations)})
    writer.flush()


def best_path(out_dir: str) -> str:
    return os.path.join(out_dir, "best")
