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
- `tfds`: a TFDS dataset `jaxdd_set` (ArrayRecord, split `train`, example i = image i) with
  OUT as its data_dir: features `image` (H,W,C) uint8 pixels as `png`, `label` (ClassLabel,
  the hard label), `logits` (K,) float32 when the artefact has soft labels; lr and the
  preprocessing kind in its metadata. Read it without TensorFlow with
  `tfds.builder_from_directory(OUT/jaxdd_set/1.0.0).as_data_source("train")` or
  `tfds.data_source("jaxdd_set", data_dir=OUT, split="train")`.
- `hf`: a Hugging Face `datasets.Dataset` saved with `save_to_disk(OUT)`: `image`
  (datasets.Image, the same 8-bit pixels), `label` (ClassLabel), `logits` (K floats) when
  soft; `datasets.load_from_disk(OUT)` reads it. Needs `datasets` (`jaxdd[hf]`).

Import (`jaxdd import SRC --dataset NAME --out ART`): SRC is an export directory, an image
folder (`class_dir/*.png`), an npz (ours, or `x` (N,H,W[,C]) uint8 / float in [0, 1] and
`y`), a TFDS dataset directory or a `save_to_disk` directory of `datasets` (ours, or any
with an image and a class-label feature), or `.pt` files (`--images images.pt --labels labels.pt [--lr lr.pt]`, read with
`torch.load(weights_only=True)`: a pickle of anything but tensors is refused). Shapes and
class counts are checked against the dataset; images in pixel space are preprocessed with
the dataset's preprocessing fitted on its training split (as `jaxdd baseline` does), images
in model space (`.pt`, `x_model_NHWC`) are taken as they are. Nothing is written on error.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import shutil
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

from jaxdd import artefact, safeio
from jaxdd import data as jdata
from jaxdd.data import sources

FORMATS = ("png", "npz", "torch", "tfds", "hf")
PIXEL_FORMATS = ("png", "tfds", "hf")  # 8-bit pixel space: the `png` round-trip contract
EXPORT_FORMAT = "jaxdd-export"
EXPORT_VERSION = 1
MARKER = "export.json"
NPZ_NAME = "set.npz"
TORCH_FILES = ("images.pt", "labels.pt", "lr.pt")
TFDS_NAME = "jaxdd_set"
TFDS_VERSION = "1.0.0"


class ImportedSet(NamedTuple):
    x_NHWC: np.ndarray            # model space if `model_space`, else pixel uint8 / [0, 1]
    y: np.ndarray                 # (N,) int or (N, K) logits
    lr: float | None
    model_space: bool
    preprocess: jdata.Preprocess | None  # carried by the source (our npz), else None
    preprocess_kind: str | None  # recorded by our export (default for --preprocess)


def torch_module():
    """torch, or a one-line error saying how to install it."""
    try:
        import torch
    except ImportError:
        raise RuntimeError("torch is not installed: pip install 'jaxdd[torch]'") from None
    return torch


def _hf_datasets():
    try:
        import datasets
    except ImportError:
        raise RuntimeError("Hugging Face datasets is not installed: pip install 'jaxdd[hf]'"
                           ) from None
    return datasets


@contextlib.contextmanager
def _quiet_libraries():
    """TFDS and datasets print progress bars and banners; an export or import is one line."""
    from tensorflow_datasets.core.utils import tqdm_utils
    tfds_bars = tqdm_utils._active
    tqdm_utils.display_progress_bar(False)
    hf = sys.modules.get("datasets")  # only if in use (importing it costs a second)
    hf_bars = hf is not None and not hf.are_progress_bars_disabled()
    if hf_bars:
        hf.disable_progress_bars()
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        tqdm_utils.display_progress_bar(tfds_bars)
        if hf_bars:
            hf.enable_progress_bars()


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
    torch = torch_module() if fmt == "torch" else None
    if fmt == "hf":
        _hf_datasets()
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
        elif fmt in ("tfds", "hf"):
            write = _write_tfds if fmt == "tfds" else _write_hf
            files += write(tmp, pixels_uint8(art), y_hard, logits, art.num_classes,
                           class_names, {"lr": art.lr, "preprocess": art.preprocess.kind})
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


def _label_names(num_classes: int, class_names: list[str] | None) -> list[str]:
    if class_names and len(class_names) == num_classes:
        return [str(n) for n in class_names]
    return [str(k) for k in range(num_classes)]


