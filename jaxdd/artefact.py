"""A distilled (or selected) set as a self-describing directory.

    DIR/arrays.npz        x_syn_NHWC (float32, model space, lossless), y_syn, preprocessing,
                          and a method's own arrays (`parts`, e.g. INFER's base images and
                          compensators, stored as part_<name>)
    DIR/meta.json         format, method, dataset, shapes, label kind, lr, preprocess kind,
                          config, seed, versions, sha256 of arrays.npz
    DIR/evaluations.json  every evaluation run on it (appended)
    DIR/grid.png          the images in pixel space (un-whitened), one row per class

Loading needs nothing but this directory. Writes go to a temporary sibling that is
renamed into place, so an interrupted or failed save never corrupts an existing artefact.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, NamedTuple

import numpy as np

import jaxdd
from jaxdd import data as jdata
from jaxdd import safeio
from jaxdd.safeio import sha256_file

FORMAT = "jaxdd-artefact"
FORMAT_VERSION = 1


class ArtefactError(ValueError):
    """A missing, corrupt or incompatible artefact (message says what to do)."""


class Artefact(NamedTuple):
    x_syn_NHWC: np.ndarray   # model space (after preprocessing)
    y_syn: np.ndarray        # (N,) int hard labels or (N, K) label logits
    lr: float | None         # learned step size for evaluation, if any
    preprocess: jdata.Preprocess
    meta: dict[str, Any]
    parts: dict[str, np.ndarray] | None = None  # a method's own arrays (see `save(parts=)`)

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])


def _versions() -> dict[str, str]:
    import flax
    import jax
    import optax
    return {"jaxdd": jaxdd.__version__, "jax": jax.__version__, "flax": flax.__version__,
            "optax": optax.__version__, "numpy": np.__version__}


def exists(out_dir: str) -> bool:
    return os.path.exists(os.path.join(out_dir, "meta.json"))


def check_target(out_dir: str, overwrite: bool) -> None:
    """Only an absent path, an empty directory or (with overwrite) our own artefact."""
    if not os.path.exists(out_dir):
        return
    if not os.path.isdir(out_dir):
        raise safeio.OutputError(f"{out_dir} is an existing file; choose a new directory path")
    if exists(out_dir):
        if not overwrite:
            raise ArtefactError(f"{out_dir} already holds an artefact; choose another --out or "
                                f"pass --overwrite")
        return
    if os.listdir(out_dir):
        raise safeio.OutputError(f"{out_dir} exists and is not a jaxdd artefact; jaxdd never "
                                 f"replaces files it did not write: choose a new directory")


def _kept_evaluations(out_dir: str, digest: str) -> list:
    """The evaluation history of an artefact being rewritten with the same arrays (a
    re-run of a finished run): kept, so evaluations are appended, never reset."""
    if not exists(out_dir):
        return []
    try:
        with open(os.path.join(out_dir, "meta.json")) as f:
            same = json.load(f).get("arrays_sha256") == digest
        with open(os.path.join(out_dir, "evaluations.json")) as f:
            return json.load(f) if same else []
    except (OSError, ValueError):
        return []


def save(out_dir: str, x_syn_NHWC: np.ndarray, y_syn: np.ndarray, *, preprocess: jdata.Preprocess,
         method: str, dataset: str, num_classes: int, ipc: int, seed: int,
         config: dict | None = None, lr: float | None = None, overwrite: bool = False,
         extra: dict | None = None, parts: dict[str, np.ndarray] | None = None) -> str:
    """Write an artefact; refuses to replace an existing one unless `overwrite`.

    `parts`: named arrays the set is made of when that is not the images themselves
    (INFER: base images and compensators); stored losslessly next to the images, their
    bytes recorded in meta.json as `part_bytes` (`extra` may name the budget)."""
    parts = {k: np.asarray(v) for k, v in (parts or {}).items()}
    x = np.asarray(x_syn_NHWC, np.float32)
    y = np.asarray(y_syn)
    if x.ndim != 4 or x.shape[1:] != tuple(preprocess.image_shape):
        raise ArtefactError(f"images must be (N, {', '.join(map(str, preprocess.image_shape))}), got {x.shape}")
    if len(y) != len(x):
        raise ArtefactError(f"{len(x)} images but {len(y)} labels")
    if not np.isfinite(x).all():
        raise ArtefactError("the synthetic images contain NaN/inf; refusing to save them")
    check_target(out_dir, overwrite)

    def fill(tmp: str) -> None:
        pre = {f"pre_{k}": v for k, v in jdata.to_dict(preprocess).items()}
        arrays = {"x_syn_NHWC": x, "y_syn": y, **pre,
                  **{f"part_{k}": v for k, v in parts.items()}}
        if lr is not None:
            arrays["lr"] = np.float64(lr)
        np.savez(os.path.join(tmp, "arrays.npz"), **arrays)
        digest = sha256_file(os.path.join(tmp, "arrays.npz"))
        meta = {
            "format": FORMAT, "format_version": FORMAT_VERSION, "method": method,
            "dataset": dataset, "num_classes": int(num_classes), "ipc": int(ipc),
            "image_shape": list(x.shape[1:]), "num_images": int(len(x)),
            "label_kind": "hard" if y.ndim == 1 else "logits",
            "lr": None if lr is None else float(lr), "preprocess": preprocess.kind,
            "seed": int(seed), "config": config or {}, "versions": _versions(),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "arrays_sha256": digest,
            "image_bytes": int(x.nbytes), "label_bytes": int(y.nbytes),
            **({"part_bytes": {k: int(v.nbytes) for k, v in parts.items()}} if parts else {}),
            **(extra or {}),
        }
        safeio.write_json(os.path.join(tmp, "meta.json"), meta)
        safeio.write_json(os.path.join(tmp, "evaluations.json"), _kept_evaluations(out_dir, digest))
        save_grid(os.path.join(tmp, "grid.png"), jdata.invert(preprocess, x, clip=True),
                  y if y.ndim == 1 else y.argmax(-1), num_classes)

    safeio.write_dir(out_dir, fill, replace=exists(out_dir), prefix="artefact")
    return out_dir


def load(path: str) -> Artefact:
    """Load and verify an artefact directory; clear errors for anything wrong with it."""
    meta_path = os.path.join(path, "meta.json")
    arrays_path = os.path.join(path, "arrays.npz")
    if not os.path.isdir(path):
        raise ArtefactError(f"no artefact at {path}: the directory does not exist")
    if not os.path.exists(meta_path) or not os.path.exists(arrays_path):
        raise ArtefactError(f"{path} is not a jaxdd artefact (meta.json or arrays.npz missing)")
    meta = safeio.read_versioned_json(meta_path, FORMAT, FORMAT_VERSION, ArtefactError, "")
    if sha256_file(arrays_path) != meta.get("arrays_sha256"):
        raise ArtefactError(f"{arrays_path} does not match the sha256 checksum recorded in "
                            f"{meta_path}: either file may be damaged or corrupt; re-create "
                            f"the artefact")
    with np.load(arrays_path) as z:
        arrays = {k: z[k] for k in z.files}
    pre = jdata.from_dict({k[4:]: v for k, v in arrays.items() if k.startswith("pre_")})
    lr = float(arrays["lr"]) if "lr" in arrays else None
    if not np.isfinite(arrays["x_syn_NHWC"]).all():
        raise ArtefactError(f"{path}: the images contain NaN/inf; re-create the artefact")
    parts = {k[5:]: v for k, v in arrays.items() if k.startswith("part_")}
    return Artefact(arrays["x_syn_NHWC"], arrays["y_syn"], lr, pre, meta, parts or None)


def add_evaluation(path: str, result: dict) -> None:
    """Append one evaluation result (atomic rewrite of evaluations.json)."""
    ev_path = os.path.join(path, "evaluations.json")
    try:
        with open(ev_path) as f:
            evs = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        evs = []
    evs.append({**result, "time": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    safeio.write_json(ev_path, evs)


def save_grid(path: str, x_NHWC_01: np.ndarray, y: np.ndarray, num_classes: int,
              max_per_class: int = 10) -> None:
    """PNG grid: one row per class, up to `max_per_class` images each, 1 px gaps."""
    from PIL import Image

    img = grid_image(x_NHWC_01, y, num_classes, max_per_class)
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)


def grid_image(x_NHWC_01: np.ndarray, y: np.ndarray, num_classes: int,
               max_per_class: int = 10) -> np.ndarray:
    """(H, W, C) uint8 grid of pixel-space images: one row per class, up to
    `max_per_class` images each, 1 px white gaps (grid.png, TensorBoard image grids)."""
    n, h, w, c = x_NHWC_01.shape
    cols = max(1, min(max_per_class, max(int((y == k).sum()) for k in range(num_classes))))
    canvas = np.ones((num_classes * (h + 1) + 1, cols * (w + 1) + 1, c), np.float32)
    for k in range(num_classes):
        for j, i in enumerate(np.flatnonzero(y == k)[:cols]):
            canvas[1 + k * (h + 1):1 + k * (h + 1) + h, 1 + j * (w + 1):1 + j * (w + 1) + w] = x_NHWC_01[i]
    return (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)
