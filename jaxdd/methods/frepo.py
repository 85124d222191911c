"""FRePo: dataset distillation by neural feature regression with a pool of online models
(Zhou, Nezhadarya & Ba, NeurIPS 2022).

Only the last layer of a network is trained to convergence, in closed form: with the
feature extractor f of a model from the pool (the network without its classifier, in
inference mode), the synthetic set (X_s, Y_s) and a real batch (X_t, Y_t),

    F_s = f(X_s),  F_t = f(X_t)                               (n x D, B x D)
    K_ss = F_s F_s^T,  K_ts = F_t F_s^T
    lambda = reg * tr(K_ss) / n                                (ridge relative to the kernel)
    Y_hat = K_ts (K_ss + lambda I)^-1 Y_s                      (kernel ridge regression)
    L = mean_b 1/2 ||Y_hat_b - Y_t,b||^2  [+ mean_i -min(y_i(1) - y_i(2), 1/K)]

and the images (and, by default, the labels Y_s) take one LAMB/Adam step on L; the real
features are constants. The second term (labels learned) keeps a margin of 1/K between the
two largest entries of each learned label. Targets are one-hot vectors centred by -1/K
(the synthetic ones also divided by sqrt(K/10)). Then the model that was used takes one
Adam step on the synthetic set (MSE on the synthetic labels), or, if it has already taken
more than `max_online_updates` steps, is replaced by a freshly initialised one; the next
step uses a model drawn uniformly from the pool. The pool starts with staggered step
counters (model i at i * (max_online_updates // pool_size)), so models are replaced at
different times and the pool always holds networks at different stages of training.

Reference: github.com/yongchao97/FRePo, `lib/datadistillation/frepo.py` (`nfr` l.106-112,
`lb_margin_th` l.152-157, `proto_train_step` l.165-181, `init_proto` l.73-79, the pool
l.405-416 and l.509-525) and `lib/training/metrics.py` l.47-55 (`mean_squared_loss`).

The whole pool (variables, Adam states, step counters) lives in the state, every random
choice comes from the step's key, so `step` is a pure function and a run resumed from a
checkpoint equals the uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdd.methods.base import Distiller, Metrics, PRNGKey, SynState, check_init
from jaxdd.methods.matching import forward_features
from jaxdd.models import Model, Variables

__all__ = ["FRePoConfig", "FRePoState", "FRePoBatch", "Pool", "make_frepo", "krr_predict",
           "krr_loss", "frepo_loss", "label_margin_loss", "centred_targets", "frepo_keys", "init_pool"]


@dataclasses.dataclass(frozen=True)
class FRePoConfig:
    """Defaults: FRePo's `script/distill.py` (file:line in the comments) and README command."""

    pool_size: int = 10             # online models in the pool (distill.py:72 num_nn_state)
    max_online_updates: int = 100   # online steps before a model is replaced (distill.py:72)
    reg: float = 1e-6               # ridge, relative: reg * tr(K_ss) / n (frepo.py:106,110)
    lr_syn: float = 3e-4            # images + labels step size (distill.py:63)
    syn_optimizer: Literal["lamb", "adam"] = "lamb"  # distill.py:62 (LAMB, no weight decay)
    cosine_alpha: float = 0.1       # lr_syn decays (cosine) to alpha * lr_syn over the run (frepo.py:399-400)
    learn_label: bool = True        # learn the synthetic labels too (distill.py:71)
    label_margin: bool = True       # + the 1/K margin term on learned labels (frepo.py:168)
    scale_labels: bool = True       # synthetic targets / sqrt(K/10) (distill.py:199 scale_y)
    lr_online: float = 3e-4         # Adam step of the online models (distill.py:49-50)
    batch_real: int = 1024          # real images per step, drawn uniformly (distill.py:64)
    batch_online: int = 1000        # synthetic images per online step, all if fewer (distill.py:65)
    init: Literal["real", "noise"] = "real"  # initial images (frepo.py:46 init_proto: real)
    export_labels: Literal["class", "learned"] = "learned"  # artefact labels: the learned
    # regression targets (N, K), as FRePo saves y_proto and trains its evaluation nets on them
    # with MSE (script/eval.py:129,233: evaluate with a loss="mse" protocol, `frepo_cpu`),
    # or each image's class (for cross-entropy protocols such as `cpu`)

    def __post_init__(self):
        if self.syn_optimizer not in ("lamb", "adam"):
            raise ValueError(f"syn_optimizer={self.syn_optimizer!r}; use 'lamb' or 'adam'")
        if self.init not in ("real", "noise"):
            raise ValueError(f"init={self.init!r}; use 'real' or 'noise'")
        if self.export_labels not in ("class", "learned"):
            raise ValueError(f"export_labels={self.export_labels!r}; use 'class' or 'learned'")
        if self.pool_size < 1 or self.max_online_updates < 1:
            raise ValueError("pool_size and max_online_updates must be >= 1")
        if not 0.0 <= self.cosine_alpha <= 1.0:
            raise ValueError(f"cosine_alpha={self.cosine_alpha}; use a value in [0, 1]")


