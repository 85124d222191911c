"""Input preprocessing fitted on the training set and stored with every distilled set.

A distilled set lives in the preprocessed space (its pixels are what the model sees), so the
exact transform must travel with it: `Preprocess` is a frozen dataclass of numpy arrays and
scalars that round-trips through `to_dict` / `from_dict` (an npz holds the dict).

Kinds (spec: evaluation.md section 3):
- `none`: pixels in [0, 1].
- `normalize`: per-channel (x - mean_C) / std_C. The datasets of `KNOWN_STATS` use the
  references' constants: CIFAR-10 and CIFAR-100 mean (0.4914, 0.4822, 0.4465), std (0.2023,
  0.1994, 0.2010) (MTT and SRe2L use CIFAR-10's numbers for CIFAR-100), ImageNet,
  Tiny-ImageNet and ImageNet-resized torchvision's (0.485, 0.456, 0.406) / (0.229, 0.224,
  0.225); other datasets (Fashion-MNIST, npz:, folder:) are fitted (population mean / std
  over all training pixels of a channel).
- `zca` (trajectory matching, MTT): on [0, 1] pixels with *no* per-channel normalisation
  (MTT's `get_dataset` uses a bare `ToTensor()` when `--zca` is set, then fits Kornia's
  `ZCAWhitening(eps=0.1)`), flattened to D = H*W*C: mean mu, covariance with 1/(N-1),
  Sigma = U diag(S) U^T, W = U diag(1/sqrt(S + eps)) U^T with eps = 0.1 *added* to the
  eigenvalues; x_zca = (x - mu) W. Whitening commutes with any fixed permutation of the
  D features, so flattening NHWC (here) or NCHW (PyTorch) gives the same images.
- `zca_kip` (KIP / FRePo): per-channel standardisation fitted on the training set, then
  (`layer_norm=True`, their default) every image centred over its D features and scaled
  to unit L2 norm, then whitening of the *uncentred* second moment M = X^T X / N with the
  relative regulariser eps = reg * trace(M) / D (reg default 0.1, FRePo's default), and
  their "rank control": when N < D only the top N eigendirections are rescaled, the rest
  pass with gain 1. The per-image layer norm is not invertible, so `invert` of this kind
  gives each image the average training norm (`ln_scale`) and zero per-image mean: exact
  up to a per-image brightness / contrast, which is what visualisation needs.

The fits run in float64 numpy on the CPU (the 3072x3072 covariance of CIFAR is exact
enough only in float64); `apply` / `invert` run in float32, in numpy for numpy inputs and
in jax.numpy (jittable) for jax arrays.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

KINDS = ("none", "normalize", "zca", "zca_kip")
# Per-channel (mean, std) constants that the reference code uses for these datasets (their
# `normalize` preprocessing uses them instead of fitted statistics; see `known_stats`).
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
# torchvision's ImageNet constants (every ImageNet reference uses them)
_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
KNOWN_STATS = {"cifar10": _CIFAR10_STATS,
               # MTT utils.py get_dataset ('CIFAR100' branch) and SRe2L
               # small_dataset/relabel_cifar.py:54 normalise CIFAR-100 with CIFAR-10's numbers
               "cifar100": _CIFAR10_STATS,
               "imagenet2012": _IMAGENET_STATS,
               # MTT utils.py get_dataset ('Tiny' and 'ImageNet' branches): ImageNet's
               "tiny_imagenet": _IMAGENET_STATS,
               "imagenet_resized": _IMAGENET_STATS}
_TINY_FOLDER = "tiny-imagenet-200"  # the directory of the official Tiny-ImageNet archive


def known_stats(dataset_name: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """The reference (mean, std) of a dataset, or None (then statistics are fitted).

    A TFDS name with a config (`imagenet_resized/64x64`) uses its base name; a
    `folder:PATH` whose last component is `tiny-imagenet-200` is Tiny-ImageNet."""
    if not dataset_name:
        return None
    if dataset_name.startswith("folder:"):
        leaf = os.path.basename(os.path.normpath(dataset_name[len("folder:"):]))
        return KNOWN_STATS["tiny_imagenet"] if leaf == _TINY_FOLDER else None
    if ":" in dataset_name:  # npz:PATH and other sources: fitted
        return None
    return KNOWN_STATS.get(dataset_name, KNOWN_STATS.get(dataset_name.split("/")[0]))
ZCA_EPS = 0.1      # MTT: absolute eps added to the covariance eigenvalues
KIP_ZCA_REG = 0.1  # KIP/FRePo: eps = reg * trace(M) / D
_CHUNK = 4096      # rows per block in fits and numpy applies (bounds temporary memory)
_FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True, eq=False)
class Preprocess:
    """A fitted input transform; see the module docstring for the kinds."""

    kind: str                          # one of KINDS
    image_shape: tuple[int, int, int]  # (H, W, C) it was fitted for
    mean_C: np.ndarray = dataclasses.field(repr=False)  # (C,) subtracted from [0,1] pixels
    std_C: np.ndarray = dataclasses.field(repr=False)   # (C,) divides after mean_C
    zca_mean_D: np.ndarray | None = dataclasses.field(default=None, repr=False)  # (D,)
    eigvecs_DxD: np.ndarray | None = dataclasses.field(default=None, repr=False)  # U, float32
    eigvals_D: np.ndarray | None = dataclasses.field(default=None, repr=False)  # S, descending
    eps: float = 0.0         # absolute regulariser added to eigvals_D
    reg: float = 0.0         # zca_kip: relative regulariser (eps = reg * trace / D)
    layer_norm: bool = False  # zca_kip: per-image centring + unit norm before whitening
    ln_scale: float = 1.0    # zca_kip: mean per-image norm before the layer norm (invert)
    rank: int = 0            # number of leading eigendirections whitened (rest: gain 1)

    @property
    def dim(self) -> int:
        """D = H * W * C."""
        return int(np.prod(self.image_shape))

    @functools.cached_property
    def _gain_D(self) -> np.ndarray:
        """Per-eigendirection gain 1/sqrt(S + eps); 1 beyond `rank` (float64)."""
        gain = 1.0 / np.sqrt(self.eigvals_D.astype(np.float64) + self.eps)
        gain[self.rank:] = 1.0
        return gain

    @functools.cached_property
    def whiten_DxD(self) -> np.ndarray:
        """W = U diag(gain) U^T (symmetric, float32)."""
        u = self.eigvecs_DxD.astype(np.float64)
        return ((u * self._gain_D) @ u.T).astype(np.float32)

    @functools.cached_property
    def unwhiten_DxD(self) -> np.ndarray:
        """W^-1 = U diag(1/gain) U^T (float32)."""
        u = self.eigvecs_DxD.astype(np.float64)
        return ((u / self._gain_D) @ u.T).astype(np.float32)


# ---------------------------------------------------------------------------------------
# Fitting


def fit_preprocess(kind: str, x_train: np.ndarray, *, dataset_name: str | None = None,
                   eps: float = ZCA_EPS, reg: float = KIP_ZCA_REG, layer_norm: bool = True,
                   mean: tuple[float, ...] | None = None,
                   std: tuple[float, ...] | None = None) -> Preprocess:
    """Fit `kind` on training images x_train (N,H,W,C) uint8 (or float in [0, 1]).

    `dataset_name` picks known normalisation constants (`known_stats`); `mean` / `std` override
    them. `eps` is the absolute ZCA regulariser of `zca`; `reg` and `layer_norm` configure
    `zca_kip`.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown preprocessing {kind!r}; use one of {', '.join(KINDS)}")
    if x_train.ndim != 4:
        raise ValueError(f"x_train must be (N, H, W, C), got shape {x_train.shape}")
    shape = tuple(int(s) for s in x_train.shape[1:])
    c = shape[-1]
    ones, zeros = np.ones(c, np.float32), np.zeros(c, np.float32)
    if kind == "none":
        return Preprocess("none", shape, zeros, ones)
    if kind == "zca":
        mu_D, cov_DxD = _moments(x_train, center=True)
        return _from_eig("zca", shape, zeros, ones, mu_D, cov_DxD, eps=float(eps),
                         rank=cov_DxD.shape[0])

    if mean is None and std is None and kind == "normalize" and known_stats(dataset_name):
        mean, std = known_stats(dataset_name)
    fit_mean, fit_std = (None, None) if mean is not None and std is not None else (
        _channel_stats(x_train))
    mean_C = np.asarray(mean if mean is not None else fit_mean, np.float32).reshape(c)
    std_C = np.asarray(std if std is not None else fit_std, np.float32).reshape(c)
    if kind == "normalize":
        return Preprocess("normalize", shape, mean_C, std_C)

    # zca_kip: second moment of standardised, per-image layer-normed images.
    pre = Preprocess("zca_kip", shape, mean_C, std_C, layer_norm=bool(layer_norm))
    norms = []

    def rows(chunk):
        flat = _standardize(pre, _to_float01(chunk, np, np.float64)).reshape(len(chunk), -1)
        if layer_norm:
            flat, norm = _layer_norm(flat, np)
            norms.append(norm)
        return flat

    _, m_DxD = _moments(x_train, center=False, rows=rows)
    d = m_DxD.shape[0]
    ln_scale = float(np.concatenate(norms).mean()) if layer_norm else 1.0
    return _from_eig("zca_kip", shape, mean_C, std_C, np.zeros(d, np.float32), m_DxD,
                     eps=float(reg) * float(np.trace(m_DxD)) / d, reg=float(reg),
                     layer_norm=bool(layer_norm), ln_scale=ln_scale,
                     rank=min(len(x_train), d))


