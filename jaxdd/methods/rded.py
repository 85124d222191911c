"""RDED: realistic, diverse distilled images cut from real ones, without optimisation.

For every class c (spec section 6; numbers from the RDED reference scripts):

1. Take a pool of P real images of c (`mipc`: 300 in the CIFAR-100 scripts, 600 by default).
2. Draw M square random-resized-crop boxes per image (`num_crop` = 5; area fraction
   U(0.08, 1), aspect ratio 1), each crop resized to (H / f, W / f) for a factor f.
3. Score every crop by the frozen teacher's cross-entropy (the realism score)

       s(crop) = -log softmax(teacher(view(crop)))_c                                  (1)

   where view() centres the crop on a zero canvas of the full input size (the reference;
   zero is the mean pixel in normalised space) or, with score_input="resize", resizes it to
   the full size. At f = 1 both views are the crop itself.
4. Keep each image's lowest-s crop, then the n = IPC * f^2 lowest-s images of the pool.
5. Tile: synthetic image t holds, at tile k = i * f + j (row-major), selected crop
   k * IPC + t (selection in ascending s). With f = 1 a synthetic image is just the best
   crop resized to the full size; f = 2 (224 px recipes) puts 4 crops in a 2x2 grid.

The soft labels come later, from the teacher during relabel (jaxdd.labels.relabel).
Everything is a pure function of an explicit key: class c uses fold_in(key, c), so the
result does not depend on how classes are batched. Tiles are re-cut from the source image
at the tile size (one resampling, as sharp as the crop that was scored).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from jaxdd.augment.crops import resized_crop, sample_crop_box

__all__ = ["RDEDConfig", "Selection", "sample_boxes", "crop_to", "teacher_view", "crop_ce",
           "select_class", "select_from_boxes", "tile_layout", "tile", "rded_class", "rded",
           "check_pool"]

TeacherFn = Callable[[jax.Array], jax.Array]  # x_NHWC -> logits_NxK, inference mode


@dataclasses.dataclass(frozen=True)
class RDEDConfig:
    """Defaults: the RDED CIFAR-100 scripts (factor 1, 5 crops, 300 images per class)."""

    factor: int = 1                 # tiles per side of a synthetic image (224 px: 2; 32/64 px: 1)
    num_crop: int = 5               # candidate crops per real image (M)
    mipc: int = 300                 # real images per class in the pool (P); reference default 600
    min_scale: float = 0.08         # RandomResizedCrop area fraction lower bound (upper: 1)
    ratio: tuple[float, float] = (1.0, 1.0)  # crop aspect-ratio range; RDED: square crops
    score_input: str = "pad"        # pad: crop centred on a zero canvas (reference) | resize
    score_batch: int = 512          # crops per teacher call (memory only; same selection)
    class_batch: int = 10           # classes per compiled call in the pipeline (memory/resume)

    def __post_init__(self):
        if self.factor < 1 or self.num_crop < 1 or self.mipc < 1:
            raise ValueError(f"factor, num_crop and mipc must be >= 1, got {self.factor}, "
                             f"{self.num_crop}, {self.mipc}")
        if not 0 < self.min_scale <= 1:
            raise ValueError(f"min_scale must be in (0, 1], got {self.min_scale}")
        if self.score_input not in ("pad", "resize"):
            raise ValueError(f"score_input={self.score_input!r}; use pad or resize")
        if self.score_batch < 1 or self.class_batch < 1:
            raise ValueError("score_batch and class_batch must be >= 1")


class Selection(NamedTuple):
    """The n kept crops of one class, in ascending score: pool index, box and score."""

    src_n: jax.Array       # int32 index into the class pool
    box_nx4: jax.Array     # (y0, x0, h, w) in source pixels
    ce_n: jax.Array        # eq. (1) of the kept crop


def check_pool(pool_size: int, ipc: int, factor: int) -> None:
    """Each synthetic image needs factor^2 crops from distinct real images."""
    need = ipc * factor ** 2
    if ipc < 1:
        raise ValueError(f"IPC must be >= 1, got {ipc}")
    if need > pool_size:
        raise ValueError(f"RDED IPC {ipc} with factor {factor} keeps {need} crops per class, one "
                         f"per real image, but the pool holds {pool_size} images per class; use "
                         f"IPC <= {pool_size // factor ** 2} or a larger pool (rded.mipc)")


def sample_boxes(key: jax.Array, n: int, num_crop: int, h: int, w: int, cfg: RDEDConfig
                 ) -> jax.Array:
    """(n, num_crop, 4) independent random-resized-crop boxes (y0, x0, ch, cw)."""
    keys = jax.random.split(key, n * num_crop)
    boxes = jax.vmap(lambda k: sample_crop_box(k, h, w, cfg.min_scale, cfg.ratio))(keys)
    return boxes.reshape(n, num_crop, 4)


def crop_to(x_HWC: jax.Array, box_4: jax.Array, out_hw: tuple[int, int]) -> jax.Array:
    """The box (y0, x0, h, w) cut out and resized to out_hw, bilinear with antialiasing, only
    the box's pixels contributing: the reference's RandomResizedCrop(antialias=True) crop.
    (Resampling the whole image at the box's coordinates instead mixes in pixels just
    outside the box at its edges: scores then differ from the reference's by ~1e-2.)"""
    return resized_crop(x_HWC, box_4, out_hw).astype(x_HWC.dtype)


def teacher_view(crop_hwC: jax.Array, full_hw: tuple[int, int], mode: str) -> jax.Array:
    """What the teacher scores: the crop centred on zeros (pad) or resized (resize)."""
    h, w = crop_hwC.shape[:2]
    if (h, w) == tuple(full_hw):
        return crop_hwC
    if mode == "resize":
        return jax.image.resize(crop_hwC, (*full_hw, crop_hwC.shape[-1]), "linear")
    top, left = (full_hw[0] - h) // 2, (full_hw[1] - w) // 2
    return jnp.pad(crop_hwC, ((top, full_hw[0] - h - top), (left, full_hw[1] - w - left), (0, 0)))


def crop_ce(teacher_fn: TeacherFn, x_pool_PxHxWxC: jax.Array, src_N: jax.Array,
            box_Nx4: jax.Array, label: jax.Array | int, cfg: RDEDConfig) -> jax.Array:
    """Eq. (1) for N (source, box) pairs, computed score_batch crops at a time."""
    full_hw = x_pool_PxHxWxC.shape[1:3]
    crop_hw = (full_hw[0] // cfg.factor, full_hw[1] // cfg.factor)

    def one(sb):
        src, box = sb
        view = teacher_view(crop_to(x_pool_PxHxWxC[src], box, crop_hw), full_hw, cfg.score_input)
        logits_K = teacher_fn(view[None])[0]
        logits_K = logits_K.astype(jnp.promote_types(logits_K.dtype, jnp.float32))
        return jax.nn.logsumexp(logits_K) - logits_K[label]

    return jax.lax.map(one, (src_N, box_Nx4), batch_size=cfg.score_batch)


def select_class(key: jax.Array, teacher_fn: TeacherFn, x_pool_PxHxWxC: jax.Array,
                 label: jax.Array | int, n_keep: int, cfg: RDEDConfig) -> Selection:
    """Steps 2-4: best crop per pool image, then the n_keep best images (ties: lower index)."""
    p, h, w = x_pool_PxHxWxC.shape[:3]
    if not 1 <= n_keep <= p:
        raise ValueError(f"cannot keep {n_keep} crops (one per image) from a pool of {p} images")
    boxes_PxMx4 = sample_boxes(key, p, cfg.num_crop, h, w, cfg)
    return select_from_boxes(teacher_fn, x_pool_PxHxWxC, label, n_keep, cfg, boxes_PxMx4)


def select_from_boxes(teacher_fn: TeacherFn, x_pool_PxHxWxC: jax.Array, label: jax.Array | int,
                      n_keep: int, cfg: RDEDConfig, boxes_PxMx4: jax.Array) -> Selection:
    """Steps 3-4 on given boxes (PxM, (y0, x0, h, w)): score every crop, keep each image's
    lowest-score crop (ties: first crop), then the n_keep lowest images (ties: lower index)."""
    p, m = boxes_PxMx4.shape[:2]
    src_PxM = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32).reshape(p, 1), (p, m))
    ce_PxM = crop_ce(teacher_fn, x_pool_PxHxWxC, src_PxM.reshape(-1), boxes_PxMx4.reshape(-1, 4),
                     label, cfg).reshape(p, m)
    best_m_P = jnp.argmin(ce_PxM, axis=1)
    ce_P = jnp.take_along_axis(ce_PxM, best_m_P.reshape(p, 1), axis=1)[:, 0]
    order_n = jnp.argsort(ce_P, stable=True)[:n_keep].astype(jnp.int32)
    return Selection(order_n, boxes_PxMx4[order_n, best_m_P[order_n]], ce_P[order_n])


