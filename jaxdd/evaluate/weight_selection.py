"""Weight selection (Xu et al., ICLR 2024, "Initializing Models with Larger Ones"): start a
small student from weights selected out of a larger pretrained network of the same family.

Implemented for the ConvNet family (`convnet_dD_wW[_bn|_none]`), teacher depth >= student
depth and teacher width >= student width, same normalisation, classes and input channels:

* layer selection, first-N: student block d (conv, norm) takes teacher block d, d < D_s;
* element selection, uniform and consistent: in every tensor the student keeps the teacher's
  channels idx_i = floor(i W_t / W_s), i < W_s (evenly spaced; the identity when W_t = W_s),
  the same indices on a layer's output axis and on the next layer's input axis, in the norm's
  affine parameters and BatchNorm statistics, and on the classifier's input channels, so
  the selected channels stay connected as in the teacher;
* the classifier is selected when the two nets pool to the same grid (same depth); a
  shallower student's flattened features have another grid, so its classifier keeps its own
  fresh init (reported as `head: "fresh"`).

`select_weights` is pure on pytrees (tests: same shape -> identity; shapes match the
student); `from_teacher_dir` reads a jaxdd teacher directory (`jaxdd teacher`).
"""

from __future__ import annotations

import jax
import numpy as np

from jaxdd.models import Model, Variables
from jaxdd.models.convnet import ConvNet

PREFIX = "weight-selection:"


def parse_init(spec: str | None) -> str | None:
    """'weight-selection:DIR' -> DIR; None -> None; anything else: a one-line error."""
    if spec is None:
        return None
    if not spec.startswith(PREFIX) or not spec[len(PREFIX):]:
        raise ValueError(f"unknown --init {spec!r}; use {PREFIX}TEACHER_DIR (a jaxdd teacher "
                         f"directory of a larger ConvNet)")
    return spec[len(PREFIX):]


def uniform_indices(n_teacher: int, n_student: int) -> np.ndarray:
    """Evenly spaced indices floor(i n_t / n_s), i < n_s (identity when equal)."""
    return (np.arange(n_student) * n_teacher) // n_student


def check_pair(teacher: Model, student: Model) -> None:
    """One-line error for a (teacher, student) pair weight selection does not support."""
    t, s = teacher.module, student.module
    if not (isinstance(t, ConvNet) and isinstance(s, ConvNet)):
        raise ValueError(f"weight selection supports the ConvNet family (convnet_dD_wW"
                         f"[_bn|_none]); got teacher {teacher.name!r}, student {student.name!r}")
    problems = [
        (t.depth < s.depth, f"teacher depth {t.depth} < student depth {s.depth}"),
        (t.width < s.width, f"teacher width {t.width} < student width {s.width}"),
        (t.norm != s.norm, f"teacher norm {t.norm} != student norm {s.norm} (e.g. evaluate "
                           f"with --model convnet_d{s.depth}_w{s.width}"
                           f"{'_bn' if t.norm == 'batch' else '' if t.norm == 'instance' else '_none'})"),
        (teacher.num_classes != student.num_classes,
         f"teacher has {teacher.num_classes} classes, the student {student.num_classes}"),
        (tuple(teacher.input_shape) != tuple(student.input_shape),
         f"teacher input {tuple(teacher.input_shape)} != student input "
         f"{tuple(student.input_shape)}"),
    ]
    for bad, why in problems:
        if bad:
            raise ValueError(f"cannot select {student.name!r} from teacher {teacher.name!r}: {why}")


def select_weights(teacher: Model, teacher_vars: Variables, student: Model,
                   student_init: Variables) -> tuple[Variables, str]:
    """(student variables selected from the teacher's, "teacher" | "fresh": the classifier's
    source). `student_init` gives the structure and, for a fresh classifier, its weights."""
    check_pair(teacher, student)
    t, s = teacher.module, student.module
    idx = uniform_indices(t.width, s.width)
    out = jax.tree.map(np.asarray, student_init)
    tv = jax.tree.map(np.asarray, teacher_vars)
    for d in range(s.depth):
        conv_t = tv["params"][f"Conv3x3_{d}"]
        cin = slice(None) if d == 0 else idx
        out["params"][f"Conv3x3_{d}"] = {"kernel": conv_t["kernel"][:, :, cin][..., idx],
                                          "bias": conv_t["bias"][idx]}
        norm = {"instance": "InstanceNorm", "batch": "BatchNorm"}.get(s.norm)
        if norm is not None:
            for col in out:   # params (scale, bias) and, for BN, batch_stats (mean, var)
                out[col][f"{norm}_{d}"] = {k: v[idx] for k, v in tv[col][f"{norm}_{d}"].items()}
    head = "fresh"
    if t.depth == s.depth:   # the same pooled grid: select the classifier's input channels
        dense_t = tv["params"]["TorchDense_0"]["Dense_0"]
        k_DxK = dense_t["kernel"]
        k_HWCxK = k_DxK.reshape(-1, t.width, k_DxK.shape[-1])[:, idx]
        out["params"]["TorchDense_0"] = {"Dense_0": {
            "kernel": k_HWCxK.reshape(-1, k_DxK.shape[-1]), "bias": dense_t["bias"]}}
        head = "teacher"
    return jax.tree.map(np.asarray, out), head


def from_teacher_dir(teacher_dir: str, student: Model, key: jax.Array, *, dataset: str,
                     preprocess_kind: str) -> tuple[Variables, dict]:
    """Weight selection from teacher 0 of a jaxdd teacher directory; (variables, info).
    The teacher must come from the same dataset and preprocessing as the set."""
    from jaxdd.population.teachers import load_teacher
    teacher, tvars, pre, man = load_teacher(teacher_dir)
    if man["dataset"] != dataset:
        raise ValueError(f"teacher {teacher_dir} was trained on {man['dataset']}, the set comes "
                         f"from {dataset}; weight selection needs a teacher of the same data")
    if pre.kind != preprocess_kind:
        raise ValueError(f"teacher {teacher_dir} uses {pre.kind} preprocessing, the set "
                         f"{preprocess_kind}; use a teacher with the set's preprocessing")
    variables, head = select_weights(teacher, tvars, student, student.init(key))
    return variables, {"teacher": teacher_dir, "teacher_model": teacher.name, "head": head}
