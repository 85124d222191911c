"""MTT-family trajectory matching (MTT, TESLA labels, DATM, FTD) as a `Distiller`.

One outer iteration (spec section 2): given an expert segment (theta_0 = traj[s],
theta_target = traj[s + M]) run N SGD steps on the synthetic set from theta_0, match
theta_N to theta_target with the normalised distance of `param_distance_loss`, and update
the images, the inner step size and (DATM) the label logits with SGD + momentum.

The driver chooses the expert and start epoch (`sample_segment_index`, `datm_upper_bound`)
and passes the segment as the step's `batch`; `step` itself is pure and jittable.

Several windows per step (`MTTConfig.windows_per_step = W > 1`): the batch holds W segments
(leaves with a leading axis W, `sample_windows`), the step matches each from its own key
(`jax.random.split(key, W)`: window w's minibatches and augmentations), vmapped over the
windows, and updates with the mean loss and the mean gradient. W = 1 is the single-window
program, unchanged.

Learned step size. `SynState.log_lr` stores log(alpha). How it is optimised is set by
`MTTConfig.lr_space`:
- "linear" (default): exactly the references' update, SGD(lr_lr, momentum 0.5) on alpha itself
  with dL/dalpha = (dL/dlog_lr) / alpha, followed by a clip alpha >= lr_min. The reference
  `lr_lr` values keep their meaning; the clip is the positivity guard the references lack.
- "log": SGD(lr_lr / lr_init^2, momentum 0.5) on log(alpha). Near alpha = lr_init this is
  the reference step to first order (d log alpha = d alpha / alpha and dL/dlog_lr =
  alpha dL/dalpha), and it is scale-free and positive by construction afterwards (alpha is
  still floored at lr_min so that it cannot underflow to 0).

AST options (Shen et al., "AST: Distilling Dataset through Alignment with Smooth and
High-Quality Expert Trajectories"; reference shenjiyuan123/AST-Alignment-with-Smooth-Expert
`distill.py`), all off by default (then the program is the MTT one, unchanged):
- `inner_momentum` (reference `--mom 0.9`): heavy-ball inner SGD, b <- m b + g_i,
  theta <- theta - alpha b (b_0 = g_0).
- `ast_intermediate` (`--agg_middle_loss`): add, with weight 1, the normalised distance of
  theta at inner step (N // M) i to the expert at epoch s + i, i = 1..M-1 (`tm_grad.
  intermediate_loss`; each divided by ||theta_0 - traj[s+i]||^2).
- `ast_perturb` (`--weight_perturb`, alpha 1): theta_0 <- w + alpha (d / ||d||_F) * w per
  4-D (convolution) kernel, d ~ N(0, 1) elementwise from the window key; the perturbed
  theta_0 is also the one in the denominators (as the reference).
- `ast_balance` (`--balance_loss`): inner CE scaled by c(s) = log_5(s - h + 8) for s >= h
  and 1 / log_5(h - s + 8) below, h = max_start // 2. A constant factor on the CE scales
  every g_i, so it is applied as alpha c(s) (same loss, same gradients; alpha stays unscaled).
- `init_kmeans` (`--pix_init avg`): representative initial images, chosen by the pipeline
  with `kmeans_representatives` on an expert's final-epoch logits.
Left out: the reference's GAN/texture initialisations, the halving of lr_img at mid-run
and its commented-out feature-alignment loss.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable, Literal, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdd.augment import DSA_DEFAULT
from jaxdd.methods.base import Distiller, Metrics, PRNGKey, PyTree, SynState, check_init
from jaxdd.methods.tm_grad import (
    GRAD_MODES,
    ApplyFn,
    AugmentFn,
    MatchingGrads,
    identity_augment,
    intermediate_steps,
    make_inner_schedule,
    matching_loss_and_grads,
    param_distance_loss,
)
from jaxdd.models import chunked

__all__ = [
    "MTTConfig",
    "MTTState",
    "ExpertSegment",
    "make_mtt",
    "sample_segment_index",
    "sample_windows",
    "window_loss_and_grads",
    "datm_upper_bound",
    "datm_init_labels",
    "datm_pick_correct",
    "tesla_assign_labels",
    "matching_loss_and_grads",
    "param_distance_loss",
    "make_inner_schedule",
    "ast_perturb_weights",
    "ast_balance_factor",
    "kmeans_representatives",
]

LABEL_MODES: tuple[str, ...] = ("hard", "tesla", "learned")
# Most chunks `image_chunks="auto"` uses: the inner loop is unrolled, so compile time grows
# with the chunk count; 4 chunks ran as fast as 8 (width 128: 0.80 vs 0.82 of the whole
# batch) at a third of the compile time (benchmarks/results/chunks_cpu.json).
AUTO_MAX_CHUNKS = 4


@dataclasses.dataclass(frozen=True)
class MTTConfig:
    """Hyper-parameters of one MTT-family run. Defaults are the MTT reference (distill.py)."""

    syn_steps: int = 20  # N: inner SGD steps on the synthetic set per outer iteration
    expert_epochs: int = 3  # M: target checkpoint is M expert epochs after the start
    min_start: int = 0  # smallest start epoch s (inclusive) [epochs]
    max_start: int = 25  # start epoch s is drawn from [min_start, max_start) [epochs]
    batch_syn: int | None = None  # synthetic images per inner step; None = all
    lr_img: float = 1000.0  # SGD step size on the synthetic images (momentum 0.5)
    lr_lr: float = 1e-5  # SGD step size on the inner step size alpha (momentum 0.5); see lr_space
    lr_y: float = 2.0  # SGD step size on learned label logits (momentum 0.9); DATM only
    lr_init: float = 0.01  # initial alpha (the references' lr_teacher = expert lr)
    lr_space: Literal["linear", "log"] = "linear"  # how alpha is optimised (module docstring)
    lr_min: float = 1e-8  # lower clip for alpha (keeps alpha > 0, in both lr_spaces)
    momentum_img: float = 0.5  # momentum of the image optimiser
    momentum_lr: float = 0.5  # momentum of the step-size optimiser
    momentum_y: float = 0.9  # momentum of the label-logit optimiser (DATM)
    grad_mode: Literal["bptt", "remat", "tesla"] = "remat"  # gradient of the matching loss
    # lax.scan unroll of the inner loop. Fully unrolled (True), XLA keeps bptt-sized
    # temporaries in every mode (measured, conv width 32, 64 imgs, N=20: rolled remat 12 MB vs
    # bptt 88 MB; unroll=4 remat 26 MB; unroll=True all modes 110-140 MB). With the im2col
    # convolutions the rolled scan is as fast on XLA:CPU (Fashion-MNIST cpu preset: 1.14 s per
    # outer step either way, compile 7 vs 21 s), so the presets keep the rolled default (AST's
    # cpu preset still unrolls: not timed rolled).
    unroll: int | bool = 1
    # Chunks the student's forward pass splits each inner batch into (`models.chunked`: the
    # same function, chunk by chunk; faster on CPU), applied by `make_mtt`. "auto": the CLI
    # pipeline resolves it with `models.auto_chunks` (chunks on a single CPU device only);
    # `make_mtt` with a bare apply_fn cannot see the model and runs the whole batch. 1 = off.
    image_chunks: int | Literal["auto"] = "auto"
    label_mode: Literal["hard", "tesla", "learned"] = "hard"  # hard ids / expert-assigned / DATM
    # DATM (used by the pipeline): the expert checkpoint that initialises learned label logits
    # and picks the images of `init_correct_only`: "final" = each expert's last epoch (DATM's
    # Label_Model_Timestamp = -1); "window" = epoch max_start + expert_epochs (the last one
    # the matching loop loads; no extra read).
    label_expert_epoch: Literal["final", "window"] = "final"
    # DATM pix_init = samples_predicted_correctly: initialise from real images of each class
    # that an expert (at label_expert_epoch) classifies correctly (`datm_pick_correct`).
    init_correct_only: bool = False
    ema_decay: float | None = None  # FTD: decay of the EMA of synthetic images; None = off
    max_loss: float | None = None  # skip the update when loss > max_loss (DATM: 1.0); None = off
    current_max_start: int | None = None  # DATM: initial upper bound of the start window [epochs]
    expansion_end: int | None = None  # DATM: iteration at which the window reaches max_start
    dsa_strategy: str = DSA_DEFAULT  # DSA ops; used by the driver
    iterations: int = 5000  # outer iterations (MTT 5000; TESLA, DATM 10000); used by the driver
    # W: independent (expert, start epoch) windows matched per outer iteration, vmapped; the
    # update uses their mean loss and mean gradient. 1 = one window (the references). Costs W x
    # the compute and W x the memory of one window's gradient (README, trajectory matching).
    windows_per_step: int = 1
    # AST (module docstring; all off = MTT). inner_momentum: heavy-ball momentum of the inner
    # SGD (AST 0.9); ast_intermediate: match theta at inner steps (N//M) i to expert epochs
    # s + i too; ast_perturb: alpha of the perturbation of theta_0's conv kernels (AST 1.0);
    # ast_balance: inner CE scaled by the start-epoch factor c(s); init_kmeans: initial images
    # = nearest real images to k-means centres of an expert's logits (init must be 'real').
    inner_momentum: float = 0.0
    ast_intermediate: bool = False
    ast_perturb: float = 0.0
    ast_balance: bool = False
    init_kmeans: bool = False

    def __post_init__(self):
        if self.grad_mode not in GRAD_MODES:
            raise ValueError(f"grad_mode={self.grad_mode!r}; expected one of {GRAD_MODES}")
        if self.label_mode not in LABEL_MODES:
            raise ValueError(f"label_mode={self.label_mode!r}; expected one of {LABEL_MODES}")
        if self.lr_space not in ("linear", "log"):
            raise ValueError(f"lr_space={self.lr_space!r}; expected 'linear' or 'log'")
        if self.image_chunks != "auto" and not (type(self.image_chunks) is int and self.image_chunks >= 1):
            raise ValueError(f"image_chunks={self.image_chunks!r}; expected 'auto' or an int >= 1 (1 = off)")
        if self.label_expert_epoch not in ("final", "window"):
            raise ValueError(f"label_expert_epoch={self.label_expert_epoch!r}; expected 'final' or 'window'")
        if not (type(self.windows_per_step) is int and self.windows_per_step >= 1):
            raise ValueError(f"windows_per_step={self.windows_per_step!r}; expected an int >= 1")
        if not 0.0 <= self.inner_momentum < 1.0:
            raise ValueError(f"inner_momentum={self.inner_momentum!r}; expected a value in [0, 1)")
        if self.ast_perturb < 0:
            raise ValueError(f"ast_perturb={self.ast_perturb!r}; expected >= 0 (0 = off)")
        if self.grad_mode == "tesla" and (self.inner_momentum or self.ast_intermediate):
            raise ValueError("grad_mode='tesla' assumes plain SGD and one target; use grad_mode="
                             "'remat' with inner_momentum or ast_intermediate")
        if self.ast_intermediate and self.syn_steps < self.expert_epochs:
            raise ValueError(f"ast_intermediate needs syn_steps >= expert_epochs, got "
                             f"{self.syn_steps} < {self.expert_epochs}")
        if self.init_kmeans and self.init_correct_only:
            raise ValueError("choose one initialisation: init_kmeans or init_correct_only")
        if not 0 <= self.min_start < self.max_start:
            raise ValueError(f"need 0 <= min_start < max_start, got {self.min_start}, {self.max_start}")


class MTTState(NamedTuple):
    """All state of the MTT distiller; a plain pytree (absent parts are None)."""

    syn: SynState  # images, labels (int ids, or (S, K) logits for tesla/learned), log alpha
    opt_img: optax.OptState  # momentum of the image optimiser
    opt_lr: optax.OptState  # momentum of the step-size optimiser
    opt_y: optax.OptState | None  # momentum of the label-logit optimiser (label_mode="learned")
    x_ema_NHWC: jax.Array | None  # FTD EMA of the images (ema_decay set), else None
    iteration: jax.Array  # int32 count of completed iterations (loss-gated ones included)


class ExpertSegment(NamedTuple):
    """The step's `batch`: one expert segment (with `windows_per_step = W > 1`: W segments,
    every leaf with a leading axis W). A mapping with these keys works too."""

    theta_0: PyTree  # expert parameters at start epoch s
    theta_target: PyTree  # expert parameters at epoch s + expert_epochs
    theta_mid: PyTree = None  # AST ast_intermediate: epochs s+1 .. s+M-1, leaves (M-1, ...)
    start: jax.Array | None = None  # AST ast_balance: the start epoch s (int32)


def _segment(batch: ExpertSegment | Mapping[str, PyTree]) -> tuple[PyTree, PyTree]:
    if isinstance(batch, Mapping):
        return batch["theta_0"], batch["theta_target"]
    return batch.theta_0, batch.theta_target


def _segment_extras(batch: ExpertSegment | Mapping[str, PyTree]) -> tuple[PyTree, jax.Array | None]:
    if isinstance(batch, Mapping):
        return batch.get("theta_mid"), batch.get("start")
    return batch.theta_mid, batch.start


# ----------------------------------------------------------------------------------------------
# AST pieces (pure)
# ----------------------------------------------------------------------------------------------


def ast_perturb_weights(key: PRNGKey, theta: PyTree, alpha: float | jax.Array) -> PyTree:
    """AST weight perturbation: each 4-D leaf (conv kernel) w -> w + alpha (d/||d||_F) * w,
    d ~ N(0, 1) elementwise (one key per leaf); other leaves unchanged. alpha = 0: theta."""
    leaves, treedef = jax.tree.flatten(theta)
    keys = jax.random.split(key, max(len(leaves), 1))
    out = []
    for k, w in zip(keys, leaves):
        if w.ndim == 4:
            d = jax.random.normal(k, w.shape, w.dtype)
            w = w + alpha * (d / jnp.linalg.norm(d.reshape(-1))) * w
        out.append(w)
    return jax.tree.unflatten(treedef, out)


def ast_balance_factor(start: int | jax.Array, max_start: int) -> jax.Array:
    """AST balanced inner loss: c(s) = log_5(s - h + 8) if s >= h else 1 / log_5(h - s + 8),
    h = max_start // 2 (late windows weigh more, early ones less)."""
    h = max_start // 2
    s = jnp.asarray(start).astype(jnp.result_type(float))  # float64 under x64
    log5 = lambda v: jnp.log(v) / jnp.log(5.0)  # noqa: E731
    return jnp.where(s >= h, log5(s - h + 8.0), 1.0 / log5(h - s + 8.0))


