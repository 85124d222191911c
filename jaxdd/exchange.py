"""Export an artefact to formats other tools read, and import sets made elsewhere.

Export (`jaxdd export DIR --format F --out OUT`): OUT is a new directory holding
`export.json` (the marker that lets `--overwrite` replace it; jaxdd never replaces a
directory it did not write) and

- `png`: `OUT/<k>_<class name>/<i>.png`, 8-bit images in pixel space (the preprocessing
  inverted, clipped to [0, 1], rounded to uint8), class = the hard label or the argmax of
  the label logits; `OUT/labels.json` lists every file with its label, the logits (if any)
  and the learned lr, so an import restores them.
- `npz`: `OUT/set.npz` with `x` (N,H,W,C) float32 pixel space clipped to [0, 1], `y` hard
  labels (argmax of the logits), `logits` (if any), `lr` (if any), the exact model-space
  images `x_model_NHWC` and the preprocessing (`pre_*`, as in arrays.npz): lossless.
- `torch`: `OUT/images.pt` float32 NCHW in model space (what MTT / DATM save as
  `image_syn`), `OUT/labels.pt` (int64 hard labels, or float32 logits as DATM), `OUT/lr.pt`
  (0-d float64 tensor, if the artefact has an lr). Needs torch (`jaxdd[torch]`).

Import (`jaxdd import SRC --dataset NAME --out ART`): SRC is an export directory, an image
folder (`class_dir/*.png`), an npz (ours, or `x` (N,H,W[,C]) uint8 / float in [0, 1] and
`y`), or `.pt` files (`--images images.pt --labels labels.pt [--lr lr.pt]`, read with
`torch.load(weights_only=True)`: a pickle of anything but tensors is refused). Shapes and
class counts are checked against the dataset; images in pixel space are preprocessed with
the dataset's preprocessing fitted on its training split (as `jaxdd baseline` does), images
in model space (`.pt`, `x_model_NHWC`) are taken as they are. Nothing is written on error.
"""

from __future__ import annotations

import json
import os
import warnings
from typing import Any, NamedTuple

import numpy as np

from jaxdd import artefact, safeio
from jaxdd import data as jdata
from jaxdd.data import sources

FORMATS = ("png", "npz", "torch")
EXPORT_FORMAT = "jaxdd-export"
EXPORT_VERSION = 1
MARKER = "export.json"
NPZ_NAME = "set.npz"
TORCH_FILES = ("images.pt", "labels.pt", "lr.pt")


class ImportedSet(NamedTuple):
    x_NHWC: np.ndarray            # model space if `model_space`, else pixel uint8 / [0, 1]
    y: np.ndarray                 # (N,) int or (N, K) logits
    lr: float | None
    model_space: bool
    preprocess: jdata.Preprocess | None  # carried by the source (our npz), else None
    preprocess_kind: str | None  # recorded by our export (default for --preprocess)


def _torch():
    try:
        import torch
    except ImportError:
        raise RuntimeError("torch is not installed: pip install 'jaxdd[torch]'") from None
    return torch


# ---------------------------------------------------------------------------------------
# Export


def _class_dir(k: int, class_names: list[str] | None) -> str:
    name = class_names[k] if class_names and k < len(class_names) else str(k)
    safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(name)) or str(k)
    return f"{k}_{safe}"


def check_export_target(out: str, overwrite: bool) -> bool:
    """True if `out` is a previous export to replace; refuses anything else that exists."""
    if not os.path.exists(out):
        return False
    if not os.path.isdir(out):
        raise safeio.OutputError(f"{out} is an existing file; choose a new directory path")
    if os.path.isfile(os.path.join(out, MARKER)):
        if not overwrite:
            raise safeio.OutputError(f"{out} already holds a jaxdd export; choose another "
                                     f"--out or pass --overwrite")
        return True
    if os.listdir(out):
        raise safeio.OutputError(f"{out} exists and is not a jaxdd export; jaxdd never "
                                 f"replaces files it did not write: choose a new directory")
    return False