class Pool(NamedTuple):
    """The online models, stacked on a leading axis of size P (pool_size)."""

    variables: Variables     # {'params': ..., ['batch_stats': ...]}, every leaf (P, ...)
    opt: optax.OptState      # Adam state of each model's params, leaves (P, ...)
    steps: jax.Array         # (P,) int32 online steps each model has taken since its init


class FRePoState(NamedTuple):
    syn: SynState            # images (N,H,W,C); y_syn: regression targets (N, K) float32
    y_class: jax.Array       # (N,) int32 class of each synthetic image (export, accuracy)
    opt_syn: optax.OptState  # LAMB/Adam state of {"x": images[, "y": labels]}
    pool: Pool
    current: jax.Array       # int32 index of the model the next step uses
    iteration: jax.Array     # int32 steps done


class FRePoBatch(NamedTuple):
    """The step's input: a real batch and its class ids."""

    x_real_BxHWC: jax.Array
    y_real_B: jax.Array


# ----------------------------------------------------------------------------------------
# Kernel ridge regression on features


def krr_predict(feat_s_NxD: jax.Array, y_s_NxK: jax.Array, feat_t_BxD: jax.Array,
                reg: float) -> jax.Array:
    """K_ts (K_ss + reg * tr(K_ss)/n I)^-1 Y_s: the predictions on the targets of the ridge
    regression fitted on the synthetic features (FRePo's `nfr`, with |reg| as there)."""
    k_ss_NxN = feat_s_NxD @ feat_s_NxD.T
    k_ts_BxN = feat_t_BxD @ feat_s_NxD.T
    n = k_ss_NxN.shape[0]
    ridge = abs(reg) * jnp.trace(k_ss_NxN) / n
    alpha_NxK = jax.scipy.linalg.solve(k_ss_NxN + ridge * jnp.eye(n, dtype=k_ss_NxN.dtype),
                                       y_s_NxK, assume_a="pos")
    return k_ts_BxN @ alpha_NxK


def krr_loss(feat_s_NxD: jax.Array, y_s_NxK: jax.Array, feat_t_BxD: jax.Array,
             y_t_BxK: jax.Array, reg: float) -> tuple[jax.Array, jax.Array]:
    """(mean_b 1/2 ||Y_hat_b - Y_t,b||^2, Y_hat): FRePo's kernel loss (metrics.py:55)."""
    pred_BxK = krr_predict(feat_s_NxD, y_s_NxK, feat_t_BxD, reg)
    return 0.5 * jnp.mean(jnp.sum((pred_BxK - y_t_BxK) ** 2, axis=-1)), pred_BxK


def label_margin_loss(y_NxK: jax.Array) -> jax.Array:
    """mean_i -min(top1(y_i) - top2(y_i), 1/K): rewards a margin up to 1/K between the two
    largest entries of each learned label (FRePo's `lb_margin_th`)."""
    top2_Nx2 = jax.lax.top_k(y_NxK, 2)[0]
    margin_N = jnp.minimum(top2_Nx2[:, 0] - top2_Nx2[:, 1], 1.0 / y_NxK.shape[-1])
    return -jnp.mean(margin_N)