def kmeans_representatives(key: PRNGKey, feats_NxD: jax.Array, k: int, iters: int = 30) -> jax.Array:
    """AST representative initialisation: Lloyd's k-means (k centres initialised at k distinct
    random points from `key`, `iters` iterations; an empty cluster keeps its centre), then
    the nearest point to each centre, all k distinct. Returns (k,) indices into feats."""
    n = feats_NxD.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k}, {n} points")
    f = jnp.asarray(feats_NxD, jnp.float32)

    def sq_dist(c_KxD):
        return (jnp.sum(f * f, 1)[:, None] - 2 * f @ c_KxD.T + jnp.sum(c_KxD * c_KxD, 1)[None, :])

    def lloyd(_, c_KxD):
        assign_N = jnp.argmin(sq_dist(c_KxD), axis=1)
        one_hot_NxK = jax.nn.one_hot(assign_N, k, dtype=f.dtype)
        count_K = one_hot_NxK.sum(0)
        mean_KxD = (one_hot_NxK.T @ f) / jnp.maximum(count_K, 1.0)[:, None]
        return jnp.where((count_K > 0)[:, None], mean_KxD, c_KxD)

    centres = jax.lax.fori_loop(0, iters, lloyd, f[jax.random.permutation(key, n)[:k]])
    d_NxK = sq_dist(centres)

    def pick(taken_N, d_N):
        i = jnp.argmin(jnp.where(taken_N, jnp.inf, d_N))
        return taken_N.at[i].set(True), i

    _, idx_K = jax.lax.scan(pick, jnp.zeros((n,), bool), d_NxK.T)
    return idx_K


