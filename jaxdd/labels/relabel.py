"""Relabel: train a student on the distilled images with the teacher's soft labels.

Every augmentation parameter of step s of epoch e (batch indices, crop boxes, pad-crop
offsets, flips, patch shuffles, the CutMix / MixUp permutation, box and lambda) is a pure
function of (key, e, s) — `aug_params`. Hence
"online" labels (the teacher labels each augmented batch on the fly, SRe2L's KD mode) and
"stored" labels (FKD style: `generate_labels` precomputes the teacher's logits for every
(e, s), saved as .npz) are the same numbers, and a student trained from either is the same
student. Both paths go through `_quantise`, so they agree bit for bit.

Soft-label compression (what `label_bytes` counts, array by array):
  top_k = k, top_k_rest "uniform" (FKD's "marginal smoothing"): store the k largest
      probabilities p_t = softmax(t / T) and their class indices; the target gives every
      other class (1 - sum of the k) / (K - k). "drop" (FKD's "marginal re-normalization"):
      store the k largest logits; the target is their softmax, the rest 0.
  label_dtype int8 / int4: each row's values as codes c in 0..L (L = 255 / 15; int4 two a
      byte) with a float16 offset o and step d per row, value = o + c d, |error| <= d / 2.
  label_epochs = M (label pruning): epoch e uses the augmentations of epoch e mod M (in
      `aug_params`), so only M epochs of labels exist and are replayed cyclically; the lr
      schedule still runs over every epoch.

"static" labels (INFER's val_static.py) are one teacher label per distilled image, taken
once on the clean image (`static_labels`, N x K): a batch's labels are those of its images,
mixed like the images (MixUp: lam t_b + (1 - lam) t_perm(b); CutMix: weighted by the
pasted area), so the labels take N K values instead of E N K.

Student loss (SRe2L `train_KD`/`relabel_cifar.py`: nn.KLDivLoss(reduction='batchmean') of
log_softmax(s / T) against softmax(t / T)):

    L = (T^2 if t2_factor else 1) * mean_b sum_k p_t,bk (log p_t,bk - log softmax(s_b / T)_k)   (2)

or, with loss="mse_ce", G-VBSM's "logit matching" (its train_FKD.py `mse_gt`: F.mse_loss of
the raw logits, i.e. the mean over batch and classes, plus ce_weight times the CE against the
image's own class label y_b, also under CutMix; its CIFAR-100 script sets ce_weight 0.15):

    L = mean_b [ mean_k (s_bk - t_bk)^2 + ce_weight * (-log softmax(s_b)_{y_b}) ]           (3)

Evaluation during training: `train_student_evals` runs the same steps in rounds of
`eval_every` epochs and calls an evaluation function after each round and after the last
epoch; the relabel pipeline uses it for best-vs-last reporting (RDED and G-VBSM report the
best test accuracy seen every 10 epochs — test-selected, hence optimistic).
`train_student_epochs` runs a segment of epochs resumed from a run's carry (variables,
optimiser state), for evaluations that cannot run inside the compiled loop (streamed test
data): segments give the same student as one run.

Facts carried from the references: SRe2L ImageNet KD: AdamW lr 1e-3, wd 0.01, cosine per
epoch, T = 20, no T^2, CutMix, RandomResizedCrop(0.08, 1) + flip; the CIFAR script
(SRe2L `small_dataset/relabel_cifar.py`) uses RandomCrop(32, padding 4) + flip per image
(`pad_crop`), MixUp(0.8) (`mixup_alpha`), T = 30, AdamW on all parameters
(`decay_norms_biases`), batch 128, 400 epochs (recipe `sre2l_cifar`), and never puts its
teacher in eval mode (its BN teacher labels with batch statistics — a quirk we do not copy:
the teacher here is always in inference mode). CutMix and MixUp mix the images only: the
teacher labels the mixed image, so no label mixing is needed. RDED's student at factor
f > 1 (validation/main.py:115-126) shuffles each image's f x f patches (`shuffle_patches`:
one permutation of the f column strips and one of the f row strips, as its ShufflePatches)
before a RandomResizedCrop of area (1/f, 1) and the flip.

Order of the augmentations: gather, patch shuffle, random-resized-crop, pad-crop, flip
(all per image), then CutMix or MixUp (per batch).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd import safeio
from jaxdd.augment.crops import crop_resize, pad_crop, sample_crop_box, shuffle_patches
from jaxdd.augment.cutmix import cutmix_box, paste_box
from jaxdd.augment.dsa import flip_horizontal
from jaxdd.models import Model, Variables
from jaxdd.train.loop import TrainConfig, make_optimizer, make_update, steps_per_epoch

__all__ = ["RelabelConfig", "AugParams", "StoredLabels", "LABEL_DTYPES", "aug_params",
           "apply_aug", "replay_epoch", "stored_epochs", "index_dtype", "quantise_rows",
           "dequantise_rows", "target_logits", "target_probs", "teacher_labels",
           "online_labels", "generate_labels", "static_labels", "mix_static", "kd_loss",
           "logit_match_loss", "student_loss",
           "ensemble_logits", "init_student", "train_student", "train_student_epochs",
           "train_student_evals", "eval_epochs",
           "label_bytes", "estimate_label_bytes", "save_labels", "load_labels"]

TeacherFn = Callable[[jax.Array], jax.Array]  # x_NHWC -> logits_BxK (inference mode)
LABEL_DTYPES = ("float16", "bfloat16", "float32", "int8", "int4")
CODE_LEVELS = {"int8": 255, "int4": 15}   # largest code of the integer label dtypes


@dataclasses.dataclass(frozen=True)
class RelabelConfig:
    """Defaults: SRe2L ImageNet-1K relabel/KD recipe (spec section 7)."""

    temperature: float = 20.0       # T in eq. (2) (SRe2L IN-1K 20; its CIFAR script 30)
    t2_factor: bool = False         # multiply eq. (2) by T^2 (Hinton KD); SRe2L: no
    crop_min_scale: float = 0.08    # RandomResizedCrop area lower bound; 1.0 with flip=False = none
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect-ratio range of the crop
    flip: bool = True               # horizontal flip, p = 0.5 per image
    cutmix_alpha: float = 1.0       # CutMix lambda ~ Beta(a, a), one box per batch; 0 = off
    label_dtype: str = "float16"    # precision of the stored values, stored and online alike:
                                    # float16 | bfloat16 | float32, or int8 | int4 (per-row
                                    # affine codes + a float16 offset and step per row)
    top_k: int = 0                  # keep only the k largest teacher outputs (0 = all K)
    top_k_rest: str = "uniform"     # the other K - k classes: uniform = 1 - (top-k mass) spread
                                    # evenly (FKD's marginal smoothing; stores probabilities at
                                    # T) | drop = zero (softmax over the k stored logits)
    label_epochs: int = 0           # M > 0: only M epochs of augmentations (and labels) exist;
                                    # epoch e replays epoch e mod M (label pruning); 0 = all
    lr_per_epoch: bool = True       # lr schedule stepped per epoch (torch scheduler) vs per step
    decay_norms_biases: bool = False  # weight decay on 1-D params too (references: no)
    loss: str = "kd"                # kd: eq. (2) | mse_ce: G-VBSM logit matching, eq. (3)
    ce_weight: float = 0.1          # weight of the CE term of eq. (3) (G-VBSM spec: 0.1)
    cosine_span: float = 1.0        # cosine lr covers this part of its half period: lr ends at
                                    # 0.5 (1 + cos(pi span)) x lr; RDED's scheduler: 0.5
    pad_crop: int = 0               # RandomCrop(size, padding=p) per image [px]; 0 = off
    pad_fill: tuple[float, ...] = ()  # pad-crop fill per channel in model space (a black
                                    # pixel: -mean/std); () = 0
    mixup_alpha: float = 0.0        # MixUp lambda ~ Beta(a, a), one per batch; 0 = off
    shuffle_patches: int = 1        # f: shuffle the f x f patches of each image (RDED); 1 = off

    def __post_init__(self):
        if self.label_dtype not in LABEL_DTYPES:
            raise ValueError(f"label_dtype={self.label_dtype!r}; use {', '.join(LABEL_DTYPES)}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = all classes), got {self.top_k}")
        if self.top_k_rest not in ("uniform", "drop"):
            raise ValueError(f"top_k_rest={self.top_k_rest!r}; use uniform (the rest of the "
                             f"probability spread evenly) or drop (zero)")
        if self.label_epochs < 0:
            raise ValueError(f"label_epochs must be >= 0 (0 = every epoch its own "
                             f"augmentations), got {self.label_epochs}")
        if self.temperature <= 0:
            raise ValueError("temperature must be > 0")
        if self.loss not in ("kd", "mse_ce"):
            raise ValueError(f"student loss {self.loss!r}; use kd or mse_ce")
        if self.loss == "mse_ce" and self.top_k:
            raise ValueError("loss mse_ce matches every teacher logit: it needs top_k = 0 "
                             "(the classes outside the top-k have no logit)")
        if not 0 < self.cosine_span <= 1:
            raise ValueError(f"cosine_span must be in (0, 1], got {self.cosine_span}")
        if self.pad_crop < 0:
            raise ValueError(f"pad_crop must be >= 0 pixels, got {self.pad_crop}")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError("cutmix_alpha and mixup_alpha must be >= 0 (0 = off)")
        if self.mixup_alpha > 0 and self.cutmix_alpha > 0:
            raise ValueError(f"cutmix_alpha={self.cutmix_alpha} and mixup_alpha="
                             f"{self.mixup_alpha}: use one mix (set the other to 0)")
        if self.shuffle_patches < 1:
            raise ValueError(f"shuffle_patches must be >= 1 (1 = off), got {self.shuffle_patches}")
        if not 0 < self.crop_min_scale <= 1:
            raise ValueError(f"crop_min_scale must be in (0, 1], got {self.crop_min_scale}")


class AugParams(NamedTuple):
    """Everything random about one student batch; a pure function of (key, epoch, step)."""

    idx_B: jax.Array        # int32 indices into the distilled set (padded with 0)
    mask_B: jax.Array       # 1 for real entries, 0 for padding of the last batch
    box_Bx4: jax.Array      # (y0, x0, h, w) crop per image
    flip_B: jax.Array       # bool
    mix_perm_B: jax.Array   # CutMix / MixUp partner of each image
    mix_box_4: jax.Array    # (y0, y1, x0, x1) int32 pasted region (empty when CutMix is off)
    pad_Bx2: jax.Array      # int32 pad-crop offsets (dy, dx) in [0, 2 pad] (pad: none)
    mix_lam: jax.Array      # MixUp weight of the image itself (1 when MixUp is off)
    patch_perm_Bx2xF: jax.Array  # int32 row-strip and column-strip permutations (identity: off)


class StoredLabels(NamedTuple):
    """The stored form of the teacher's labels of every stored (epoch, step), or without the
    leading (E, S) axes of one batch (what `teacher_labels` returns). E = `stored_epochs`.

    values: (E, S, B, k) teacher logits in label_dtype — with top_k and top_k_rest="uniform"
    the top-k probabilities at temperature T instead; for int8 / int4 uint8 codes of the
    per-row affine quantisation (int4: two codes a byte, (E, S, B, ceil(k / 2))).
    indices: (E, S, B, k) class indices in the narrowest unsigned type that holds K (uint8
    up to 256 classes) when top_k (else None, k = K). offset, step: (E, S, B) float16 of
    int8 / int4 (else None): value = offset + code * step."""

    values_ExSxBxk: jax.Array
    indices_ExSxBxk: jax.Array | None
    offset_ExSxB: jax.Array | None = None
    step_ExSxB: jax.Array | None = None


# ---------------------------------------------------------------------------------------
# Augmentation as a pure function of (key, epoch, step)


def aug_params(key: jax.Array, epoch: jax.Array | int, step: jax.Array | int, n: int,
               batch_size: int, image_hw: tuple[int, int], cfg: RelabelConfig) -> AugParams:
    """Batch `step` of epoch `epoch` over n images: order from fold_in(key, epoch), the rest
    from fold_in(fold_in(key, epoch), step + 1). With cfg.label_epochs = M > 0, epoch e is
    epoch e mod M (its augmentations, hence its labels, are replayed exactly)."""
    epoch = replay_epoch(epoch, cfg)
    h, w = image_hw
    bs = min(batch_size, n)
    spe = steps_per_epoch(n, bs)
    k_epoch = jax.random.fold_in(key, epoch)
    perm = jax.random.permutation(jax.random.fold_in(k_epoch, 0), n)
    pad = spe * bs - n
    order = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)])
    start = step * bs
    idx = jax.lax.dynamic_slice(order, (start,), (bs,)).astype(jnp.int32)
    mask = ((start + jnp.arange(bs)) < n).astype(jnp.float32)
    k_box, k_flip, k_perm, k_lam, k_cy, k_cx = jax.random.split(
        jax.random.fold_in(k_epoch, step + 1), 6)
    boxes = jax.vmap(lambda k: sample_crop_box(k, h, w, cfg.crop_min_scale, cfg.crop_ratio))(
        jax.random.split(k_box, bs))
    flip = (jax.random.bernoulli(k_flip, 0.5, (bs,)) if cfg.flip
            else jnp.zeros((bs,), jnp.bool_))
    mix_perm = jax.random.permutation(k_perm, bs).astype(jnp.int32)
    mix_box = (cutmix_box(k_lam, k_cy, k_cx, h, w, cfg.cutmix_alpha) if cfg.cutmix_alpha > 0
               else jnp.zeros((4,), jnp.int32))  # an empty box: no CutMix
    # Keys of the later options come from their own fold_in: the draws above (and so every
    # set of options without them) stay what they were.
    k_pad, k_mix, k_shuf = jax.random.split(
        jax.random.fold_in(jax.random.fold_in(k_epoch, step + 1), 7), 3)
    pad = (jax.random.randint(k_pad, (bs, 2), 0, 2 * cfg.pad_crop + 1).astype(jnp.int32)
           if cfg.pad_crop else jnp.zeros((bs, 2), jnp.int32))
    lam = (jax.random.beta(k_mix, cfg.mixup_alpha, cfg.mixup_alpha).astype(jnp.float32)
           if cfg.mixup_alpha > 0 else jnp.ones((), jnp.float32))
    f = cfg.shuffle_patches
    perms = (jax.vmap(lambda k: jax.random.permutation(k, f))(jax.random.split(k_shuf, 2 * bs))
             if f > 1 else jnp.broadcast_to(jnp.arange(f), (2 * bs, f)))
    return AugParams(idx, mask, boxes, flip, mix_perm, mix_box, pad, lam,
                     perms.reshape(bs, 2, f).astype(jnp.int32))


def apply_aug(x_syn_NHWC: jax.Array, p: AugParams, cfg: RelabelConfig) -> jax.Array:
    """Gather the batch; per image: patch shuffle, random-resized-crop, pad-crop, flip; then
    the batch's CutMix box or MixUp (module docstring)."""
    x = x_syn_NHWC[p.idx_B]
    if cfg.shuffle_patches > 1:
        x = jax.vmap(shuffle_patches)(x, p.patch_perm_Bx2xF)
    if cfg.crop_min_scale < 1.0:
        x = jax.vmap(crop_resize)(x, p.box_Bx4)
    if cfg.pad_crop:
        x = pad_crop(x, p.pad_Bx2, cfg.pad_crop, cfg.pad_fill or None)
    x = flip_horizontal(x, p.flip_B)
    if cfg.mixup_alpha > 0:  # lam x + (1 - lam) x[perm]; the teacher labels the result
        return p.mix_lam * x + (1.0 - p.mix_lam) * x[p.mix_perm_B]
    return paste_box(x, x[p.mix_perm_B], p.mix_box_4)