def centred_targets(y_N: jax.Array, num_classes: int, scale: bool = False) -> jax.Array:
    """One-hot minus 1/K (FRePo's MSE targets); scale=True also divides by sqrt(K/10), as
    FRePo does for the initial synthetic labels."""
    y = jax.nn.one_hot(y_N, num_classes, dtype=jnp.float32) - 1.0 / num_classes
    return y / math.sqrt(num_classes / 10) if scale else y


def features(model: Model, variables: Variables, x_NHWC: jax.Array) -> jax.Array:
    """The input of the classifier (flattened), inference mode: FRePo's `feat_fc`."""
    return forward_features(model, variables, x_NHWC, train=False).emb_BxD


def frepo_loss(model: Model, variables: Variables, x_syn_NHWC: jax.Array, y_syn_NxK: jax.Array,
               feat_t_BxD: jax.Array, y_real_B: jax.Array, reg: float, label_margin: bool
               ) -> tuple[jax.Array, tuple[jax.Array, jax.Array, jax.Array]]:
    """The outer objective of one step: kernel loss of the synthetic set under the model
    `variables` against real features `feat_t_BxD` (constants) with classes `y_real_B`,
    plus the label margin term if `label_margin`. Returns (loss, (kernel, margin, KRR
    accuracy on the real batch))."""
    y_t_BxK = centred_targets(y_real_B, y_syn_NxK.shape[-1])
    kernel, pred_BxK = krr_loss(features(model, variables, x_syn_NHWC), y_syn_NxK, feat_t_BxD,
                                y_t_BxK, reg)
    margin = label_margin_loss(y_syn_NxK) if label_margin else jnp.zeros((), kernel.dtype)
    acc = jnp.mean(jnp.argmax(pred_BxK, -1) == y_real_B)
    return kernel + margin, (kernel, margin, acc)


# ----------------------------------------------------------------------------------------
# The pool of online models


def _tree_get(tree: Any, i: jax.Array) -> Any:
    return jax.tree.map(lambda a: a[i], tree)


def _tree_set(tree: Any, i: jax.Array, value: Any) -> Any:
    return jax.tree.map(lambda a, v: a.at[i].set(v), tree, value)