# ----------------------------------------------------------------------------------------------
# Helpers for the driver (pure)
# ----------------------------------------------------------------------------------------------


def sample_segment_index(
    key: PRNGKey, num_experts: int, min_start: int | jax.Array, upper: int | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(expert, start): expert uniform in [0, num_experts), start uniform in [min_start, upper)."""
    k_e, k_s = jax.random.split(key)
    expert = jax.random.randint(k_e, (), 0, num_experts)
    start = jax.random.randint(k_s, (), min_start, upper)
    return expert, start


def sample_windows(
    key: PRNGKey, windows: int, num_experts: int, min_start: int | jax.Array, upper: int | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(expert, start) of `windows` independent windows (drawn with replacement).

    windows = 1: `sample_segment_index(key, ...)` itself (scalars). Otherwise window w is
    `sample_segment_index(jax.random.split(key, windows)[w], ...)`; returns (W,) arrays.
    """
    if windows == 1:
        return sample_segment_index(key, num_experts, min_start, upper)
    return jax.vmap(lambda k: sample_segment_index(k, num_experts, min_start, upper))(
        jax.random.split(key, windows))


def datm_upper_bound(
    iteration: int | jax.Array, current_max_start: int, max_start: int, expansion_end: int | None
) -> int | jax.Array:
    """DATM sequential generation: the start-epoch upper bound grows linearly with iteration.

    upper(it) = min(cur + floor((max - cur) * it / expansion_end), max), as in DATM; it equals
    `current_max_start` at it = 0 and `max_start` from it = expansion_end on. Integer
    arithmetic, so it works on python ints and on traced int arrays alike.
    """
    if not expansion_end:
        return max_start
    grown = current_max_start + ((max_start - current_max_start) * iteration) // expansion_end
    return jnp.minimum(grown, max_start) if isinstance(grown, jax.Array) else min(grown, max_start)


def tesla_assign_labels(apply_fn: ApplyFn, theta_expert: PyTree, x_NHWC: jax.Array) -> jax.Array:
    """TESLA soft labels as log-probabilities (S, K): log_softmax(expert(x)); not learned."""
    return jax.lax.stop_gradient(jax.nn.log_softmax(apply_fn(theta_expert, x_NHWC), axis=-1))


def datm_init_labels(
    apply_fn: ApplyFn, experts_params_E: PyTree, x_NHWC: jax.Array, y_N: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """DATM label-logit initialisation over stacked expert params (leading axis E).

    Returns (logits_NxK, num_correct_N): logits_NxK[n] is the average of the logits of the
    experts that classify image n correctly (DATM: every expert's last checkpoint, see
    `MTTConfig.label_expert_epoch`); num_correct_N counts them. Images with num_correct_N == 0
    get the average over all experts (DATM would divide by zero); `datm_pick_correct` picks
    only images with num_correct_N > 0.
    """
    # One expert at a time (lax.map, as DATM's loop): a vmap over 100 experts would hold
    # 100x the activations (ConvNet-D3, 1000 images: ~52 GB in the first layer alone).
    logits_ExNxK = jax.lax.map(lambda p: apply_fn(p, x_NHWC), experts_params_E)
    correct_ExN = jnp.argmax(logits_ExNxK, axis=-1) == y_N[None, :]
    num_correct_N = jnp.sum(correct_ExN, axis=0)
    summed_NxK = jnp.sum(jnp.where(correct_ExN[..., None], logits_ExNxK, 0.0), axis=0)
    mean_correct_NxK = summed_NxK / jnp.maximum(num_correct_N, 1)[:, None]
    logits_NxK = jnp.where((num_correct_N > 0)[:, None], mean_correct_NxK, jnp.mean(logits_ExNxK, axis=0))
    return logits_NxK, num_correct_N


DATM_PICK_CHUNK = 256  # images per expert forward while picking (DATM.py's batch_size)


def datm_pick_correct(key: PRNGKey, class_indices: Sequence[np.ndarray], ipc: int,
                      predict: Callable[[int, np.ndarray], np.ndarray], num_experts: int,
                      chunk: int = DATM_PICK_CHUNK) -> np.ndarray:
    """DATM's initial images (pix_init = samples_predicted_correctly), as training indices.

    Class by class: `ipc` images that expert 0 classifies correctly, uniform among those (the
    first correct ones of a random order, scanned `chunk` at a time so that only what is needed
    is evaluated); a class that runs out goes on to expert 1, 2, ... as DATM does.
    `predict(e, idx)` = expert e's predicted classes of training images idx. Host-side;
    returns (K * ipc,) indices, class-major like `data.sample_indices_per_class`.
    """
    picked = []
    for c, ix in enumerate(class_indices):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(key, c), np.asarray(ix)))
        chosen: list[int] = []
        for e in range(num_experts):
            for i in range(0, len(order), chunk):
                part = order[i:i + chunk]
                part = part[~np.isin(part, chosen)]
                if len(part):
                    chosen += part[np.asarray(predict(e, part)) == c][:ipc - len(chosen)].tolist()
                if len(chosen) == ipc:
                    break
            if len(chosen) == ipc:
                break
        if len(chosen) < ipc:
            raise ValueError(f"class {c}: only {len(chosen)} of its {len(order)} training images are "
                             f"classified correctly by any of the {num_experts} experts, need "
                             f"ipc={ipc}; train the experts longer or set mtt.init_correct_only=False")
        picked.append(chosen)
    return np.asarray(picked, np.int64).reshape(-1)