def replay_epoch(epoch: jax.Array | int, cfg: RelabelConfig) -> jax.Array | int:
    """The epoch whose augmentations and labels epoch `epoch` uses: epoch mod label_epochs."""
    return epoch % cfg.label_epochs if cfg.label_epochs else epoch


def stored_epochs(epochs: int, label_epochs: int = 0) -> int:
    """Epochs of labels a run of `epochs` stores: min(epochs, label_epochs) (0: all)."""
    return min(epochs, label_epochs) if label_epochs else epochs


# ---------------------------------------------------------------------------------------
# Labels: one quantisation path for stored and online


def index_dtype(num_classes: int) -> Any:
    """The narrowest integer type that holds a class index below num_classes."""
    return jnp.uint8 if num_classes <= 256 else jnp.uint16 if num_classes <= 65536 else jnp.int32


def _f16_toward(x: jax.Array, up: bool) -> jax.Array:
    """float32 -> the float16 next to it on the side `up` (>= x) or below (<= x)."""
    h = x.astype(jnp.float16)
    wrong = h.astype(jnp.float32) < x if up else h.astype(jnp.float32) > x
    return jnp.where(wrong, jnp.nextafter(h, jnp.asarray(jnp.inf if up else -jnp.inf,
                                                          jnp.float16)), h)