def _write_tfds(tmp: str, px_NHWC: np.ndarray, y: np.ndarray, logits: np.ndarray | None,
                num_classes: int, class_names: list[str] | None, meta: dict) -> list[str]:
    """`tmp` becomes the data_dir of the TFDS dataset `jaxdd_set` (ArrayRecord)."""
    import tensorflow_datasets as tfds
    spec = {"image": tfds.features.Tensor(shape=px_NHWC.shape[1:], dtype=np.uint8),
            "label": tfds.features.ClassLabel(names=_label_names(num_classes, class_names))}
    if logits is not None:
        spec["logits"] = tfds.features.Tensor(shape=(num_classes,), dtype=np.float32)

    def examples():
        for i in range(len(y)):
            ex = {"image": px_NHWC[i], "label": int(y[i])}
            if logits is not None:
                ex["logits"] = logits[i]
            yield i, ex

    builder = _tfds_builder_class()(examples=examples, features=tfds.features.FeaturesDict(spec),
                                    meta=meta, data_dir=tmp, file_format="array_record")
    with _quiet_libraries():
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
            try_download_gcs=False))
    downloads = os.path.join(tmp, "downloads")  # TFDS makes it; nothing was downloaded
    if os.path.isdir(downloads) and not any(f for _, _, f in os.walk(downloads)):
        shutil.rmtree(downloads)
    root = os.path.join(tmp, TFDS_NAME, TFDS_VERSION)
    return sorted(os.path.relpath(os.path.join(root, f), tmp) for f in os.listdir(root))


@functools.cache
def _tfds_builder_class():
    """The builder of `jaxdd_set`: writes the given examples (TFDS's AdhocBuilder needs
    TensorFlow; a GeneratorBasedBuilder does not)."""
    import tensorflow_datasets as tfds

    class JaxddSet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
        name = TFDS_NAME
        VERSION = tfds.core.Version(TFDS_VERSION)
        RELEASE_NOTES = {TFDS_VERSION: "A distilled set exported by jaxdd."}

        def __init__(self, *, examples, features, meta, **kwargs):
            self._examples, self._features, self._meta = examples, features, meta
            super().__init__(**kwargs)

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self, description="A distilled set exported by jaxdd (jaxdd export "
                "--format tfds); image = 8-bit pixels, label = hard label, logits = soft "
                "labels if any.", features=self._features, supervised_keys=("image", "label"),
                disable_shuffling=True, metadata=tfds.core.MetadataDict(self._meta))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            yield from self._examples()

    return JaxddSet


def _write_hf(tmp: str, px_NHWC: np.ndarray, y: np.ndarray, logits: np.ndarray | None,
              num_classes: int, class_names: list[str] | None, meta: dict) -> list[str]:
    """`tmp` holds a `datasets.Dataset` written by `save_to_disk`."""
    datasets = _hf_datasets()
    from PIL import Image
    spec = {"image": datasets.Image(),
            "label": datasets.ClassLabel(names=_label_names(num_classes, class_names))}
    cols = {"image": [Image.fromarray(im[..., 0] if im.shape[-1] == 1 else im)
                      for im in px_NHWC], "label": [int(k) for k in y]}
    if logits is not None:
        spec["logits"] = datasets.Sequence(datasets.Value("float32"), length=num_classes)
        cols["logits"] = [row for row in logits]
    features = datasets.Features(spec)
    info = datasets.DatasetInfo(
        description=f"A distilled set exported by jaxdd (jaxdd export --format hf): {meta}",
        features=features)
    with _quiet_libraries():
        datasets.Dataset.from_dict(cols, features=features, info=info).save_to_disk(tmp)
    return sorted(os.listdir(tmp))


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
        if os.path.isfile(os.path.join(src, "state.json")) and os.path.isfile(
                os.path.join(src, "dataset_info.json")):
            return "hf"
        if _tfds_dirs(src):
            return "tfds"
        return "png"
    if src.endswith(".npz"):
        return "npz"
    if src.endswith((".pt", ".pth")):
        return "torch"
    if not os.path.exists(src):
        raise ValueError(f"{src}: no such file or directory")
    raise ValueError(f"cannot tell the format of {src}; pass --format {'|'.join(FORMATS)}")


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


def _tfds_dirs(src: str) -> list[str]:
    """TFDS dataset version directories at `src`: itself, or <name>/<version>/ below it."""
    def is_version(d):
        return all(os.path.isfile(os.path.join(d, f)) for f in ("dataset_info.json",
                                                                 "features.json"))
    if is_version(src):
        return [src]
    found = []
    for name in sorted(os.listdir(src)):
        d = os.path.join(src, name)
        if os.path.isdir(d):
            found += [os.path.join(d, v) for v in sorted(os.listdir(d))
                      if is_version(os.path.join(d, v))]
    return found


def _image_label_keys(features: dict, kind_image, kind_label, what: str) -> tuple[str, str]:
    """The image and class-label feature names: `image` / `label`, else the only ones."""
    def pick(default, kind, role):
        if default in features:
            return default
        keys = [k for k, f in features.items() if isinstance(f, kind)]
        if len(keys) != 1:
            raise ValueError(f"{what}: cannot tell the {role} feature among "
                             f"{sorted(features)}; name it {default!r}")
        return keys[0]
    return pick("image", kind_image, "image"), pick("label", kind_label, "label")