# ----------------------------------------------------------------------------------------------
# The distiller
# ----------------------------------------------------------------------------------------------


def _global_norm(x: jax.Array | None) -> jax.Array:
    return jnp.zeros(()) if x is None else optax.tree.norm(x)


def _one_window(cfg: MTTConfig, apply_fn: ApplyFn, augment_fn: AugmentFn, syn: SynState,
                theta_0: PyTree, theta_target: PyTree, key: PRNGKey, theta_mid: PyTree = None,
                start: jax.Array | None = None):
    """Loss, gradients and TESLA-assigned labels (else None) of one window under `key`."""
    x_SHWC = syn.x_syn_NHWC
    step_idx_NxB, step_keys_N = make_inner_schedule(key, x_SHWC.shape[0], cfg.syn_steps, cfg.batch_syn)
    log_lr, ast = syn.log_lr, {}
    if cfg.ast_perturb:   # its own stream: the schedule above is unchanged
        theta_0 = ast_perturb_weights(jax.random.fold_in(key, 1), theta_0, cfg.ast_perturb)
    if cfg.ast_balance:   # c(s) CE == c(s) alpha (module docstring)
        if start is None:
            raise ValueError("ast_balance needs the start epoch: pass ExpertSegment(..., start=s)")
        log_lr = log_lr + jnp.log(ast_balance_factor(start, cfg.max_start))
    if cfg.inner_momentum:
        ast["momentum"] = cfg.inner_momentum
    if cfg.ast_intermediate and cfg.expert_epochs > 1:
        if theta_mid is None:
            raise ValueError("ast_intermediate needs ExpertSegment.theta_mid (epochs s+1..s+M-1)")
        ast.update(mid_steps=intermediate_steps(cfg.syn_steps, cfg.expert_epochs), mid_targets=theta_mid)
    assigned = None
    if cfg.label_mode == "tesla":
        assigned = tesla_assign_labels(apply_fn, theta_target, x_SHWC)
        labels, label_kind = jnp.exp(assigned), "probs"
    elif cfg.label_mode == "learned":
        labels, label_kind = syn.y_syn, "logits"
    else:
        labels, label_kind = syn.y_syn, "hard"
    loss, grads = matching_loss_and_grads(
        cfg.grad_mode, apply_fn, x_SHWC, labels, log_lr, theta_0, theta_target,
        step_idx_NxB, step_keys_N, augment_fn=augment_fn, label_kind=label_kind, unroll=cfg.unroll,
        **ast)
    return loss, grads, assigned