def quantise_rows(v_Bxk: jax.Array, levels: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-row affine quantisation: (codes_Bxk uint8 in 0..levels, offset_B, step_B float16)
    with |v - (offset + code * step)| <= step / 2: offset is the row minimum rounded down
    and step (max - offset) / levels rounded up to float16, so every code fits."""
    v = v_Bxk.astype(jnp.float32)
    lo_B = _f16_toward(v.min(-1), up=False)
    step_B = _f16_toward(jnp.maximum((v.max(-1) - lo_B.astype(jnp.float32)) / levels, 2.0 ** -24),
                         up=True)   # 2^-24: the smallest float16, for constant rows
    codes = jnp.round((v - lo_B.astype(jnp.float32)[:, None]) / step_B.astype(jnp.float32)[:, None])
    return jnp.clip(codes, 0, levels).astype(jnp.uint8), lo_B, step_B


def dequantise_rows(codes_Bxk: jax.Array, offset_B: jax.Array, step_B: jax.Array) -> jax.Array:
    """float32 offset + code * step, the inverse of `quantise_rows` up to step / 2."""
    return (offset_B.astype(jnp.float32)[:, None]
            + codes_Bxk.astype(jnp.float32) * step_B.astype(jnp.float32)[:, None])


def _pack4(codes_Bxk: jax.Array) -> jax.Array:
    """Two 4-bit codes a byte: (B, ceil(k / 2)) uint8, code 2j low nibble, 2j + 1 high."""
    if codes_Bxk.shape[-1] % 2:
        codes_Bxk = jnp.pad(codes_Bxk, ((0, 0), (0, 1)))
    return codes_Bxk[:, 0::2] | (codes_Bxk[:, 1::2] << 4)


def _unpack4(packed_Bxh: jax.Array, k: int) -> jax.Array:
    b = packed_Bxh.shape[0]
    both = jnp.stack([packed_Bxh & 15, packed_Bxh >> 4], axis=-1)
    return both.reshape(b, -1)[:, :k]


def _quantise(logits_BxK: jax.Array, cfg: RelabelConfig) -> StoredLabels:
    """Teacher logits -> the stored form of one batch (StoredLabels without (E, S) axes)."""
    v = logits_BxK.astype(jnp.float32)
    idx = None
    if cfg.top_k:
        if cfg.top_k_rest == "uniform":  # the mass outside the top-k needs the full softmax
            v = jax.nn.softmax(v / cfg.temperature, axis=-1)
        v, idx = jax.lax.top_k(v, cfg.top_k)
        idx = idx.astype(index_dtype(logits_BxK.shape[-1]))
    if cfg.label_dtype in CODE_LEVELS:
        codes, offset, step = quantise_rows(v, CODE_LEVELS[cfg.label_dtype])
        return StoredLabels(_pack4(codes) if cfg.label_dtype == "int4" else codes, idx,
                            offset, step)
    return StoredLabels(v.astype(cfg.label_dtype), idx)


def _values(lab: StoredLabels, k: int, cfg: RelabelConfig) -> jax.Array:
    """The stored values of one batch as float32 (B, k): cast or dequantised."""
    v = lab.values_ExSxBxk
    if cfg.label_dtype not in CODE_LEVELS:
        return v.astype(jnp.float32)
    codes = _unpack4(v, k) if cfg.label_dtype == "int4" else v
    return dequantise_rows(codes, lab.offset_ExSxB, lab.step_ExSxB)


def target_logits(lab: StoredLabels, num_classes: int, cfg: RelabelConfig) -> jax.Array:
    """One batch's stored form -> dense float32 (B, K) teacher logits for the student loss;
    softmax(./T) of them is the KD target:

        all K (top_k 0):       the stored logits
        top_k, rest "drop":    the k stored logits, the other classes -inf (probability 0)
        top_k, rest "uniform": T log p, p = the k stored probabilities and
                               max(0, 1 - their sum) / (K - k) for every other class
    """
    v = _values(lab, cfg.top_k or num_classes, cfg)
    idx = lab.indices_ExSxBxk
    if idx is None:
        return v
    b, k = v.shape
    rows = jnp.arange(b).reshape(b, 1)
    if cfg.top_k_rest == "drop":
        return jnp.full((b, num_classes), -jnp.inf, jnp.float32).at[rows, idx].set(v)
    v = jnp.maximum(v, 0.0)
    rest_B = jnp.maximum(1.0 - v.sum(-1), 0.0) / max(num_classes - k, 1)
    p = jnp.broadcast_to(rest_B[:, None], (b, num_classes)).at[rows, idx].set(v)
    return cfg.temperature * jnp.log(p)   # log 0 = -inf: kd_loss gives it no weight


def target_probs(lab: StoredLabels, num_classes: int, cfg: RelabelConfig) -> jax.Array:
    """The student's KD target (B, K) from one batch's stored form: softmax(target / T)."""
    return jax.nn.softmax(target_logits(lab, num_classes, cfg) / cfg.temperature, axis=-1)


def teacher_labels(teacher_fn: TeacherFn, x_aug_NHWC: jax.Array, cfg: RelabelConfig
                   ) -> StoredLabels:
    """The stored form of the teacher's labels for an augmented batch."""
    return _quantise(jax.lax.stop_gradient(teacher_fn(x_aug_NHWC)), cfg)


def online_labels(teacher_fn: TeacherFn, x_syn_NHWC: jax.Array, key: jax.Array,
                  epoch: jax.Array | int, step: jax.Array | int, batch_size: int,
                  cfg: RelabelConfig) -> StoredLabels:
    """Labels of batch (epoch, step), computed on the fly (what the online student sees)."""
    p = aug_params(key, epoch, step, x_syn_NHWC.shape[0], batch_size, x_syn_NHWC.shape[1:3], cfg)
    return teacher_labels(teacher_fn, apply_aug(x_syn_NHWC, p, cfg), cfg)


def generate_labels(teacher_fn: TeacherFn, x_syn_NHWC: jax.Array, key: jax.Array,
                    epochs: int, batch_size: int, cfg: RelabelConfig) -> StoredLabels:
    """FKD-style precomputation of the labels of every stored (epoch, step) of an
    `epochs`-epoch student in one scan (jittable): stored_epochs(epochs, label_epochs)."""
    spe = steps_per_epoch(x_syn_NHWC.shape[0], batch_size)
    n_ep = stored_epochs(epochs, cfg.label_epochs)

    def one(_, es):
        return None, online_labels(teacher_fn, x_syn_NHWC, key, es[0], es[1], batch_size, cfg)

    e, s = jnp.meshgrid(jnp.arange(n_ep), jnp.arange(spe), indexing="ij")
    _, labs = jax.lax.scan(one, None, (e.reshape(-1), s.reshape(-1)))
    return jax.tree.map(lambda a: a.reshape(n_ep, spe, *a.shape[1:]), labs)


def static_labels(teacher_fn: TeacherFn, x_syn_NHWC: jax.Array, batch_size: int,
                  cfg: RelabelConfig) -> jax.Array:
    """INFER static labels: the teacher's logits of every clean distilled image, (N, K) in
    label_dtype, computed `batch_size` images at a time (jittable)."""
    if cfg.top_k:
        raise ValueError("static labels are mixed linearly under MixUp/CutMix and need every "
                         "logit: use top_k = 0")
    n = x_syn_NHWC.shape[0]
    bs = max(1, min(batch_size, n))
    pad = (-n) % bs
    x = jnp.concatenate([x_syn_NHWC, jnp.zeros((pad, *x_syn_NHWC.shape[1:]), x_syn_NHWC.dtype)])
    out = jax.lax.map(lambda xb: teacher_labels(teacher_fn, xb, cfg)[0],
                      x.reshape(-1, bs, *x.shape[1:]))
    return out.reshape(-1, out.shape[-1])[:n]


def mix_static(static_NxK: jax.Array, p: AugParams, image_hw: tuple[int, int],
               cfg: RelabelConfig) -> jax.Array:
    """The batch's static labels (float32), mixed as `apply_aug` mixes its images."""
    t = static_NxK[p.idx_B].astype(jnp.float32)
    if cfg.mixup_alpha > 0:
        return p.mix_lam * t + (1.0 - p.mix_lam) * t[p.mix_perm_B]
    if cfg.cutmix_alpha > 0:  # the partner's pixels fill the box: weight = its area share
        y0, y1, x0, x1 = (p.mix_box_4[i] for i in range(4))
        area = ((y1 - y0) * (x1 - x0)).astype(jnp.float32) / (image_hw[0] * image_hw[1])
        return (1.0 - area) * t + area * t[p.mix_perm_B]
    return t


def ensemble_logits(logits_TxBxK: jax.Array, rescale: bool = True) -> jax.Array:
    """G-VBSM ensemble: rescale each teacher's logits to the mean Frobenius norm, average
    (the ImageNet-1K branch); rescale=False: the plain mean over teachers (its CIFAR-100 and
    Tiny-ImageNet generate_soft_label_with_db.py, the rescaling commented out)."""
    if not rescale:
        return logits_TxBxK.mean(0)
    norms_T = jnp.sqrt(jnp.sum(jnp.square(logits_TxBxK), axis=(1, 2)))
    scale_T = norms_T.mean() / jnp.maximum(norms_T, 1e-12)
    return (logits_TxBxK * scale_T.reshape(-1, 1, 1)).mean(0)


# ---------------------------------------------------------------------------------------
# Student training


def kd_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array, temperature: float,
            t2_factor: bool = False) -> jax.Array:
    """Per-example KL(softmax(t/T) || softmax(s/T)), eq. (2); -inf teacher logits allowed."""
    log_p = jax.nn.log_softmax(teacher_logits_BxK / temperature)
    log_q = jax.nn.log_softmax(student_logits_BxK.astype(jnp.float32) / temperature)
    p = jnp.exp(log_p)
    kl = jnp.where(p > 0, p * (log_p - log_q), 0.0).sum(-1)
    return kl * (temperature ** 2 if t2_factor else 1.0)


