"""Soft labels for the student (relabel stage of statistics matching): the teacher's, online
or stored (`relabel`), or a fitted low-rank projector's (`projector`, HeLlO)."""

from jaxdd.labels.relabel import (LABEL_DTYPES, AugParams, RelabelConfig, StoredLabels,
                                  apply_aug, aug_params, dequantise_rows, ensemble_logits,
                                  estimate_label_bytes, generate_labels, kd_loss, label_bytes,
                                  load_labels, online_labels, quantise_rows, replay_epoch,
                                  save_labels, stored_epochs, target_logits, target_probs,
                                  teacher_labels, train_student)

__all__ = ["LABEL_DTYPES", "AugParams", "RelabelConfig", "StoredLabels", "apply_aug",
           "aug_params", "dequantise_rows", "ensemble_logits", "estimate_label_bytes",
           "generate_labels", "kd_loss", "label_bytes", "load_labels", "online_labels",
           "quantise_rows", "replay_epoch", "save_labels", "stored_epochs", "target_logits",
           "target_probs", "teacher_labels", "train_student"]
