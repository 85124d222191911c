"""Pieces shared by the classic matchers (DC, DSA, DM, DataDAM).

- `sample_real_batch`: the class-balanced real batch every matcher consumes, (K, B, H, W, C).
- `distance_wb` / `gradient_match_loss`: DC's layer-wise gradient distance.
- `forward_features`: embeddings (input of the classifier) and post-activation block
  outputs of any registered Flax model, read with `nn.intercept_methods` so that no model
  has to be rewritten or return extra outputs.
- `per_class`: run a per-class function over the class axis, `vmap` when the network has no
  cross-example coupling, one concatenated forward when it has BatchNorm (the references
  concatenate the classes for BN nets so that the batch statistics mix all classes).
- the augmentations the matchers share (`siamese_dsa`, `fyi_flip_concat`) live in
  `jaxdd.augment`.

Reference: VICO-UoE/DatasetCondensation `utils.py` (`distance_wb`, `match_loss`,
`get_loops`, `DiffAugment` in seeded "Siamese" mode) and cvlab-yonsei/FYI `utils.py`
(`BatchAug`).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jaxdd.augment import fyi_flip_concat, parse_strategy, siamese_dsa
from jaxdd.methods.base import Distiller, Metrics, PRNGKey, SynState, check_init
from jaxdd.models import Model, Variables
from jaxdd.models.layers import to_nhwc
from jaxdd.tree import one_cpu_device, safe_norm

PyTree = Any

# The reference guards every cosine with this additive epsilon (`+ 0.000001`).
COS_EPS = 1e-6
_NORM_LAYERS = ("InstanceNorm", "BatchNorm", "LayerNorm", "GroupNorm")


# ----------------------------------------------------------------------------------------------
# Real batches
# ----------------------------------------------------------------------------------------------


def class_index_table(y_train: Any, num_classes: int) -> tuple[jax.Array, jax.Array]:
    """Host-side helper: (indices_KxM padded with 0, counts_K) of every class in y_train.

    Build it once (numpy), pass it to the jitted `sample_real_batch`.
    """
    import numpy as np

    y = np.asarray(y_train)
    per_class = [np.flatnonzero(y == c) for c in range(num_classes)]
    m = max(len(p) for p in per_class)
    table = np.zeros((num_classes, m), np.int32)
    for c, p in enumerate(per_class):
        table[c, : len(p)] = p
    return jnp.asarray(table), jnp.asarray([len(p) for p in per_class], jnp.int32)


def sample_real_batch(
    key: PRNGKey,
    data: jax.Array | tuple[jax.Array, jax.Array, jax.Array],
    batch_real: int,
) -> jax.Array:
    """B images per class without replacement -> x_real_KxBxHWC (pure, jittable).

    `data` is either x_by_class_KxNxHWC (equal class sizes) or a tuple
    (x_train_NHWC, class_indices_KxM, class_counts_K) as built by `class_index_table`
    (rows padded; only the first count_k entries of row k are valid). As the reference
    `get_images(c, n)` (`permutation(indices_class[c])[:n]`); needs batch_real <= count_k.
    """
    if isinstance(data, (tuple, list)):
        x_train, table_KxM, counts_K = data
    else:
        k, n = data.shape[:2]
        x_train = data.reshape(k * n, *data.shape[2:])
        table_KxM = jnp.arange(k * n, dtype=jnp.int32).reshape(k, n)
        counts_K = jnp.full((k,), n, jnp.int32)
    num_classes, m = table_KxM.shape
    if batch_real > m:
        raise ValueError(f"batch_real={batch_real} exceeds the largest class ({m} images)")

    def one(k_c, row_M, count):
        # A uniform random permutation of the valid slots: sort i.i.d. uniforms, push the
        # padding to the end with +inf.
        u_M = jax.random.uniform(k_c, (m,))
        u_M = jnp.where(jnp.arange(m) < count, u_M, jnp.inf)
        pick_B = jnp.argsort(u_M)[:batch_real]
        return row_M[pick_B]

    idx_KxB = jax.vmap(one)(jax.random.split(key, num_classes), table_KxM, counts_K)
    return x_train[idx_KxB]


class RealBatch(NamedTuple):
    """The step's `batch` for every classic matcher (a bare array works too)."""

    x_real_KxBxHWC: jax.Array  # B real images of each of the K classes