def logit_match_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array,
                     y_B: jax.Array, ce_weight: float = 0.1) -> jax.Array:
    """Per-example eq. (3): mean squared logit error + ce_weight * CE(student, y)."""
    s = student_logits_BxK.astype(jnp.float32)
    mse_B = jnp.square(s - teacher_logits_BxK.astype(jnp.float32)).mean(-1)
    log_q = jax.nn.log_softmax(s)
    ce_B = -jnp.take_along_axis(log_q, y_B.reshape(-1, 1).astype(jnp.int32), axis=1)[:, 0]
    return mse_B + ce_weight * ce_B


def student_loss(student_logits_BxK: jax.Array, teacher_logits_BxK: jax.Array,
                 y_B: jax.Array | None, cfg: RelabelConfig) -> jax.Array:
    """The per-example loss cfg.loss selects: eq. (2) or eq. (3)."""
    if cfg.loss == "mse_ce":
        return logit_match_loss(student_logits_BxK, teacher_logits_BxK, y_B, cfg.ce_weight)
    return kd_loss(student_logits_BxK, teacher_logits_BxK, cfg.temperature, cfg.t2_factor)


def _lr_scale(schedule: str, progress: jax.Array, cosine_span: float = 1.0) -> jax.Array:
    """TrainConfig.schedule at progress in [0, 1] (epochs or steps done / total)."""
    if schedule == "cosine":
        return 0.5 * (1 + jnp.cos(jnp.pi * cosine_span * progress))
    if schedule == "step":
        return jnp.where(progress >= 0.5, 0.1, 1.0)
    return jnp.ones_like(progress)


