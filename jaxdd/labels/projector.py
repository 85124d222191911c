"""Label-light soft labels (HeLlO): a low-rank projector on a frozen extractor stands in for
the stored teacher logits.

HeLlO ("Heavy Labels Out! Dataset Distillation with Label Space Lightening", Yu et al.,
arXiv 2408.08201, ICCV 2025): instead of storing a C-dim soft label for every augmentation
of every synthetic image (E x N x C values, what `relabel --mode stored` writes), ship an
image-to-label projector that generates the labels at student-training time. In the paper
the projector is a frozen pretrained CLIP image encoder followed by a linear map initialised
from CLIP's text embeddings of the class names (free: anyone can recompute them), adapted to
the teacher with LoRA-like low-rank matrices; only the low-rank matrices are stored.

jaxdd has no CLIP offline, so the frozen extractor is a jaxdd network's penultimate features
(`jaxdd.models.embed`):

    extractor="teacher"  the teacher's own body, head dropped. Zero extra bytes only if the
                         teacher is shipped -- and then `relabel --mode online` needs no
                         labels at all; this is the sanity / upper-bound setting.
    extractor="random"   the teacher's architecture, freshly initialised from
                         `extractor_seed`: regenerated from (name, seed), so 0 bytes -- the
                         analogue of a public encoder nobody has to ship.

and the free initial map W0 (the text-embedding analogue) is, with init="prototypes", the
normalised class means of the extractor features of the un-augmented synthetic images (a
function of the shipped images and hard labels), else zero. With features f_BxD:

    logits_BxK = f_BxD (s W0_DxK + A_DxR B_RxK) + b_K                                    (1)

s = exp(log_scale) a learnable scalar; A, B the low-rank factors (B starts at 0, so the
projector starts at W0, as LoRA); b a bias. With body_rank r > 0 every kernel W of the
extractor (conv kernels read as (prod(shape[:-1]), out) matrices) also gets W + U V with
U (in, r), V (r, out), V = 0 at the start (LoRA on the encoder). The stored object is
{A, B, b, log_scale, U, V}, cast to `dtype` (fp16 as the stored labels); students see the
cast values, so what is counted is what is used.

Fitting (`fit_projector`): Adam on KL(softmax(t/T) || softmax(p/T)) (relabel's eq. 2, the
student's own loss) or MSE of the logits, over `fit_epochs` epochs of augmented synthetic
batches drawn with relabel's `aug_params` from a fit key (not the student's key: the
student's augmentations are held out, see `agreement`).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import traverse_util

from jaxdd import safeio
from jaxdd.labels.relabel import RelabelConfig, TeacherFn, apply_aug, aug_params, kd_loss
from jaxdd.models import Model, Variables, embed
from jaxdd.train.loop import steps_per_epoch

__all__ = ["ProjectorConfig", "Extractor", "make_extractor", "extractor_variables",
           "initial_map", "prototypes", "init_projector",
           "projector_logits", "label_fn", "fit_projector", "quantise", "projector_bytes",
           "agreement", "save_projector", "load_projector", "fitted_projector"]

Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class ProjectorConfig:
    """Options of the label-light projector (module docstring)."""

    rank: int = 4                 # R of eq. (1)'s A B
    extractor: str = "teacher"    # teacher: its penultimate features | random: a fresh init
    extractor_seed: int = 0       # extractor="random": the seed of its initialisation
    init: str = "prototypes"      # W0 of eq. (1): prototypes (class means, free) | zero
    body_rank: int = 0            # LoRA rank r on every extractor kernel (0 = off)
    fit_epochs: int = 300         # epochs of augmented synthetic batches
    fit_lr: float = 3e-2          # Adam learning rate, cosine-decayed to 0 over the fit
    fit_loss: str = "kd"          # kd: KL at the relabel temperature | mse: logits
    dtype: str = "float16"        # storage precision of the projector

    def __post_init__(self):
        if self.rank < 1:
            raise ValueError(f"projector rank must be >= 1, got {self.rank}")
        if self.body_rank < 0:
            raise ValueError(f"body_rank must be >= 0 (0 = off), got {self.body_rank}")
        if self.extractor not in ("teacher", "random"):
            raise ValueError(f"extractor {self.extractor!r}; use teacher or random")
        if self.init not in ("prototypes", "zero"):
            raise ValueError(f"projector init {self.init!r}; use prototypes or zero")
        if self.fit_loss not in ("kd", "mse"):
            raise ValueError(f"fit_loss {self.fit_loss!r}; use kd or mse")
        if self.fit_epochs < 1:
            raise ValueError(f"fit_epochs must be >= 1, got {self.fit_epochs}")
        if self.dtype not in ("float16", "bfloat16", "float32"):
            raise ValueError(f"projector dtype {self.dtype!r}; use float16, bfloat16 or float32")


class Extractor(NamedTuple):
    """The frozen part: a model, its variables and the free W0 (none of it is stored)."""

    model: Model
    variables: Variables
    w0_DxK: jax.Array


def extractor_variables(pcfg: ProjectorConfig, model: Model,
                        teacher_variables: Variables) -> Variables:
    """The frozen extractor's variables: the teacher's, or a fresh init from the seed."""
    if pcfg.extractor == "teacher":
        return teacher_variables
    return model.init(jax.random.key(pcfg.extractor_seed))


def initial_map(pcfg: ProjectorConfig, model: Model, variables: Variables,
                x_syn_NHWC: jax.Array, y_syn_N: jax.Array) -> jax.Array:
    """W0_DxK of eq. (1), recomputed from the shipped images, hard labels and extractor (so
    not stored): prototypes of the synthetic images' features, or zeros (pcfg.init)."""
    f_NxD = _features(model, variables, x_syn_NHWC)
    if pcfg.init == "zero":
        return jnp.zeros((f_NxD.shape[1], model.num_classes), jnp.float32)
    return prototypes(f_NxD, y_syn_N, model.num_classes)