def init_pool(key: PRNGKey, model: Model, tx_online: optax.GradientTransformation,
              pool_size: int, max_online_updates: int) -> Pool:
    """P fresh models (key split(key, P)[i]) with staggered step counters
    i * (max_online_updates // P), as FRePo's pool (frepo.py:405-416)."""
    variables = jax.vmap(model.init)(jax.random.split(key, pool_size))
    opt = jax.vmap(tx_online.init)(variables["params"])
    steps = (max_online_updates // pool_size) * jnp.arange(pool_size, dtype=jnp.int32)
    return Pool(variables, opt, steps)


def frepo_keys(key: PRNGKey) -> tuple[PRNGKey, PRNGKey, PRNGKey]:
    """(next-model key, reset key, online-batch key) of a step: the one split `step` uses,
    so a test or a hand-written loop can reproduce a reset."""
    k_next, k_reset, k_sample = jax.random.split(key, 3)
    return k_next, k_reset, k_sample


def make_frepo(config: FRePoConfig, model: Model, num_classes: int,
               total_steps: int) -> Distiller:
    """FRePo distiller: `init(key, x_init_NHWC, y_init) -> FRePoState`,
    `step(state, FRePoBatch, key) -> (state, metrics)`.

    y_init: class ids (N,) (turned into centred targets) or targets (N, K) as they are.
    total_steps: the run's length, for the cosine decay of lr_syn.
    """
    schedule = optax.cosine_decay_schedule(config.lr_syn, max(int(total_steps), 1),
                                           alpha=config.cosine_alpha)
    tx_syn = (optax.lamb(schedule) if config.syn_optimizer == "lamb"
              else optax.adam(schedule))
    tx_online = optax.adam(config.lr_online)

    def syn_params(syn: SynState) -> dict:
        return {"x": syn.x_syn_NHWC, "y": syn.y_syn} if config.learn_label else {"x": syn.x_syn_NHWC}

    def init(key: PRNGKey, x_init_NHWC: jax.Array, y_init: jax.Array) -> FRePoState:
        check_init(x_init_NHWC, y_init)
        k_pool, k_first = jax.random.split(key)
        x = jnp.asarray(x_init_NHWC, jnp.float32)
        if y_init.ndim == 1:
            y_class = jnp.asarray(y_init, jnp.int32)
            y = centred_targets(y_class, num_classes, config.scale_labels)
        else:
            y = jnp.asarray(y_init, jnp.float32)
            y_class = jnp.argmax(y, -1).astype(jnp.int32)
        syn = SynState(x, y, None)
        pool = init_pool(k_pool, model, tx_online, config.pool_size, config.max_online_updates)
        current = jax.random.randint(k_first, (), 0, config.pool_size, jnp.int32)
        return FRePoState(syn, y_class, tx_syn.init(syn_params(syn)), pool, current,
                          jnp.zeros((), jnp.int32))

    def online_step(variables: Variables, opt: optax.OptState, x_NHWC: jax.Array,
                    y_NxK: jax.Array) -> tuple[Variables, optax.OptState]:
        """One Adam step of a pool model on synthetic data, MSE on the synthetic targets
        (training mode: BatchNorm uses and updates batch statistics)."""
        def loss_fn(params):
            logits, new_vars = model.apply_train({**variables, "params": params}, x_NHWC)
            return 0.5 * jnp.mean(jnp.sum((logits - y_NxK) ** 2, axis=-1)), new_vars

        grads, new_vars = jax.grad(loss_fn, has_aux=True)(variables["params"])
        updates, opt = tx_online.update(grads, opt, variables["params"])
        return {**new_vars, "params": optax.apply_updates(variables["params"], updates)}, opt

    def step(state: FRePoState, batch: FRePoBatch, key: PRNGKey) -> tuple[FRePoState, Metrics]:
        k_next, k_reset, k_sample = frepo_keys(key)
        m = state.current
        variables = _tree_get(state.pool.variables, m)
        feat_t = jax.lax.stop_gradient(features(model, variables, batch.x_real_BxHWC))

        def objective(p):
            return frepo_loss(model, variables, p["x"], p.get("y", state.syn.y_syn), feat_t,
                              batch.y_real_B, config.reg,
                              config.learn_label and config.label_margin)

        params = syn_params(state.syn)
        (loss, (kernel, margin, acc)), grads = jax.value_and_grad(objective, has_aux=True)(params)
        updates, opt_syn = tx_syn.update(grads, state.opt_syn, params)
        params = optax.apply_updates(params, updates)
        syn = state.syn._replace(x_syn_NHWC=params["x"], y_syn=params.get("y", state.syn.y_syn))

        # The model just used: replaced when past its budget, else one step on the new set.
        n = syn.x_syn_NHWC.shape[0]
        if n > config.batch_online:
            idx = jax.random.choice(k_sample, n, (config.batch_online,), replace=False)
            x_on, y_on = syn.x_syn_NHWC[idx], syn.y_syn[idx]
        else:
            x_on, y_on = syn.x_syn_NHWC, syn.y_syn
        x_on, y_on = jax.lax.stop_gradient((x_on, y_on))
        opt_m = _tree_get(state.pool.opt, m)
        reset = state.pool.steps[m] > config.max_online_updates

        def fresh(_):
            v = model.init(k_reset)
            return v, tx_online.init(v["params"]), jnp.zeros((), jnp.int32)

        def train(_):
            v, o = online_step(variables, opt_m, x_on, y_on)
            return v, o, state.pool.steps[m] + 1

        v_m, o_m, s_m = jax.lax.cond(reset, fresh, train, None)
        pool = Pool(_tree_set(state.pool.variables, m, v_m), _tree_set(state.pool.opt, m, o_m),
                    state.pool.steps.at[m].set(s_m))
        current = jax.random.randint(k_next, (), 0, config.pool_size, jnp.int32)
        new = FRePoState(syn, state.y_class, opt_syn, pool, current, state.iteration + 1)
        metrics = {"loss": loss, "kernel_loss": kernel, "label_loss": margin, "krr_acc": acc,
                   "grad_norm_x": optax.tree.norm(grads["x"]), "model": m,
                   "reset": reset.astype(jnp.int32)}
        return new, metrics

    return Distiller(init, step)