def _student_tx(cfg: TrainConfig, rcfg: RelabelConfig) -> optax.GradientTransformation:
    """Optimiser with an injected lr the loop sets every step. AdamW without decay on 1-D
    parameters (biases, norms) unless decay_norms_biases; else jaxdd's make_optimizer."""
    if cfg.optimizer == "adamw" and not rcfg.decay_norms_biases:
        mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        return optax.inject_hyperparams(optax.adamw, static_args=("mask",))(
            learning_rate=cfg.lr, weight_decay=cfg.weight_decay, mask=mask)
    return make_optimizer(dataclasses.replace(cfg, schedule="constant"), 1)


def _student_program(key: jax.Array, student: Model, cfg: TrainConfig, rcfg: RelabelConfig,
                     x_syn_NHWC: jax.Array, y_syn: jax.Array | None,
                     teacher_fn: TeacherFn | None, stored: StoredLabels | None,
                     aug_key: jax.Array | None, init_variables: Variables | None,
                     batch_sharding: Any = None, static: jax.Array | None = None,
                     carry: tuple[Variables, Any] | None = None):
    """(initial carry, batch_step(carry, (epoch, step)), steps per epoch) of a student run;
    the carry is `init_student`'s unless `carry` (a run's (variables, optimiser state)) is given.

    `batch_sharding` (a `NamedSharding` of the batch axis) makes the student data-parallel:
    each augmented batch is split over the devices, the teacher labels each device's shard
    and BatchNorm statistics and gradients are reduced over all of them."""
    if sum(v is not None for v in (teacher_fn, stored, static)) != 1:
        raise ValueError("pass exactly one of teacher_fn (online), stored (precomputed per "
                         "epoch) or static (one label per image)")
    if rcfg.loss == "mse_ce" and y_syn is None:
        raise ValueError("loss mse_ce needs y_syn, the class label of every distilled image")
    n = x_syn_NHWC.shape[0]
    bs = min(cfg.batch_size, n)
    spe = steps_per_epoch(n, bs)
    total = cfg.epochs * spe
    if stored is not None:
        want = (stored_epochs(cfg.epochs, rcfg.label_epochs), spe)
        if tuple(stored.values_ExSxBxk.shape[:2]) != want:
            raise ValueError(f"the stored labels hold {tuple(stored.values_ExSxBxk.shape[:2])} "
                             f"(epochs, steps) and this student reads {want}: generate them "
                             f"with the same epochs, batch size and label_epochs")
    aug_key = jax.random.fold_in(key, 1) if aug_key is None else aug_key
    carry = init_student(key, student, cfg, rcfg, init_variables) if carry is None else carry
    tx = _student_tx(cfg, rcfg)
    hw = x_syn_NHWC.shape[1:3]
    y_all = None if y_syn is None else jnp.asarray(y_syn).astype(jnp.int32)

    def loss_fn(logits_BxK, batch):  # batch: (teacher logits_BxK, class labels_B or None)
        return student_loss(logits_BxK, *batch, rcfg)

    # The shared loop's update: a padded last batch counts its real images only (loss and
    # BN statistics); when bs divides n no batch has padding and BN runs unmasked.
    apply_train = (student.apply_train if n % bs
                   else lambda v, xb, mask_B: student.apply_train(v, xb))
    update = make_update(apply_train, loss_fn, tx)

    def batch_step(carry, es):
        epoch, step = es[0], es[1]
        p = aug_params(aug_key, epoch, step, n, bs, hw, rcfg)
        xb = apply_aug(x_syn_NHWC, p, rcfg)
        if batch_sharding is not None:
            xb = jax.lax.with_sharding_constraint(xb, batch_sharding)
        yb = None if y_all is None else y_all[p.idx_B]  # the image's own class (pre-CutMix)
        if static is not None:  # INFER: each image's one label, mixed like the images
            tb = mix_static(static, p, hw, rcfg)
        else:
            if stored is None:
                lab = teacher_labels(teacher_fn, xb, rcfg)
            else:  # the labels of the replayed epoch (the augmentations above are its own)
                lab = jax.tree.map(lambda a: a[replay_epoch(epoch, rcfg), step], stored)
            tb = target_logits(lab, student.num_classes, rcfg)
        progress = (epoch / cfg.epochs if rcfg.lr_per_epoch else (epoch * spe + step) / total)
        lr = cfg.lr * _lr_scale(cfg.schedule, progress, rcfg.cosine_span)
        lr = jnp.asarray(lr, carry[1].hyperparams["learning_rate"].dtype)  # float64 runs too
        return update(*carry, xb, (tb, yb), p.mask_B, lr), None

    return carry, batch_step, spe