def pixels_uint8(art: artefact.Artefact) -> np.ndarray:
    """The PNG pixels: invert the preprocessing, clip to [0, 1], round to uint8."""
    x01 = jdata.invert(art.preprocess, art.x_syn_NHWC, clip=True)
    return np.round(x01 * 255).astype(np.uint8)


def hard_labels(y: np.ndarray) -> np.ndarray:
    return (y if y.ndim == 1 else y.argmax(-1)).astype(np.int64)


def export(src: str, fmt: str, out: str, *, overwrite: bool = False,
           class_names: list[str] | None = None) -> dict[str, Any]:
    """Write artefact `src` as `fmt` into the new directory `out` (see module docstring)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    replace = check_export_target(out, overwrite)
    art = artefact.load(src)
    torch = _torch() if fmt == "torch" else None
    y_hard = hard_labels(art.y_syn)
    logits = None if art.y_syn.ndim == 1 else np.asarray(art.y_syn, np.float32)
    marker = {"format": EXPORT_FORMAT, "format_version": EXPORT_VERSION, "export_format": fmt,
              "source": os.path.abspath(src), "method": art.meta.get("method"),
              "dataset": art.meta.get("dataset"), "num_classes": art.num_classes,
              "image_shape": list(art.x_syn_NHWC.shape[1:]), "num_images": len(y_hard),
              "label_kind": art.meta.get("label_kind"), "lr": art.lr,
              "preprocess": art.preprocess.kind}

    def fill(tmp: str) -> None:
        files = []
        if fmt == "png":
            from PIL import Image
            px = pixels_uint8(art)
            for i, (im, k) in enumerate(zip(px, y_hard)):
                rel = os.path.join(_class_dir(int(k), class_names), f"{i}.png")
                os.makedirs(os.path.join(tmp, os.path.dirname(rel)), exist_ok=True)
                Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im).save(
                    os.path.join(tmp, rel))
                files.append(rel)
            safeio.write_json(os.path.join(tmp, "labels.json"), {
                "files": files, "labels": y_hard.tolist(),
                "logits": None if logits is None else logits.tolist(), "lr": art.lr})
            files.append("labels.json")
        elif fmt == "npz":
            arrays = {"x": jdata.invert(art.preprocess, art.x_syn_NHWC, clip=True).astype(
                np.float32), "y": y_hard, "x_model_NHWC": art.x_syn_NHWC,
                **{f"pre_{k}": v for k, v in jdata.to_dict(art.preprocess).items()}}
            if logits is not None:
                arrays["logits"] = logits
            if art.lr is not None:
                arrays["lr"] = np.float64(art.lr)
            safeio.savez(os.path.join(tmp, NPZ_NAME), **arrays)
            files.append(NPZ_NAME)
        else:
            x = torch.from_numpy(np.ascontiguousarray(art.x_syn_NHWC.transpose(0, 3, 1, 2)))
            y = torch.from_numpy(y_hard if logits is None else logits)
            torch.save(x, os.path.join(tmp, TORCH_FILES[0]))
            torch.save(y, os.path.join(tmp, TORCH_FILES[1]))
            files += TORCH_FILES[:2]
            if art.lr is not None:
                torch.save(torch.tensor(art.lr, dtype=torch.float64),
                           os.path.join(tmp, TORCH_FILES[2]))
                files.append(TORCH_FILES[2])
        safeio.write_json(os.path.join(tmp, MARKER), {**marker, "files": files})

    safeio.write_dir(out, fill, replace=replace, prefix="export")
    return {"out": out, "format": fmt, "num_images": len(y_hard)}


# ---------------------------------------------------------------------------------------
# Reading


def _read_marker(path: str) -> dict[str, Any] | None:
    marker = os.path.join(path, MARKER)
    if not os.path.isfile(marker):
        return None
    return safeio.read_versioned_json(marker, EXPORT_FORMAT, EXPORT_VERSION, ValueError, "")


def detect_format(src: str) -> str:
    """png | npz | torch of an import source (a file or directory)."""
    if os.path.isdir(src):
        marker = _read_marker(src)
        if marker:
            return marker["export_format"]
        if os.path.isfile(os.path.join(src, NPZ_NAME)):
            return "npz"
        if os.path.isfile(os.path.join(src, TORCH_FILES[0])):
            return "torch"
        return "png"
    if src.endswith(".npz"):
        return "npz"
    if src.endswith((".pt", ".pth")):
        return "torch"
    if not os.path.exists(src):
        raise ValueError(f"{src}: no such file or directory")
    raise ValueError(f"cannot tell the format of {src}; pass --format png|npz|torch")


def _png_class(folder: str, class_names: list[str]) -> int | None:
    """Class index of a folder named `<k>_<name>`, `<k>` or a class name of the dataset."""
    head = folder.split("_", 1)[0]
    if head.isdigit():
        return int(head)
    return class_names.index(folder) if folder in class_names else None


def read_png(src: str, class_names: list[str]) -> ImportedSet:
    if not os.path.isdir(src):
        raise ValueError(f"{src}: no such directory of class folders")
    marker = _read_marker(src)
    labels_path = os.path.join(src, "labels.json")
    if marker and os.path.isfile(labels_path):
        with open(labels_path) as f:
            lab = json.load(f)
        paths = [os.path.join(src, p) for p in lab["files"]]
        x = sources._read_images(paths, src)
        y = np.asarray(lab["labels"], np.int64)
        if lab.get("logits") is not None:
            y = np.asarray(lab["logits"], np.float32)
        return ImportedSet(x, y, lab.get("lr"), False, None, marker.get("preprocess"))
    listing = {c: ps for c, ps in sources._list_classes(src).items() if ps}
    if not listing:
        raise ValueError(f"{src}: expected class folders of images (<class>/*.png)")
    ks = [_png_class(c, class_names) for c in listing]
    if None in ks:  # folder names that are not class indices / names: sorted order
        if len(listing) > len(class_names):
            raise ValueError(f"{src} has {len(listing)} class folders but the dataset has "
                             f"{len(class_names)} classes")
        ks = list(range(len(listing)))
    paths = [p for ps in listing.values() for p in ps]
    y = np.array([k for k, ps in zip(ks, listing.values()) for _ in ps], np.int64)
    return ImportedSet(sources._read_images(paths, src), y, None, False, None, None)


def read_npz(src: str) -> ImportedSet:
    path = os.path.join(src, NPZ_NAME) if os.path.isdir(src) else src
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read {path} as an npz of arrays ({e})") from None
    if "x" not in arrays or "y" not in arrays:
        raise ValueError(f"{path} needs arrays x (N,H,W[,C]) and y (N,); it holds "
                         f"{sorted(arrays) or 'nothing'}")
    lr = float(arrays["lr"]) if "lr" in arrays else None
    y = arrays["logits"] if "logits" in arrays else arrays["y"]
    pre_d = {k[4:]: v for k, v in arrays.items() if k.startswith("pre_")}
    if "x_model_NHWC" in arrays and pre_d:
        pre = jdata.from_dict(pre_d)
        return ImportedSet(arrays["x_model_NHWC"], y, lr, True, pre, pre.kind)
    x = arrays["x"]
    x = x[..., None] if x.ndim == 3 else x
    return ImportedSet(x, y, lr, False, None, None)


def _load_tensor(torch, path: str, what: str):
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the one line is ours
            warnings.simplefilter("ignore")
            t = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad pickle
        text = str(e).strip() or type(e).__name__
        tail = text.split("WeightsUnpickler error:", 1)[-1]  # torch's reason, if it gave one
        reason = next(ln.strip() for ln in (*tail.splitlines(), text) if ln.strip())
        raise ValueError(f"{what} {path} is not a file of tensors: torch.load(weights_only="
                         f"True) refused it ({reason[:160]})") from None
    if isinstance(t, (int, float)) and what == "--lr":
        return np.float64(t)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what} {path} holds a {type(t).__name__}, not a tensor")
    return t.detach().cpu().numpy()


def read_torch(images: str, labels: str, lr: str | None) -> ImportedSet:
    torch = _torch()
    x = _load_tensor(torch, images, "--images")
    y = _load_tensor(torch, labels, "--labels")
    lr_v = None
    if lr is not None:
        lr_a = np.asarray(_load_tensor(torch, lr, "--lr"))
        if lr_a.size != 1:
            raise ValueError(f"--lr {lr} holds {lr_a.size} values, expected one learning rate")
        lr_v = float(lr_a.reshape(()))
    if x.ndim != 4:
        raise ValueError(f"--images {images} has shape {tuple(x.shape)}; expected (N, C, H, W)")
    return ImportedSet(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), y, lr_v, True, None, None)


def read(src: str | None, fmt: str | None, class_names: list[str], *,
         images: str | None = None, labels: str | None = None,
         lr: str | None = None) -> tuple[str, ImportedSet]:
    """(format, set) of an import source; .pt files by --images/--labels or in `src`."""
    if src is None and images is None:
        raise ValueError("give a source (directory, npz or image folder) or --images/--labels")
    fmt = fmt or ("torch" if images else detect_format(src))
    if fmt == "torch":
        if images is None:
            if src is None or not os.path.isdir(src):
                raise ValueError("torch import needs --images images.pt --labels labels.pt")
            images, labels = (os.path.join(src, f) for f in TORCH_FILES[:2])
            lr_default = os.path.join(src, TORCH_FILES[2])
            lr = lr or (lr_default if os.path.isfile(lr_default) else None)
        if labels is None:
            raise ValueError("--images needs --labels labels.pt")
        marker = _read_marker(src) if src and os.path.isdir(src) else None
        s = read_torch(images, labels, lr)
        return fmt, s._replace(preprocess_kind=marker.get("preprocess") if marker else None)
    if fmt == "npz":
        return fmt, read_npz(src)
    if fmt == "png":
        return fmt, read_png(src, class_names)
    raise ValueError(f"unknown import format {fmt!r}; use one of {', '.join(FORMATS)}")


# ---------------------------------------------------------------------------------------
# Checks and the artefact


def check_set(s: ImportedSet, image_shape: tuple[int, ...], num_classes: int,
              what: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) checked against the dataset: shape (H, W, C), labels in range or
    K logits; pixel-space images become uint8."""
    x, y = s.x_NHWC, np.asarray(s.y)
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
        raise ValueError(f"{what}: images have shape {tuple(x.shape)}, the dataset needs "
                         f"(N, {', '.join(map(str, image_shape))})" + (
                             " (NCHW for .pt)" if s.model_space else ""))
    if len(y) != len(x):
        raise ValueError(f"{what}: {len(x)} images but {len(y)} labels")
    if y.ndim == 2:
        if y.shape[1] != num_classes or not np.issubdtype(y.dtype, np.floating):
            raise ValueError(f"{what}: label logits have shape {y.shape} ({y.dtype}), the "
                             f"dataset has {num_classes} classes")
        y = y.astype(np.float32)
    elif y.ndim == 1 and (np.issubdtype(y.dtype, np.integer)
                          or (y.size and np.all(y == np.round(y)))):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise ValueError(f"{what}: labels lie in [{int(y.min())}, {int(y.max())}], the "
                             f"dataset has {num_classes} classes (0..{num_classes - 1})")
        y = y.astype(np.int32)
    else:
        raise ValueError(f"{what}: labels have shape {y.shape} ({y.dtype}); expected (N,) "
                         f"integer classes or (N, {num_classes}) logits")
    if s.model_space:
        x = np.asarray(x, np.float32)
        if not np.isfinite(x).all():
            raise ValueError(f"{what}: the images contain NaN/inf")
        return x, y
    return sources._as_uint8_nhwc(x, what), y