def make_extractor(pcfg: ProjectorConfig, model: Model, teacher_variables: Variables,
                   x_syn_NHWC: jax.Array, y_syn_N: jax.Array) -> Extractor:
    """The frozen extractor of pcfg.extractor and its W0 (pcfg.init)."""
    variables = extractor_variables(pcfg, model, teacher_variables)
    return Extractor(model, variables, initial_map(pcfg, model, variables, x_syn_NHWC, y_syn_N))


def _features(model: Model, variables: Variables, x_NHWC: jax.Array) -> jax.Array:
    f = embed(model, variables, x_NHWC)
    return f.reshape(f.shape[0], -1).astype(jnp.float32)


def prototypes(f_NxD: jax.Array, y_syn_N: jax.Array, k: int) -> jax.Array:
    """W0_DxK: class k's mean feature over the synthetic images, unit norm, divided by the
    mean feature norm (so f W0 is about a cosine); a class without images gets 0."""
    f = f_NxD
    onehot = jax.nn.one_hot(jnp.asarray(y_syn_N), k, dtype=jnp.float32)      # (N, K)
    mu_KxD = (onehot.T @ f) / jnp.maximum(onehot.sum(0), 1.0)[:, None]
    mu_KxD = mu_KxD / jnp.maximum(jnp.linalg.norm(mu_KxD, axis=1, keepdims=True), 1e-12)
    return (mu_KxD / jnp.maximum(jnp.linalg.norm(f, axis=1).mean(), 1e-12)).T


def _lora_targets(variables: Variables) -> dict[tuple, tuple[int, int]]:
    """Flattened path -> (in, out) of every kernel (ndim >= 2) in variables['params']."""
    flat = traverse_util.flatten_dict(variables["params"])
    return {p: (int(np.prod(v.shape[:-1])), int(v.shape[-1])) for p, v in flat.items()
            if v.ndim >= 2}