def init_student(key: jax.Array, student: Model, cfg: TrainConfig, rcfg: RelabelConfig,
                 init_variables: Variables | None = None) -> tuple[Variables, Any]:
    """(variables, optimiser state) a student run starts from: variables initialised from
    fold_in(key, 0) unless `init_variables` are given."""
    variables = (student.init(jax.random.fold_in(key, 0)) if init_variables is None
                 else init_variables)
    return variables, _student_tx(cfg, rcfg).init(variables["params"])


def _epoch_steps(first_epoch: jax.Array | int, num_epochs: int, spe: int) -> jax.Array:
    """(num_epochs * spe, 2) int32 (epoch, step) pairs, epoch-major."""
    e = (jnp.repeat(jnp.arange(num_epochs, dtype=jnp.int32), spe)
         + jnp.asarray(first_epoch, jnp.int32))
    s = jnp.tile(jnp.arange(spe, dtype=jnp.int32), num_epochs)
    return jnp.stack([e, s], axis=1)


def train_student(key: jax.Array, student: Model, cfg: TrainConfig, rcfg: RelabelConfig,
                  x_syn_NHWC: jax.Array, teacher_fn: TeacherFn | None = None,
                  stored: StoredLabels | None = None, aug_key: jax.Array | None = None,
                  init_variables: Variables | None = None,
                  y_syn: jax.Array | None = None, batch_sharding: Any = None,
                  static: jax.Array | None = None) -> Variables:
    """Train a fresh student (from `key`) for cfg.epochs on eq. (2) or (3); one compiled scan.

    Labels come from `stored` (generate_labels with the same aug_key, epochs, batch size)
    or `static` (`static_labels`, one per image) or, if both are None, online from
    `teacher_fn`. aug_key defaults to fold_in(key, 1). y_syn (the
    hard class labels of x_syn) is needed by loss mse_ce only. `batch_sharding`: see
    `_student_program` (the same student, up to the order of cross-device sums).
    """
    carry, batch_step, spe = _student_program(key, student, cfg, rcfg, x_syn_NHWC, y_syn,
                                              teacher_fn, stored, aug_key, init_variables,
                                              batch_sharding, static)
    (variables, _), _ = jax.lax.scan(batch_step, carry, _epoch_steps(0, cfg.epochs, spe))
    return variables


