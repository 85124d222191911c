"""One metric-writer interface for every stage: JSONL, TensorBoard, W&B, and a fan-out.

Modelled on CLU's `clu/metric_writers` API (`write_scalars(step, dict)`, `write_images`,
`write_texts`, `flush`, `close`, `MultiWriter`), written here because `clu.metric_writers`
imports TensorFlow when it is imported (its `SummaryWriter` is `tf.summary`), and jaxdd
runs without TensorFlow. One addition: `start(step)`, called by the driver after a
resume, so a writer forgets what a killed run logged after the checkpoint it resumes from.

Tags are `namespace/name` (`train/loss`, `eval/val_accuracy`, `final/artefact/test_accuracy`).
Every writer opens its files lazily, at its first write: a run that fails on bad input
before it starts leaves nothing behind.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from typing import Any, Mapping

import numpy as np

from jaxdd import safeio


class MetricWriter:
    """The interface (CLU's): every method is a no-op here, so a writer overrides what it
    records and ignores the rest (a JSONL file has no images)."""

    def start(self, step: int) -> None:
        """The run continues after `step` (0: a fresh run): drop anything logged after it."""

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        """Numbers by tag at `step` (non-scalar values are kept by JSONL, skipped elsewhere)."""

    def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
        """Images by tag: (H, W, C) uint8, or float in [0, 1]."""

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        """Markdown texts by tag (final tables)."""

    def flush(self) -> None:
        """Make everything written so far visible to readers."""

    def close(self) -> None:
        """Flush and release files; the writer may be used again (it reopens lazily)."""


class MultiWriter(MetricWriter):
    """Fan-out: every call goes to each writer, in order."""

    def __init__(self, writers: list[MetricWriter]):
        self.writers = list(writers)

    def start(self, step):
        for w in self.writers:
            w.start(step)

    def write_scalars(self, step, scalars):
        for w in self.writers:
            w.write_scalars(step, scalars)

    def write_images(self, step, images):
        for w in self.writers:
            w.write_images(step, images)

    def write_texts(self, step, texts):
        for w in self.writers:
            w.write_texts(step, texts)

    def flush(self):
        for w in self.writers:
            w.flush()

    def close(self):
        for w in self.writers:
            w.close()


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.number)) and not isinstance(v, bool) or (
        isinstance(v, np.ndarray) and v.ndim == 0)


def _json_value(v: Any) -> Any:
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if _is_number(v):
        return float(v)
    return np.asarray(v).tolist() if isinstance(v, np.ndarray) else v


def _split(tag: str) -> tuple[str, str]:
    ns, _, name = tag.partition("/")
    return (ns, name) if name else ("", tag)


class JsonlWriter(MetricWriter):
    """Scalars as JSON lines, one file per namespace: `routes` maps a namespace to a path
    (`{"train": "run/metrics.jsonl"}`); a line is `{name: value, ..., "iteration": step}`
    (the format metrics.jsonl always had). Tags of other namespaces are not written here."""

    def __init__(self, routes: Mapping[str, str]):
        self.routes = dict(routes)

    def start(self, step):
        for path in self.routes.values():
            truncate_jsonl(path, step)

    def write_scalars(self, step, scalars):
        lines: dict[str, dict] = {}
        for tag, v in scalars.items():
            ns, name = _split(tag)
            if ns in self.routes:
                lines.setdefault(ns, {})[name] = _json_value(v)
        for ns, line in lines.items():
            safeio.makedirs(os.path.dirname(os.path.abspath(self.routes[ns])))
            with open(self.routes[ns], "a") as f:
                f.write(json.dumps({**line, "iteration": int(step)}) + "\n")


def read_jsonl(path: str) -> list[dict]:
    """The parseable lines of a JSONL log (a line torn by a kill is skipped); [] if absent."""
    if not os.path.exists(path):
        return []
    out = []
    with open(path) as f:
        for line in f:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def truncate_jsonl(path: str, last_iteration: int) -> None:
    """Drop lines logged after `last_iteration` (a killed run logged them, the resumed run
    logs them again), so a log holds each iteration once. Atomic."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        lines = f.readlines()
    keep = []
    for line in lines:
        try:
            if json.loads(line).get("iteration", 0) <= last_iteration:
                keep.append(line)
        except json.JSONDecodeError:  # a line torn by the kill
            continue
    if len(keep) != len(lines):
        safeio.write_text(path, "".join(keep))


def _uint8_image(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = (np.clip(img, 0, 1) * 255).round().astype(np.uint8)
    return img[..., None] if img.ndim == 2 else img


class TensorBoardWriter(MetricWriter):
    """TensorBoard event files in `logdir`, through `tensorboardX` (no TensorFlow). A resumed
    run opens a new event file that purges the steps after its checkpoint (TensorBoard's
    `SessionLog.START` with that step), so a curve shows each step once."""

    def __init__(self, logdir: str):
        self.logdir = logdir
        self.purge_step: int | None = None
        self._w = None

    def _writer(self):
        if self._w is None:
            from tensorboardX import SummaryWriter
            safeio.makedirs(self.logdir)
            # tensorboardX names a file by the second it opens it: the ns suffix keeps two
            # files of one second apart (and in order, as TensorBoard reads them by name).
            self._w = SummaryWriter(self.logdir, purge_step=self.purge_step, flush_secs=30,
                                    filename_suffix=f".{time.time_ns()}")
        return self._w

    def start(self, step):
        self.purge_step = step + 1 if step > 0 else None

    def write_scalars(self, step, scalars):
        for tag, v in scalars.items():
            if _is_number(v) and np.isfinite(float(v)):
                self._writer().add_scalar(tag, float(v), int(step))

    def write_images(self, step, images):
        for tag, img in images.items():
            self._writer().add_image(tag, _uint8_image(img), int(step), dataformats="HWC")

    def write_texts(self, step, texts):
        for tag, text in texts.items():
            self._writer().add_text(tag, text, int(step))

    def flush(self):
        if self._w is not None:
            self._w.flush()

    def close(self):
        if self._w is not None:
            self._w.close()
            self._w = None
        self.purge_step = None


def require_wandb() -> None:
    """`--wandb` without the package: one clear error before any work."""
    if importlib.util.find_spec("wandb") is None:
        raise ValueError("--wandb needs the wandb package: pip install wandb "
                         "(or pip install 'jaxdd[wandb]'); run without --wandb otherwise")


class WandbWriter(MetricWriter):
    """Weights & Biases, imported lazily at the first write. The run id is derived from the
    run directory, so a resumed `jaxdd distill` continues the same W&B run (W&B ignores
    steps it already has). Project: $WANDB_PROJECT, default "jaxdd"."""

    def __init__(self, run_dir: str, config: Mapping[str, Any] | None = None):
        require_wandb()
        self.run_dir, self.config = os.path.abspath(run_dir), dict(config or {})
        self._run = None

    def _get(self):
        if self._run is None:
            import wandb
            safeio.makedirs(self.run_dir)
            self._run = wandb.init(project=os.environ.get("WANDB_PROJECT", "jaxdd"),
                                   id=safeio.fingerprint(self.run_dir), resume="allow",
                                   dir=self.run_dir, config=self.config,
                                   name=os.path.basename(os.path.dirname(self.run_dir)))
        return self._run

    def write_scalars(self, step, scalars):
        data = {k: float(v) for k, v in scalars.items() if _is_number(v)}
        if data:
            self._get().log(data, step=int(step))

    def write_images(self, step, images):
        import wandb
        self._get().log({k: wandb.Image(_uint8_image(v)) for k, v in images.items()},
                        step=int(step))

    def write_texts(self, step, texts):
        import wandb
        self._get().log({k: wandb.Html(f"<pre>{v}</pre>") for k, v in texts.items()},
                        step=int(step))

    def close(self):
        if self._run is not None:
            self._run.finish()
            self._run = None


def run_writer(run_dir: str, *, tensorboard: bool = True, wandb: bool = False,
               config: Mapping[str, Any] | None = None, is_main: bool = True) -> MultiWriter:
    """The writers of one run directory: `metrics.jsonl` (train), `eval.jsonl` (periodic
    evaluation), TensorBoard in `tensorboard/`, and W&B if asked. Only the main process
    (process 0) writes; the others get an empty fan-out."""
    if not is_main:
        return MultiWriter([])
    writers: list[MetricWriter] = [JsonlWriter({"train": os.path.join(run_dir, "metrics.jsonl"),
                                                "eval": os.path.join(run_dir, "eval.jsonl")})]
    if tensorboard:
        writers.append(TensorBoardWriter(os.path.join(run_dir, "tensorboard")))
    if wandb:
        writers.append(WandbWriter(run_dir, config))
    return MultiWriter(writers)