def _from_eig(kind, shape, mean_C, std_C, mu_D, m_DxD, **kw) -> Preprocess:
    s_D, u_DxD = np.linalg.eigh(m_DxD)       # ascending
    s_D, u_DxD = np.clip(s_D[::-1], 0.0, None), u_DxD[:, ::-1]  # descending, PSD
    return Preprocess(kind, shape, mean_C, std_C, zca_mean_D=np.asarray(mu_D, np.float32),
                      eigvecs_DxD=np.ascontiguousarray(u_DxD, dtype=np.float32),
                      eigvals_D=s_D.astype(np.float64), **kw)


def _moments(x: np.ndarray, *, center: bool, rows=None) -> tuple[np.ndarray, np.ndarray]:
    """(mean_D, covariance 1/(N-1)) if center else (zeros, second moment X^T X / N).

    float64, accumulated over row blocks so the float64 copy of the data never exists.
    """
    n = len(x)
    rows = rows or (lambda chunk: _to_float01(chunk, np, np.float64).reshape(len(chunk), -1))
    d = int(np.prod(x.shape[1:]))
    mu = np.zeros(d)
    if center:
        for i in range(0, n, _CHUNK):
            mu += rows(x[i:i + _CHUNK]).sum(0)
        mu /= n
    m = np.zeros((d, d))
    for i in range(0, n, _CHUNK):
        block = rows(x[i:i + _CHUNK]) - mu
        m += block.T @ block
    if center:
        if n < 2:
            raise ValueError("ZCA needs at least 2 training images")
        return mu, m / (n - 1)
    return mu, m / n