def train_student_epochs(carry: tuple[Variables, Any], aug_key: jax.Array, student: Model,
                         cfg: TrainConfig, rcfg: RelabelConfig, x_syn_NHWC: jax.Array,
                         first_epoch: jax.Array | int, num_epochs: int,
                         teacher_fn: TeacherFn | None = None, stored: StoredLabels | None = None,
                         y_syn: jax.Array | None = None, batch_sharding: Any = None,
                         static: jax.Array | None = None) -> tuple[Variables, Any]:
    """Epochs first_epoch .. first_epoch + num_epochs - 1 of train_student's run, resumed
    from `carry` ((variables, optimiser state): `init_student`'s, or what the previous
    segment returned); returns the carry after them. Segments [0, a), [a, b) run the steps
    of [0, b) in the same order (the lr schedule and the augmentations depend only on
    (aug_key, epoch, step)), so they give train_student's student with that aug_key.
    num_epochs is static (one compiled program per segment length)."""
    carry, batch_step, spe = _student_program(aug_key, student, cfg, rcfg, x_syn_NHWC, y_syn,
                                              teacher_fn, stored, aug_key, None,
                                              batch_sharding, static, carry)
    carry, _ = jax.lax.scan(batch_step, carry, _epoch_steps(first_epoch, num_epochs, spe))
    return carry