def window_loss_and_grads(
    config: MTTConfig,
    apply_fn: ApplyFn,
    syn: SynState,
    segment: ExpertSegment | Mapping[str, PyTree],
    key: PRNGKey,
    augment_fn: AugmentFn = identity_augment,
) -> tuple[jax.Array, MatchingGrads, jax.Array]:
    """Matching loss, gradients and the labels to store, over `config.windows_per_step` windows.

    W = 1: one window; its schedule comes from `key`. W > 1: `segment` leaves carry a leading
    axis W; window w uses `jax.random.split(key, W)[w]`; the W windows are one `vmap` (of the
    `bptt`, `remat` or `tesla` gradient alike) and loss and gradients are their means. Labels:
    the stored ones, or for label_mode="tesla" the assigned log-probabilities (window 0's when
    W > 1; each window matches with its own target expert's labels).
    """
    cfg = config
    theta_0, theta_target = _segment(segment)
    theta_mid, start = _segment_extras(segment)
    one = functools.partial(_one_window, cfg, apply_fn, augment_fn, syn)
    if cfg.windows_per_step == 1:
        loss, grads, assigned = one(theta_0, theta_target, key, theta_mid, start)
        return loss, grads, syn.y_syn if assigned is None else assigned
    keys_W = jax.random.split(key, cfg.windows_per_step)
    loss_W, grads_W, assigned_W = jax.vmap(one)(theta_0, theta_target, keys_W, theta_mid, start)
    grads = jax.tree.map(lambda g: jnp.mean(g, axis=0), grads_W)
    return jnp.mean(loss_W), grads, syn.y_syn if assigned_W is None else assigned_W[0]