def tile_layout(h: int, w: int, factor: int) -> list[tuple[int, int, int, int]]:
    """(y0, x0, th, tw) of tile k = i * factor + j; the first H mod f rows (W mod f columns)
    of tiles are one pixel larger, so the tiles cover the image exactly."""
    def sizes(n):
        s, r = divmod(n, factor)
        return [s + 1 if i < r else s for i in range(factor)]
    hs, ws = sizes(h), sizes(w)
    ys = [sum(hs[:i]) for i in range(factor)]
    xs = [sum(ws[:j]) for j in range(factor)]
    return [(ys[i], xs[j], hs[i], ws[j]) for i in range(factor) for j in range(factor)]


def tile(x_pool_PxHxWxC: jax.Array, sel: Selection, ipc: int, factor: int) -> jax.Array:
    """Step 5: (ipc, H, W, C) images; tile k of image t is selected crop k * ipc + t."""
    h, w, c = x_pool_PxHxWxC.shape[1:]
    out = jnp.zeros((ipc, h, w, c), x_pool_PxHxWxC.dtype)
    for k, (y0, x0, th, tw) in enumerate(tile_layout(h, w, factor)):
        src_t = sel.src_n[k * ipc:(k + 1) * ipc]
        box_tx4 = sel.box_nx4[k * ipc:(k + 1) * ipc]
        tiles = jax.vmap(lambda s, b: crop_to(x_pool_PxHxWxC[s], b, (th, tw)))(src_t, box_tx4)
        out = out.at[:, y0:y0 + th, x0:x0 + tw].set(tiles.astype(out.dtype))
    return out