def _channel_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel population mean and std of [0,1] pixels, float64 block sums."""
    c = x.shape[-1]
    s1, s2, count = np.zeros(c), np.zeros(c), 0
    for i in range(0, len(x), _CHUNK):
        v = _to_float01(x[i:i + _CHUNK], np, np.float64).reshape(-1, c)
        s1 += v.sum(0)
        s2 += (v * v).sum(0)
        count += len(v)
    mean = s1 / count
    std = np.sqrt(np.maximum(s2 / count - mean**2, 0.0))
    return mean, np.maximum(std, 1e-6)  # a constant channel must not divide by zero


# ---------------------------------------------------------------------------------------
# Applying


def _to_float01(x, xp, dtype=np.float32):
    """uint8 -> x / 255; float input is taken to be in [0, 1] already."""
    if x.dtype == np.uint8:
        return x.astype(dtype) / 255.0
    return x.astype(dtype)


def _per_channel(a_C, xp):
    """(C,) -> (1, 1, 1, C): explicit broadcasting (safe under jax_numpy_rank_promotion)."""
    return xp.asarray(a_C).reshape(1, 1, 1, -1)


def _standardize(p: Preprocess, x01, xp=np):
    return (x01 - _per_channel(p.mean_C, xp)) / _per_channel(p.std_C, xp)


def _layer_norm(flat_ND, xp):
    """KIP's per-image layer norm: centre over features, scale to unit L2 norm."""
    flat_ND = flat_ND - flat_ND.mean(axis=1, keepdims=True)
    norm_N = xp.linalg.norm(flat_ND, axis=1)
    return flat_ND / xp.maximum(norm_N, 1e-12)[:, None], norm_N


def _xp(x):
    return jnp if isinstance(x, jax.Array) else np


def _check_shape(p: Preprocess, x) -> None:
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(p.image_shape):
        raise ValueError(f"{p.kind} preprocessing was fitted on images {p.image_shape}, got "
                         f"a batch of shape {x.shape}")


def _blocks(fn, x, out_shape):
    """fn over row blocks of a numpy array (bounds temporaries), or at once for jax."""
    if _xp(x) is jnp:
        return fn(x, jnp)
    out = np.empty(out_shape, np.float32)
    for i in range(0, len(x), _CHUNK):
        out[i:i + _CHUNK] = fn(x[i:i + _CHUNK], np)
    return out