def init_projector(key: jax.Array, pcfg: ProjectorConfig, ext: Extractor) -> Params:
    """Eq. (1) at its start: A ~ N(0, 1/D), B = 0, b = 0, s = 1 (prototypes) or free; LoRA
    factors U ~ N(0, 1/in), V = 0 on every kernel when body_rank > 0."""
    d, k = ext.w0_DxK.shape
    k_a, k_body = jax.random.split(key)
    p = {"A_DxR": jax.random.normal(k_a, (d, pcfg.rank), jnp.float32) / np.sqrt(d),
         "B_RxK": jnp.zeros((pcfg.rank, k), jnp.float32),
         "b_K": jnp.zeros((k,), jnp.float32),
         "log_scale": jnp.zeros((), jnp.float32)}
    if pcfg.body_rank:
        body = {}
        for i, (path, (n_in, n_out)) in enumerate(sorted(_lora_targets(ext.variables).items())):
            u = jax.random.normal(jax.random.fold_in(k_body, i), (n_in, pcfg.body_rank))
            body["/".join(path)] = {"U": u.astype(jnp.float32) / np.sqrt(n_in),
                                    "V": jnp.zeros((pcfg.body_rank, n_out), jnp.float32)}
        p["body"] = body
    return p


def _with_lora(variables: Variables, body: dict[str, Any]) -> Variables:
    """Extractor variables with W + U V on every kernel named in `body`."""
    flat = traverse_util.flatten_dict(variables["params"])
    for name, uv in body.items():
        path = tuple(name.split("/"))
        w = flat[path]
        flat[path] = w + (uv["U"] @ uv["V"]).reshape(w.shape).astype(w.dtype)
    return {**variables, "params": traverse_util.unflatten_dict(flat)}


def projector_logits(params: Params, ext: Extractor, x_NHWC: jax.Array) -> jax.Array:
    """Eq. (1): the projector's logits for a batch (inference mode, float32)."""
    params = jax.tree.map(lambda a: a.astype(jnp.float32), params)
    variables = _with_lora(ext.variables, params["body"]) if "body" in params else ext.variables
    f_BxD = _features(ext.model, variables, x_NHWC)
    w_DxK = jnp.exp(params["log_scale"]) * ext.w0_DxK + params["A_DxR"] @ params["B_RxK"]
    return f_BxD @ w_DxK + params["b_K"][None, :]


def label_fn(params: Params, ext: Extractor) -> TeacherFn:
    """The projector as relabel's `teacher_fn` (x_NHWC -> logits): a pure function of
    (params, ext, augmented batch); train_student takes it in place of the teacher."""
    return lambda x_NHWC: projector_logits(params, ext, x_NHWC)


def _fit_loss(p_BxK: jax.Array, t_BxK: jax.Array, pcfg: ProjectorConfig,
              rcfg: RelabelConfig) -> jax.Array:
    if pcfg.fit_loss == "mse":
        return jnp.square(p_BxK - t_BxK).mean(-1)
    return kd_loss(p_BxK, t_BxK, rcfg.temperature)


def fit_projector(key: jax.Array, params: Params, ext: Extractor, teacher_fn: TeacherFn,
                  x_syn_NHWC: jax.Array, batch_size: int, pcfg: ProjectorConfig,
                  rcfg: RelabelConfig) -> tuple[Params, jax.Array]:
    """Fit eq. (1) to the teacher on augmented synthetic batches (aug_params(key, e, s));
    returns (params, mean fit loss of each epoch (fit_epochs,)). One compiled scan."""
    n = x_syn_NHWC.shape[0]
    bs = min(batch_size, n)
    spe = steps_per_epoch(n, bs)
    hw = x_syn_NHWC.shape[1:3]
    tx = optax.adam(optax.cosine_decay_schedule(pcfg.fit_lr, pcfg.fit_epochs * spe))

    def loss(p, xb, tb, mask):
        return (_fit_loss(projector_logits(p, ext, xb), tb, pcfg, rcfg) * mask).sum() / mask.sum()

    def step(carry, es):
        p, opt = carry
        a = aug_params(key, es[0], es[1], n, bs, hw, rcfg)
        xb = apply_aug(x_syn_NHWC, a, rcfg)
        tb = jax.lax.stop_gradient(teacher_fn(xb)).astype(jnp.float32)
        val, g = jax.value_and_grad(loss)(p, xb, tb, a.mask_B)
        upd, opt = tx.update(g, opt, p)
        return (optax.apply_updates(p, upd), opt), val

    e = jnp.repeat(jnp.arange(pcfg.fit_epochs, dtype=jnp.int32), spe)
    s = jnp.tile(jnp.arange(spe, dtype=jnp.int32), pcfg.fit_epochs)
    (params, _), losses = jax.lax.scan(step, (params, tx.init(params)), jnp.stack([e, s], 1))
    return params, losses.reshape(pcfg.fit_epochs, spe).mean(1)