def eval_epochs(epochs: int, every: int) -> list[int]:
    """Epochs (1-based counts done) after which train_student_evals evaluates: every
    `every` epochs, and always after the last one."""
    if every < 1:
        raise ValueError(f"eval_every must be >= 1, got {every}")
    out = list(range(every, epochs + 1, every))
    return out if out and out[-1] == epochs else out + [epochs]


def train_student_evals(key: jax.Array, student: Model, cfg: TrainConfig, rcfg: RelabelConfig,
                        x_syn_NHWC: jax.Array, eval_fn: Callable[[Variables], Any],
                        eval_every: int, teacher_fn: TeacherFn | None = None,
                        stored: StoredLabels | None = None, aug_key: jax.Array | None = None,
                        init_variables: Variables | None = None,
                        y_syn: jax.Array | None = None,
                        batch_sharding: Any = None,
                        static: jax.Array | None = None) -> tuple[Variables, Any]:
    """train_student plus eval_fn(variables) at `eval_epochs(cfg.epochs, eval_every)`.

    Same steps in the same order as train_student; returns (final variables, eval_fn outputs
    stacked on a leading axis, one row per evaluation, the last row = the final student).
    """
    rounds, rem = divmod(cfg.epochs, eval_every) if eval_every >= 1 else (0, 0)
    eval_epochs(cfg.epochs, eval_every)  # validates eval_every
    carry, batch_step, spe = _student_program(key, student, cfg, rcfg, x_syn_NHWC, y_syn,
                                              teacher_fn, stored, aug_key, init_variables,
                                              batch_sharding, static)

    def one_round(carry, r):
        carry, _ = jax.lax.scan(batch_step, carry, _epoch_steps(r * eval_every, eval_every, spe))
        return carry, eval_fn(carry[0])

    carry, evals = jax.lax.scan(one_round, carry, jnp.arange(rounds, dtype=jnp.int32))
    if rem:
        carry, _ = jax.lax.scan(batch_step, carry, _epoch_steps(rounds * eval_every, rem, spe))
        last = eval_fn(carry[0])
        evals = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]], axis=0), evals, last)
    return carry[0], evals


# ---------------------------------------------------------------------------------------
# Storage


def label_bytes(stored: StoredLabels) -> int:
    """Bytes the stored labels occupy, every array counted (report next to the image bytes)."""
    return int(sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(stored)))


def estimate_label_bytes(num_images: int, epochs: int, num_classes: int,
                         label_dtype: str = "float16", top_k: int = 0,
                         index_bytes: int | None = None, label_epochs: int = 0,
                         batch_size: int = 0) -> int:
    """Bytes of FKD labels without computing them: rows * (values + indices + offset/step),
    rows = stored_epochs * images (with batch_size: stored_epochs * steps * batch, the padding
    of the last batch included, exactly what `generate_labels` stores). Values: k x the
    float's bytes, k bytes (int8) or ceil(k / 2) (int4); indices (top-k): k x index_bytes
    (default: `index_dtype`'s); int8 / int4 add 2 x 2 bytes a row. Crop parameters are not
    stored (they are recomputed from (key, epoch, step))."""
    if label_dtype not in LABEL_DTYPES:
        raise ValueError(f"label_dtype={label_dtype!r}; use {', '.join(LABEL_DTYPES)}")
    k = top_k or num_classes
    if index_bytes is None:
        index_bytes = np.dtype(index_dtype(num_classes)).itemsize
    per = ({"int8": k + 4, "int4": -(-k // 2) + 4}.get(label_dtype)
           or k * np.dtype(jnp.dtype(label_dtype)).itemsize) + (k * index_bytes if top_k else 0)
    rows = (steps_per_epoch(num_images, min(batch_size, num_images)) * min(batch_size, num_images)
            if batch_size else num_images)
    return int(stored_epochs(epochs, label_epochs) * rows * per)


_NPZ_NAMES = ("values", "indices", "offset", "step")  # the StoredLabels fields in the file


def save_labels(path: str, stored: StoredLabels, **meta: Any) -> None:
    """npz with `values` (and `indices`, `offset`, `step` when present) plus scalar
    metadata (seed, temperature, ...)."""
    arrays = {name: np.asarray(a) for name, a in zip(_NPZ_NAMES, stored) if a is not None}
    arrays.update({f"meta_{k}": np.asarray(v) for k, v in meta.items()})
    safeio.savez(path, **arrays)


def load_labels(path: str) -> tuple[StoredLabels, dict[str, Any]]:
    """(StoredLabels, metadata) of a `save_labels` file."""
    with np.load(path) as f:
        stored = StoredLabels(*(jnp.asarray(f[n]) if n in f.files else None for n in _NPZ_NAMES))
        meta = {k[5:]: f[k][()] for k in f.files if k.startswith("meta_")}
    return stored, meta