def real_images(batch: RealBatch | jax.Array) -> jax.Array:
    return batch.x_real_KxBxHWC if isinstance(batch, RealBatch) else batch


def syn_by_class(x_syn_NHWC: jax.Array, num_classes: int) -> jax.Array:
    """(K * ipc, H, W, C) ordered by class -> (K, ipc, H, W, C)."""
    n = x_syn_NHWC.shape[0]
    if n % num_classes:
        raise ValueError(f"{n} synthetic images are not a multiple of {num_classes} classes")
    return x_syn_NHWC.reshape(num_classes, n // num_classes, *x_syn_NHWC.shape[1:])


def hard_labels(num_classes: int, ipc: int) -> jax.Array:
    """[0]*ipc + [1]*ipc + ... : the label layout every classic matcher assumes."""
    return jnp.repeat(jnp.arange(num_classes, dtype=jnp.int32), ipc)


# ----------------------------------------------------------------------------------------------
# Feature extraction
# ----------------------------------------------------------------------------------------------


class Features(NamedTuple):
    """What one forward pass exposes to the matchers."""

    logits_BxK: jax.Array
    emb_BxD: jax.Array  # input of the classifier (the last top-level submodule)
    blocks: tuple[jax.Array, ...]  # post-ReLU output of every spatial block, in order (B,H,W,C)
    variables: Variables  # with updated BN statistics when train=True


def forward_features(model: Model, variables: Variables, x_NHWC: jax.Array,
                     train: bool) -> Features:
    """Forward pass that also returns the embedding and the block activations.

    Read with `nn.intercept_methods` from the calls of the model's top-level submodules:
    - embedding = input of the last top-level call (the classifier in every jaxdd model;
      for ConvNet the flattened pooled features, as the reference `embed`);
    - blocks: top-level calls are grouped into blocks, a new block starting at every call
      that is not a normalisation layer (conv + norm, a residual block, ...); the block
      activation is ReLU(output of its last call), which for ConvNet is exactly the output
      of the block's ReLU (what DataDAM hooks), for ResNet the residual block output.
      Non-spatial (2-D) outputs (MLP) are not blocks.
    train=True uses batch statistics (the references' `net.train()`).
    """
    calls: list[tuple[str, jax.Array, jax.Array]] = []

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        mod = context.module
        if context.method_name == "__call__" and len(mod.path) == 1:
            calls.append((type(mod).__name__, to_nhwc(mod, args[0]), to_nhwc(mod, out)))
        return out

    with nn.intercept_methods(interceptor):
        if train:
            logits, new_vars = model.apply_train(variables, x_NHWC)
        else:
            logits, new_vars = model.apply(variables, x_NHWC), variables
    if not calls:
        raise ValueError(f"model {model.name!r} has no top-level submodules to read")
    emb = calls[-1][1]
    emb = emb.reshape(emb.shape[0], -1)

    groups: list[list[jax.Array]] = []
    for name, _, out in calls[:-1]:
        if name in _NORM_LAYERS and groups:
            groups[-1].append(out)
        else:
            groups.append([out])
    blocks = tuple(jax.nn.relu(g[-1]) for g in groups if g[-1].ndim == 4)
    return Features(logits, emb, blocks, new_vars)


# None: `over_classes` picks map or vmap as below; "map" / "vmap" force one (tests, and the
# FLOP count of benchmarks/stages_vs_torch.py: XLA's cost analysis counts a loop body once).
CLASS_LOOP: str | None = None


def over_classes(fn: Callable, *xs: Any) -> Any:
    """fn(*xs) over the leading (class) axis of every argument: `lax.map` on one CPU device,
    `vmap` otherwise.

    On XLA:CPU a map is 2-4x faster than a vmap here (one class's images at a time keep the
    activations and im2col patch matrices ~K times smaller; under a vmap a `lax.switch` on
    a per-class index also computes every branch). With several devices the vmap stays, so
    GSPMD can split the classes over the mesh, and on GPU/TPU one batched program is the
    faster one. Both give the same values (tested).
    """
    mode = CLASS_LOOP or ("map" if one_cpu_device() else "vmap")
    if mode == "map":
        return jax.lax.map(lambda a: fn(*a), xs)
    return jax.vmap(fn)(*xs)


def prepare_pairs(x_real_KxBxHWC: jax.Array, x_syn_KxIxHWC: jax.Array, key: PRNGKey,
                  dsa_strategy: str, fyi: bool) -> tuple[jax.Array, jax.Array]:
    """FYI mirror of the synthetic images, then one siamese DSA draw per class (key
    split(key, K)[c]) on class c's real and synthetic batches, as DC/DSA/DM/DataDAM do.

    The classes go through `over_classes`: in a map each class runs only its own DSA family;
    under a vmap the family index is batched, so `lax.switch` becomes a select and XLA
    computes every family for every class. The same values either way (tested).
    """
    if fyi:
        x_syn_KxIxHWC = jax.vmap(fyi_flip_concat)(x_syn_KxIxHWC)
    if parse_strategy(dsa_strategy):
        keys_K = jax.random.split(key, x_real_KxBxHWC.shape[0])
        aug = lambda k, r, s: siamese_dsa(k, r, s, strategy=dsa_strategy)
        x_real_KxBxHWC, x_syn_KxIxHWC = over_classes(aug, keys_K, x_real_KxBxHWC, x_syn_KxIxHWC)
    return x_real_KxBxHWC, x_syn_KxIxHWC


def per_class(fn: Callable[[jax.Array], Any], x_KxBx: jax.Array, coupled: bool) -> Any:
    """fn over the class axis -> outputs with a leading K axis.

    coupled=False (no BatchNorm): `over_classes` (what the reference's Python loop over
    classes computes; a map on one CPU device). coupled=True (BatchNorm in train mode): one forward of the K*B images concatenated,
    reshaped back, as the reference does for BN nets (main_DM.py ConvNetBN branch,
    main_DataDAM.py), so that the batch statistics mix all classes.
    """
    if not coupled:
        return over_classes(fn, x_KxBx)
    k, b = x_KxBx.shape[:2]
    out = fn(x_KxBx.reshape(k * b, *x_KxBx.shape[2:]))
    return jax.tree.map(lambda a: a.reshape(k, b, *a.shape[1:]), out)


# ----------------------------------------------------------------------------------------------
# Gradient distance (DC)
# ----------------------------------------------------------------------------------------------



def distance_wb(gw_real: jax.Array, gw_syn: jax.Array) -> jax.Array:
    """DC eq. (10): sum over output units i of 1 - cos(g_real[i], g_syn[i]).

    Flax keeps the output units on the LAST axis (conv HWIO, dense IO), so each gradient is
    reshaped to (out, everything else), the PyTorch (out, in*h*w) of the reference. 1-D
    leaves (biases, norm scales) contribute 0, as in the reference.
    """
    if gw_real.ndim <= 1:
        return jnp.zeros((), gw_real.dtype)
    out = gw_real.shape[-1]
    a = gw_real.reshape(-1, out).T
    b = gw_syn.reshape(-1, out).T
    cos = jnp.sum(a * b, -1) / (safe_norm(a, axis=-1) * safe_norm(b, axis=-1) + COS_EPS)
    return jnp.sum(1.0 - cos)


MATCH_METRICS = ("ours", "mse", "cos")


def gradient_match_loss(gw_real: PyTree, gw_syn: PyTree, metric: str = "ours") -> jax.Array:
    """Reference `match_loss`: 'ours' = sum of `distance_wb` over layers; 'mse' = squared
    distance of the flattened gradients; 'cos' = 1 - cosine of the flattened gradients."""
    real, syn = jax.tree.leaves(gw_real), jax.tree.leaves(gw_syn)
    if metric == "ours":
        return sum((distance_wb(r, s) for r, s in zip(real, syn)), jnp.zeros(()))
    vr = jnp.concatenate([r.reshape(-1) for r in real])
    vs = jnp.concatenate([s.reshape(-1) for s in syn])
    if metric == "mse":
        return jnp.sum((vs - vr) ** 2)
    if metric == "cos":
        return 1.0 - jnp.sum(vr * vs) / (safe_norm(vr) * safe_norm(vs) + COS_EPS)
    raise ValueError(f"unknown gradient distance {metric!r}; use one of {MATCH_METRICS}")


def mean_sq_distance(real_KxBxD: jax.Array, syn_KxIxD: jax.Array) -> jax.Array:
    """sum_k ||mean_b real[k] - mean_i syn[k]||^2: DM eq. (4)-(5) with the empirical MMD of a
    linear kernel; also DataDAM's "MSE_B" error. Returns the per-class terms (K,)."""
    diff = real_KxBxD.mean(1) - syn_KxIxD.mean(1)
    return jnp.sum(diff.reshape(diff.shape[0], -1) ** 2, axis=-1)


def ensure_same_classes(x_real_KxBxHWC: jax.Array, num_classes: int) -> None:
    if x_real_KxBxHWC.ndim != 5 or x_real_KxBxHWC.shape[0] != num_classes:
        raise ValueError(f"expected real batch (K={num_classes}, B, H, W, C), "
                         f"got {x_real_KxBxHWC.shape}")



__all__: Sequence[str] = [
    "RealBatch", "real_images", "Features", "forward_features", "per_class", "sample_real_batch", "class_index_table",
    "syn_by_class", "hard_labels", "distance_wb",
    "gradient_match_loss", "mean_sq_distance", "MATCH_METRICS",
]


class ImageSGDState(NamedTuple):
    """State of the matchers that only move pixels (DM, DataDAM)."""

    syn: SynState  # images (K*ipc, H, W, C) ordered by class, hard labels, log_lr=None
    opt_img: optax.OptState  # momentum buffer of the images
    iteration: jax.Array  # int32, steps done


def make_random_net_matcher(lr_img: float, momentum_img: float, model: Model, num_classes: int,
                            loss_fn: Callable[..., tuple[jax.Array, dict]]) -> Distiller:
    """A distiller that draws a fresh random network every step and takes one SGD step on
    the images against `loss_fn(variables, x_real_KxBxHWC, x_syn_KxIxHWC, key) -> (loss,
    extra_metrics)` (DM: mean embeddings; DataDAM: attention maps + embeddings)."""
    tx = optax.sgd(lr_img, momentum=momentum_img or None)

    def init(key: PRNGKey, x_init_NHWC: jax.Array, y_init: jax.Array) -> ImageSGDState:
        check_init(x_init_NHWC, y_init)
        del key  # no randomness of its own
        syn_by_class(x_init_NHWC, num_classes)  # validates the layout
        x = jnp.asarray(x_init_NHWC, jnp.float32)
        return ImageSGDState(SynState(x, jnp.asarray(y_init, jnp.int32), None), tx.init(x),
                             jnp.zeros((), jnp.int32))

    def step(state: ImageSGDState, batch: RealBatch | jax.Array, key: PRNGKey
             ) -> tuple[ImageSGDState, Metrics]:
        x_real = real_images(batch)
        ensure_same_classes(x_real, num_classes)
        k_net, k_aug = jax.random.split(key)
        variables = model.init(k_net)  # a new random network every iteration
        objective = lambda x: loss_fn(variables, x_real, syn_by_class(x, num_classes), k_aug)
        x = state.syn.x_syn_NHWC
        (loss, extra), g = jax.value_and_grad(objective, has_aux=True)(x)
        updates, opt_img = tx.update(g, state.opt_img, x)
        new = ImageSGDState(state.syn._replace(x_syn_NHWC=optax.apply_updates(x, updates)),
                            opt_img, state.iteration + 1)
        metrics = {"loss": loss, "loss_per_class": loss / num_classes, **extra,
                   "grad_norm": optax.tree.norm(g)}
        return new, metrics

    return Distiller(init, step)