def make_mtt(
    config: MTTConfig,
    apply_fn: ApplyFn,
    augment_fn: AugmentFn = identity_augment,
) -> Distiller:
    """Build the MTT-family distiller: `init(key, x_init_NHWC, y_init, lr_init=None)` and
    `step(state, segment, key) -> (state, metrics)`.

    `augment_fn(key, x_NHWC)` must be deterministic given the key (e.g. a partial of
    `jaxdd.augment.dsa`), so that `remat`/`tesla` recomputation replays it.
    Labels by `config.label_mode`: "hard" takes int ids (S,); "learned" (DATM) takes label
    logits (S, K), e.g. from `datm_init_labels`; "tesla" takes (S, K) logits too (e.g.
    `tesla_assign_labels` with any expert) and each step overwrites them with
    log_softmax(theta_target(x_syn)), so the stored labels are the latest assigned ones.
    """
    cfg = config
    apply_fn = chunked(apply_fn, 1 if cfg.image_chunks == "auto" else cfg.image_chunks)
    opt_img = optax.sgd(cfg.lr_img, momentum=cfg.momentum_img)
    lr_step = cfg.lr_lr if cfg.lr_space == "linear" else cfg.lr_lr / cfg.lr_init**2
    opt_lr = optax.sgd(lr_step, momentum=cfg.momentum_lr)
    opt_y = optax.sgd(cfg.lr_y, momentum=cfg.momentum_y)
    learned = cfg.label_mode == "learned"

    def init(key: PRNGKey, x_init_NHWC: jax.Array, y_init: jax.Array, lr_init: float | None = None) -> MTTState:
        """Wrap the initial set; `key` is unused (initial images/labels come from the caller)."""
        del key
        check_init(x_init_NHWC, y_init)
        y_init = jnp.asarray(y_init)
        is_int = jnp.issubdtype(y_init.dtype, jnp.integer)
        if cfg.label_mode == "hard" and not (is_int and y_init.ndim == 1):
            raise ValueError("label_mode='hard' needs integer class ids of shape (S,)")
        if cfg.label_mode != "hard" and (is_int or y_init.ndim != 2):
            raise ValueError(f"label_mode={cfg.label_mode!r} needs float label logits of shape (S, K): "
                             "use datm_init_labels or tesla_assign_labels")
        x = jnp.asarray(x_init_NHWC)
        lr0 = cfg.lr_init if lr_init is None else lr_init
        log_lr = jnp.log(jnp.asarray(lr0, dtype=x.dtype))
        opt_lr_state = opt_lr.init(jnp.exp(log_lr) if cfg.lr_space == "linear" else log_lr)
        return MTTState(
            syn=SynState(x, y_init, log_lr),
            opt_img=opt_img.init(x),
            opt_lr=opt_lr_state,
            opt_y=opt_y.init(y_init) if learned else None,
            # a buffer of its own: the driver donates the state, and XLA refuses one buffer
            # donated twice (x_syn and x_ema)
            x_ema_NHWC=jnp.array(x, copy=True) if cfg.ema_decay is not None else None,
            iteration=jnp.zeros((), jnp.int32),
        )

    def step(state: MTTState, batch: ExpertSegment | Mapping[str, PyTree], key: PRNGKey) -> tuple[MTTState, Metrics]:
        """One outer iteration on the expert segment `batch` (W segments when
        windows_per_step = W > 1; `skip_nonfinite` keeps the state on NaN/inf)."""
        syn = state.syn
        x_SHWC = syn.x_syn_NHWC
        loss, grads, y_new = window_loss_and_grads(cfg, apply_fn, syn, batch, key, augment_fn)

        # Images: SGD(lr_img, momentum) as torch.optim.SGD (optax's trace = torch's buffer).
        upd_x, opt_img_state = opt_img.update(grads.x_syn_NHWC, state.opt_img, x_SHWC)
        x_next = optax.apply_updates(x_SHWC, upd_x)

        # Step size (module docstring): linear alpha with clip, or log alpha.
        lr = jnp.exp(syn.log_lr)
        if cfg.lr_space == "linear":
            upd_lr, opt_lr_state = opt_lr.update(grads.log_lr / lr, state.opt_lr)  # dL/dalpha
            log_lr_next = jnp.log(jnp.maximum(lr + upd_lr, cfg.lr_min))
        else:
            upd_lr, opt_lr_state = opt_lr.update(grads.log_lr, state.opt_lr)
            log_lr_next = jnp.maximum(syn.log_lr + upd_lr, jnp.log(cfg.lr_min))  # no underflow to 0

        opt_y_state = state.opt_y
        if learned:
            upd_y, opt_y_state = opt_y.update(grads.labels, state.opt_y, syn.y_syn)
            y_new = optax.apply_updates(syn.y_syn, upd_y)

        x_ema = state.x_ema_NHWC
        if cfg.ema_decay is not None:  # FTD: EMA of the images after the update
            x_ema = cfg.ema_decay * x_ema + (1.0 - cfg.ema_decay) * x_next

        candidate = MTTState(SynState(x_next, y_new, log_lr_next), opt_img_state, opt_lr_state,
                             opt_y_state, x_ema, state.iteration + 1)

        # DATM: update only when loss <= threshold; a gated step still counts as an iteration
        # (the window schedule advances). NaN/inf is `skip_nonfinite`'s job (the driver's).
        apply_update = jnp.asarray(True) if cfg.max_loss is None else loss <= cfg.max_loss
        new_state = jax.tree.map(lambda new, old: jnp.where(apply_update, new, old), candidate, state)
        new_state = new_state._replace(iteration=state.iteration + 1)

        metrics = {
            "loss": loss,
            "lr": jnp.exp(new_state.syn.log_lr),
            "grad_norm_img": _global_norm(grads.x_syn_NHWC),
            "grad_norm_log_lr": jnp.abs(grads.log_lr),
            "grad_norm_y": _global_norm(grads.labels),
            "skipped": ~apply_update,
        }
        return new_state, metrics

    return Distiller(init=init, step=step)
