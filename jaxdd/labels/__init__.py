"""Soft labels for the student (relabel stage of statistics matching): the teacher's, online
or stored (`relabel`), or a fitted low-rank projector's (`projector`, HeLlO)."""

from jaxdd.labels.relabel import (AugParams, RelabelConfig, StoredLabels, apply_aug, aug_params,
                                  ensemble_logits, estimate_label_bytes, generate_labels,
                                  kd_loss, label_bytes, load_labels, online_labels, save_labels,
                                  teacher_labels, train_student)

__all__ = ["AugParams", "RelabelConfig", "StoredLabels", "apply_aug", "aug_params",
           "ensemble_logits", "estimate_label_bytes", "generate_labels", "kd_loss",
           "label_bytes", "load_labels", "online_labels", "save_labels", "teacher_labels",
           "train_student"]