def read_tfds(src: str) -> ImportedSet:
    """A TFDS dataset directory (ours, or any with an image and a class-label feature);
    its `train` split, read through an ArrayRecord data source (no TensorFlow)."""
    import tensorflow_datasets as tfds
    dirs = _tfds_dirs(src) if os.path.isdir(src) else []
    if len(dirs) != 1:
        raise ValueError(f"{src}: expected one TFDS dataset directory (<name>/<version>/ "
                         f"with dataset_info.json), found {len(dirs)}")
    try:
        with _quiet_libraries():
            builder = tfds.builder_from_directory(dirs[0])
            splits = list(builder.info.splits)
            split = "train" if "train" in splits else splits[0]
            source = builder.as_data_source(split=split)
    except Exception as e:  # noqa: BLE001 - TFDS raises many kinds for a bad directory
        raise ValueError(f"{src}: cannot read the TFDS dataset {dirs[0]} ({type(e).__name__}: "
                         f"{str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}); "
                         f"it needs ArrayRecord files") from None
    features = dict(builder.info.features)
    ik, lk = _image_label_keys(features, (tfds.features.Tensor, tfds.features.Image),
                               tfds.features.ClassLabel, src)
    rows = [source[i] for i in range(len(source))]
    x = np.stack([np.asarray(r[ik]) for r in rows]) if rows else np.zeros((0, 1, 1, 1), np.uint8)
    y = np.asarray([r[lk] for r in rows], np.int64)
    if "logits" in features and rows:
        y = np.stack([np.asarray(r["logits"], np.float32) for r in rows])
    meta = dict(builder.info.metadata or {})
    marker = _read_marker(src) if os.path.isdir(src) else None
    return ImportedSet(x, y, meta.get("lr"), False, None,
                       (marker or {}).get("preprocess") or meta.get("preprocess"))


def read_hf(src: str) -> ImportedSet:
    """A `datasets.Dataset` saved with `save_to_disk` (ours, or any with an image and a
    class-label column)."""
    datasets = _hf_datasets()
    try:
        with _quiet_libraries():
            ds = datasets.load_from_disk(src)
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds
        raise ValueError(f"{src}: cannot read it with datasets.load_from_disk "
                         f"({type(e).__name__}: {str(e).strip()[:200]})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds["train"] if "train" in ds else ds[sorted(ds)[0]]
    ik, lk = _image_label_keys(dict(ds.features), datasets.Image, datasets.ClassLabel, src)
    images = [np.asarray(im) for im in ds[ik]]
    x = np.stack([im[..., None] if im.ndim == 2 else im for im in images]) if images else (
        np.zeros((0, 1, 1, 1), np.uint8))
    y = np.asarray(ds[lk], np.int64)
    if "logits" in ds.features and len(ds):
        y = np.asarray(ds["logits"], np.float32)
    marker = _read_marker(src)
    return ImportedSet(x, y, (marker or {}).get("lr"), False, None,
                       (marker or {}).get("preprocess"))


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


def torch_load(torch, path: str, what: str) -> Any:
    """`torch.load(path, weights_only=True)` on the CPU: tensors and plain containers only;
    any other pickle (code, objects) is refused with one line naming `what` and the file."""
    try:
        with warnings.catch_warnings():  # e.g. "pickle protocol 4": the one line is ours
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"{what} {path}: no such file") from None
    except Exception as e:  # noqa: BLE001 - torch raises many kinds for a bad pickle
        text = str(e).strip() or type(e).__name__
        tail = text.split("WeightsUnpickler error:", 1)[-1]  # torch's reason, if it gave one
        reason = next(ln.strip() for ln in (*tail.splitlines(), text) if ln.strip())
        raise ValueError(f"{what} {path} is not a file of tensors: torch.load(weights_only="
                         f"True) refused it ({reason[:160]})") from None


def _load_tensor(torch, path: str, what: str):
    t = torch_load(torch, path, what)
    if isinstance(t, (int, float)) and what == "--lr":
        return np.float64(t)
    if not isinstance(t, torch.Tensor):
        raise ValueError(f"{what} {path} holds a {type(t).__name__}, not a tensor")
    return t.detach().cpu().numpy()


def read_torch(images: str, labels: str, lr: str | None) -> ImportedSet:
    torch = torch_module()
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
    if fmt in ("tfds", "hf"):
        if src is None or not os.path.isdir(src):
            raise ValueError(f"{fmt} import needs a directory, got {src}")
        return fmt, (read_tfds if fmt == "tfds" else read_hf)(src)
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