def quantise(params: Params, dtype: str) -> Params:
    """The stored form: every array cast to `dtype` (what students use and what is counted)."""
    return jax.tree.map(lambda a: jnp.asarray(a).astype(dtype), params)


def projector_bytes(params: Params) -> int:
    """Bytes of the stored projector (every array's size x itemsize)."""
    return int(sum(a.size * jnp.dtype(a.dtype).itemsize for a in jax.tree.leaves(params)))


def agreement(params: Params, ext: Extractor, teacher_fn: TeacherFn, x_syn_NHWC: jax.Array,
              key: jax.Array, epochs: int, batch_size: int, rcfg: RelabelConfig
              ) -> dict[str, jax.Array]:
    """Top-1 agreement and KL at T (eq. 2) of projector vs teacher over the first `epochs`
    epochs of the augmentations drawn from `key` (the student's stream: held out)."""
    n = x_syn_NHWC.shape[0]
    bs = min(batch_size, n)
    spe = steps_per_epoch(n, bs)

    def one(_, es):
        a = aug_params(key, es[0], es[1], n, bs, x_syn_NHWC.shape[1:3], rcfg)
        xb = apply_aug(x_syn_NHWC, a, rcfg)
        p, t = projector_logits(params, ext, xb), teacher_fn(xb).astype(jnp.float32)
        m = a.mask_B
        return None, jnp.stack([((p.argmax(-1) == t.argmax(-1)) * m).sum(),
                                (kd_loss(p, t, rcfg.temperature) * m).sum(), m.sum()])

    e = jnp.repeat(jnp.arange(epochs, dtype=jnp.int32), spe)
    s = jnp.tile(jnp.arange(spe, dtype=jnp.int32), epochs)
    _, sums = jax.lax.scan(one, None, jnp.stack([e, s], 1))
    tot = sums.sum(0)
    return {"top1_agreement": tot[0] / tot[2], "kl": tot[1] / tot[2]}


def _flat(params: Params) -> dict[str, np.ndarray]:
    return {"/".join(k): np.asarray(v)
            for k, v in traverse_util.flatten_dict(params, sep=None).items()}


def save_projector(path: str, params: Params, **meta: Any) -> None:
    """npz (atomic, `safeio.savez`): the arrays as `p:<path>` plus scalar `meta_<name>`."""
    arrays = {f"p:{k}": v for k, v in _flat(params).items()}
    arrays.update({f"meta_{k}": np.asarray(v) for k, v in meta.items()})
    safeio.savez(path, **arrays)


def load_projector(path: str) -> tuple[Params, dict[str, Any]]:
    """(params, meta) as saved; the body's LoRA factors keep their kernel names."""
    with np.load(path) as f:
        flat = {k[2:]: jnp.asarray(f[k]) for k in f.files if k.startswith("p:")}
        meta = {k[5:]: f[k][()] for k in f.files if k.startswith("meta_")}
    params: Params = {}
    for name, v in flat.items():
        if name.startswith("body/"):  # body/<kernel path with '/'>/U|V
            kernel, leaf = name[5:].rsplit("/", 1)
            params.setdefault("body", {}).setdefault(kernel, {})[leaf] = v
        else:
            params[name] = v
    return params, meta


def fitted_projector(key: jax.Array, pcfg: ProjectorConfig, ext: Extractor,
                     teacher_fn: TeacherFn, x_syn_NHWC: jax.Array, batch_size: int,
                     rcfg: RelabelConfig) -> tuple[Params, jax.Array]:
    """init (fold_in(key, 0)) -> fit (augmentations of fold_in(key, 1)) -> stored form."""
    p0 = init_projector(jax.random.fold_in(key, 0), pcfg, ext)
    p, curve = fit_projector(jax.random.fold_in(key, 1), p0, ext, teacher_fn, x_syn_NHWC,
                             batch_size, pcfg, rcfg)
    return quantise(p, pcfg.dtype), curve