def rded_class(key: jax.Array, teacher_fn: TeacherFn, x_pool_PxHxWxC: jax.Array,
               label: jax.Array | int, ipc: int, cfg: RDEDConfig
               ) -> tuple[jax.Array, jax.Array]:
    """One class: (ipc, H, W, C) synthetic images and the (ipc * f^2,) kept scores."""
    check_pool(x_pool_PxHxWxC.shape[0], ipc, cfg.factor)
    sel = select_class(key, teacher_fn, x_pool_PxHxWxC, label, ipc * cfg.factor ** 2, cfg)
    return tile(x_pool_PxHxWxC, sel, ipc, cfg.factor), sel.ce_n


def rded(key: jax.Array, teacher_fn: TeacherFn, x_pool_KxPxHxWxC: jax.Array,
         labels_K: jax.Array, ipc: int, cfg: RDEDConfig, vmap_classes: int | None = None
         ) -> tuple[jax.Array, jax.Array]:
    """All given classes: (K, ipc, H, W, C) images, (K, ipc * f^2) scores. Class labels_K[i]
    uses fold_in(key, labels_K[i]); `vmap_classes` classes are vmapped at a time (None: 1,
    a sequential map), which changes memory, not the result."""
    check_pool(x_pool_KxPxHxWxC.shape[1], ipc, cfg.factor)

    def one(args):
        x_pool, label = args
        return rded_class(jax.random.fold_in(key, label), teacher_fn, x_pool, label, ipc, cfg)

    return jax.lax.map(one, (x_pool_KxPxHxWxC, labels_K.astype(jnp.int32)),
                       batch_size=vmap_classes)