def apply(p: Preprocess, x_NHWC) -> Any:
    """Preprocess images (uint8, or float in [0, 1]) -> float32 NHWC model inputs."""
    _check_shape(p, x_NHWC)

    def fn(x, xp):
        x01 = _to_float01(x, xp)
        if p.kind == "none":
            return x01
        if p.kind == "normalize":
            return _standardize(p, x01, xp)
        n = x.shape[0]
        if p.kind == "zca":
            flat = x01.reshape(n, -1) - xp.asarray(p.zca_mean_D)[None]
        else:  # zca_kip
            flat = _standardize(p, x01, xp).reshape(n, -1)
            if p.layer_norm:
                flat, _ = _layer_norm(flat, xp)
        return (flat @ xp.asarray(p.whiten_DxD)).reshape(x.shape).astype(xp.float32)

    return _blocks(fn, x_NHWC, x_NHWC.shape)


def invert(p: Preprocess, x_NHWC, *, clip: bool = False) -> Any:
    """Map preprocessed images back to [0, 1] pixel space (visualisation, export)."""
    _check_shape(p, x_NHWC)

    def fn(x, xp):
        x = x.astype(xp.float32)
        if p.kind == "none":
            out = x
        elif p.kind == "normalize":
            out = x * _per_channel(p.std_C, xp) + _per_channel(p.mean_C, xp)
        else:
            flat = x.reshape(x.shape[0], -1) @ xp.asarray(p.unwhiten_DxD)
            if p.kind == "zca":
                out = (flat + xp.asarray(p.zca_mean_D)[None]).reshape(x.shape)
            else:  # zca_kip; the per-image mean / norm lost in the layer norm stay lost
                if p.layer_norm:
                    flat = flat * p.ln_scale
                out = (flat.reshape(x.shape) * _per_channel(p.std_C, xp)
                       + _per_channel(p.mean_C, xp))
        return xp.clip(out, 0.0, 1.0) if clip else out

    return _blocks(fn, x_NHWC, x_NHWC.shape)


# ---------------------------------------------------------------------------------------
# Serialisation


def to_dict(p: Preprocess) -> dict[str, Any]:
    """Flat dict of numpy arrays and Python scalars (store it with np.savez)."""
    d: dict[str, Any] = {
        "format_version": _FORMAT_VERSION, "kind": p.kind,
        "image_shape": np.asarray(p.image_shape, np.int64),
        "mean_C": np.asarray(p.mean_C), "std_C": np.asarray(p.std_C),
        "eps": float(p.eps), "reg": float(p.reg), "layer_norm": bool(p.layer_norm),
        "ln_scale": float(p.ln_scale), "rank": int(p.rank),
    }
    for k in ("zca_mean_D", "eigvecs_DxD", "eigvals_D"):
        if getattr(p, k) is not None:
            d[k] = np.asarray(getattr(p, k))
    return d


def from_dict(d: dict[str, Any]) -> Preprocess:
    """Inverse of `to_dict`; accepts the 0-d arrays an npz gives back for scalars."""
    def scalar(k, default=None):
        return np.asarray(d[k]).item() if k in d else default

    version = int(scalar("format_version", _FORMAT_VERSION))
    if version > _FORMAT_VERSION:
        raise ValueError(f"preprocessing format {version} is newer than this jaxdd "
                         f"({_FORMAT_VERSION}); upgrade jaxdd")
    kind = str(scalar("kind"))
    if kind not in KINDS:
        raise ValueError(f"unknown preprocessing kind {kind!r} in stored dict")
    arrays = {k: np.asarray(d[k]) for k in ("zca_mean_D", "eigvecs_DxD", "eigvals_D") if k in d}
    if kind in ("zca", "zca_kip") and len(arrays) != 3:
        raise ValueError(f"stored {kind} preprocessing lacks its ZCA arrays")
    return Preprocess(
        kind=kind, image_shape=tuple(int(s) for s in np.asarray(d["image_shape"])),
        mean_C=np.asarray(d["mean_C"], np.float32), std_C=np.asarray(d["std_C"], np.float32),
        eps=float(scalar("eps", 0.0)), reg=float(scalar("reg", 0.0)),
        layer_norm=bool(scalar("layer_norm", False)), ln_scale=float(scalar("ln_scale", 1.0)),
        rank=int(scalar("rank", 0)), **arrays)
