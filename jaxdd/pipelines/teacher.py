"""The stages the statistics-matching pipelines (`sre2l`, `rded`) share before their own:
the run-directory guard (OUT/run.json) and the teacher (the config's directory, trained
there when missing, checked against the dataset).

`teacher.model` may be a list of architectures (G-VBSM's five): each is trained in its own
directory (`teacher_dirs`), with the section's recipe and `num_teachers` networks each.
`teacher.dir` is then None (the default directory of each model), one directory holding a
sub-directory per model, or a list with one directory per model."""

from __future__ import annotations

import os
import time

from jaxdd import data as jdata
from jaxdd import safeio
from jaxdd.data.stream import StreamedDataset
from jaxdd.pipelines.common import dataclass_from
from jaxdd.population import teachers as jteachers
from jaxdd.run.progress import Progress

TEACHER_KEYS = ("model", "dir", "train_if_missing")  # teacher-section keys outside TeacherConfig

__all__ = ["image_config", "check_run_dir", "teacher_models", "teacher_dirs", "teacher_dir",
           "teacher_config", "teacher_ready", "ensure_teachers", "ensure_teacher",
           "check_compatible"]


def image_config(cfg: dict) -> dict:
    """The config parts that determine the images: all but the relabel and eval sections."""
    return {k: v for k, v in cfg.items() if k not in ("relabel", "eval")}


def check_run_dir(out_dir: str, cfg: dict) -> None:
    """Write OUT/run.json, or refuse an OUT started with another (image-determining) config."""
    safeio.claim_run(out_dir, image_config(cfg))


def teacher_models(cfg: dict) -> list[str]:
    """The teacher architectures of the config (`teacher.model`: one name or a list)."""
    m = cfg.get("teacher", {}).get("model")
    models = [m] if isinstance(m, str) else list(m or [])
    if not models:
        raise ValueError("the teacher section names no model; set teacher.model")
    if len(set(models)) != len(models):
        raise ValueError(f"teacher.model lists an architecture twice ({models}); list each "
                         f"once and set teacher.num_teachers for several of one")
    return models


def _default_dir(cfg: dict, model: str) -> str:
    tag = f"{cfg['dataset'].replace('/', '_').replace(':', '_')}-{model}-{cfg.get('preprocess', 'normalize')}"
    if cfg.get("image_size") is not None:
        tag += f"-{int(cfg['image_size'])}px"
    return os.path.join(os.environ.get("JAXDD_TEACHERS", "runs/teachers"),
                        f"{tag}-s{cfg.get('seed', 0)}")


def teacher_dirs(cfg: dict) -> list[str]:
    """One directory per `teacher_models` entry: `teacher.dir` (a list: one per model; one
    path with several models: PATH/<model>), else runs/teachers/<dataset>-<model>-<pre>-s<seed>."""
    models = teacher_models(cfg)
    d = cfg.get("teacher", {}).get("dir")
    if not d:
        return [_default_dir(cfg, m) for m in models]
    if isinstance(d, str):
        return [d] if len(models) == 1 else [os.path.join(d, m) for m in models]
    if len(d) != len(models):
        raise ValueError(f"teacher.dir lists {len(d)} directories for {len(models)} models; "
                         f"give one per model (or one parent directory)")
    return list(d)


def teacher_dir(cfg: dict) -> str:
    """The first teacher directory (the only one with a single `teacher.model`)."""
    return teacher_dirs(cfg)[0]


def teacher_config(cfg: dict) -> jteachers.TeacherConfig:
    """TeacherConfig from the config's `teacher` section (without model, dir, train_if_missing)."""
    t = {k: v for k, v in cfg.get("teacher", {}).items() if k not in TEACHER_KEYS}
    return dataclass_from(jteachers.TeacherConfig, t)


def teacher_ready(cfg: dict) -> bool:
    """Whether every teacher directory of the config holds every teacher it needs."""
    n = teacher_config(cfg).num_teachers
    return all(jteachers.is_complete(d, n) for d in teacher_dirs(cfg))


def ensure_teachers(cfg: dict, ds: jdata.Dataset | StreamedDataset | None, quiet: bool = False,
                    mesh=None) -> tuple[list[str], float]:
    """(teacher dirs, seconds spent training now): complete directories are used as they
    are (`ds` may then be None), missing ones trained in `teacher_models` order (each
    resumable per epoch); a streamed `ds` trains data-parallel on `mesh`."""
    tcfg = teacher_config(cfg)
    seconds = 0.0
    paths = teacher_dirs(cfg)
    for model, path in zip(teacher_models(cfg), paths):
        if jteachers.is_complete(path, tcfg.num_teachers):
            continue
        if not cfg.get("teacher", {}).get("train_if_missing", True):
            raise jteachers.TeacherError(
                f"no complete teacher at {path} and this preset does not train one (teacher."
                f"train_if_missing=False); point teacher.dir at a converted pretrained teacher")
        t0 = time.time()
        jteachers.train_teachers(path, ds, model, tcfg, int(cfg.get("seed", 0)),
                                 preprocess=cfg.get("preprocess", "normalize"),
                                 progress_cb=Progress(f"teacher {model}", enabled=not quiet),
                                 mesh=mesh)
        seconds += time.time() - t0
    return paths, round(seconds, 2)


def ensure_teacher(cfg: dict, ds: jdata.Dataset | StreamedDataset | None, quiet: bool = False,
                   mesh=None) -> tuple[str, float]:
    """`ensure_teachers` for a config with one teacher architecture: (its dir, seconds)."""
    if len(teacher_models(cfg)) != 1:
        raise ValueError(f"this method uses one teacher architecture; teacher.model lists "
                         f"{teacher_models(cfg)}")
    paths, seconds = ensure_teachers(cfg, ds, quiet, mesh)
    return paths[0], seconds


def check_compatible(man: dict, dataset: str, num_classes: int, shape) -> None:
    """Refuse a teacher (manifest `man`) trained on another dataset, class count or shape."""
    if man["dataset"] != dataset or int(man["num_classes"]) != num_classes or \
            tuple(man["input_shape"]) != tuple(shape):
        raise ValueError(f"teacher was trained on {man['dataset']} ({man['num_classes']} classes, "
                         f"{tuple(man['input_shape'])}), not on {dataset} ({num_classes} classes, "
                         f"{tuple(shape)}); use a teacher of the same dataset")
