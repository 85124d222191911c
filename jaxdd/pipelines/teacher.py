"""The stages the statistics-matching pipelines (`sre2l`, `rded`) share before their own:
the run-directory guard (OUT/run.json) and the teacher (the config's directory, trained
there when missing, checked against the dataset)."""

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

__all__ = ["image_config", "check_run_dir", "teacher_dir", "teacher_config",
           "teacher_ready", "ensure_teacher", "check_compatible"]


def image_config(cfg: dict) -> dict:
    """The config parts that determine the images: all but the relabel and eval sections."""
    return {k: v for k, v in cfg.items() if k not in ("relabel", "eval")}


def check_run_dir(out_dir: str, cfg: dict) -> None:
    """Write OUT/run.json, or refuse an OUT started with another (image-determining) config."""
    safeio.claim_run(out_dir, image_config(cfg))


def teacher_dir(cfg: dict) -> str:
    """The config's teacher directory; default runs/teachers/<dataset>-<model>-<pre>-s<seed>."""
    t = cfg.get("teacher", {})
    if t.get("dir"):
        return t["dir"]
    tag = f"{cfg['dataset'].replace('/', '_').replace(':', '_')}-{t['model']}-{cfg.get('preprocess', 'normalize')}"
    if cfg.get("image_size") is not None:
        tag += f"-{int(cfg['image_size'])}px"
    return os.path.join(os.environ.get("JAXDD_TEACHERS", "runs/teachers"),
                        f"{tag}-s{cfg.get('seed', 0)}")


def teacher_config(cfg: dict) -> jteachers.TeacherConfig:
    """TeacherConfig from the config's `teacher` section (without model, dir, train_if_missing)."""
    t = {k: v for k, v in cfg.get("teacher", {}).items() if k not in TEACHER_KEYS}
    return dataclass_from(jteachers.TeacherConfig, t)


def teacher_ready(cfg: dict) -> bool:
    """Whether the config's teacher directory holds every teacher it needs."""
    return jteachers.is_complete(teacher_dir(cfg), teacher_config(cfg).num_teachers)


def ensure_teacher(cfg: dict, ds: jdata.Dataset | StreamedDataset | None, quiet: bool = False,
                   mesh=None) -> tuple[str, float]:
    """(teacher dir, seconds spent training now): a complete directory is used as it is
    (`ds` may then be None); a streamed `ds` trains data-parallel on `mesh`."""
    path = teacher_dir(cfg)
    tcfg = teacher_config(cfg)
    if jteachers.is_complete(path, tcfg.num_teachers):
        return path, 0.0
    if not cfg.get("teacher", {}).get("train_if_missing", True):
        raise jteachers.TeacherError(
            f"no complete teacher at {path} and this preset does not train one (teacher."
            f"train_if_missing=False); point teacher.dir at a converted pretrained teacher")
    t0 = time.time()
    jteachers.train_teachers(path, ds, cfg["teacher"]["model"], tcfg, int(cfg.get("seed", 0)),
                             preprocess=cfg.get("preprocess", "normalize"),
                             progress_cb=Progress("teacher", enabled=not quiet), mesh=mesh)
    return path, round(time.time() - t0, 2)


def check_compatible(man: dict, dataset: str, num_classes: int, shape) -> None:
    """Refuse a teacher (manifest `man`) trained on another dataset, class count or shape."""
    if man["dataset"] != dataset or int(man["num_classes"]) != num_classes or \
            tuple(man["input_shape"]) != tuple(shape):
        raise ValueError(f"teacher was trained on {man['dataset']} ({man['num_classes']} classes, "
                         f"{tuple(man['input_shape'])}), not on {dataset} ({num_classes} classes, "
                         f"{tuple(shape)}); use a teacher of the same dataset")
