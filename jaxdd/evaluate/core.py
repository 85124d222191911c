"""Evaluate a (distilled or selected) set: train K fresh networks, test on real data.

The K runs share one compiled training loop, run in a few chunks of epochs so long
evaluations can report progress with an ETA, in one of two ways (`seed_mode`):
- "rounds" (the default on CPU): one seed's program, each device running one seed per round
  (8 devices train 8 seeds side by side; one device trains them one after another); K not a
  multiple of the device count is padded with repeats whose results are dropped. A seed's
  result is the same whatever the device count, and whatever K. On a 2-core CPU this is ~15 %
  faster than the vmap at width 32 (XLA:CPU's batched kernels are slower than K unbatched
  ones) and at par at width 128 with DSA; memory holds one seed's activations per device.
- "vmap" (the default on GPU/TPU): one `vmap` over the seed keys, the seeds split over the
  `data` axis when K divides by its size (else every device runs all): one larger program,
  which is what fills an accelerator.

With a checkpoint directory (`jaxdd evaluate --checkpoint-dir`) the seeds' training state
is saved after every chunk and a rerun resumes from the last one, bit-exactly: long
evaluations (the `mtt` protocol at IPC 50 takes hours on a CPU) survive a killed process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd import data as jdata
from jaxdd.augment import dsa_augment
from jaxdd.evaluate import soups
from jaxdd.evaluate.protocols import Protocol
from jaxdd.models import Model, Variables, get_model
from jaxdd.run import mesh as jmesh
from jaxdd.train import TrainConfig, accuracy, class_targets, train_epochs, train_init

Progress = Callable[[int, int], None]
SHARED_INIT_FOLD = 0x50FA   # fold_in(key, .) draws the students' shared init under a soup


class EvalData(NamedTuple):
    """Preprocessed validation and test splits (model space, float32 NHWC)."""

    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple[int, int, int]


def eval_data(ds: jdata.Dataset, pre: jdata.Preprocess) -> EvalData:
    return EvalData(jdata.apply(pre, ds.x_val), ds.y_val, jdata.apply(pre, ds.x_test),
                    ds.y_test, ds.num_classes, ds.image_shape)


def chunk_size(epochs: int, target_chunks: int = 10) -> int:
    """Largest divisor of `epochs` giving at least `target_chunks` chunks (one compile)."""
    for d in range(max(1, epochs // target_chunks), 0, -1):
        if epochs % d == 0:
            return d
    return epochs


def label_targets(y_syn: np.ndarray, num_classes: int, loss: str = "ce") -> jax.Array:
    """The training targets of a set's labels for the protocol's loss. ce: hard labels (N,)
    -> one-hot, soft label logits (N, K) -> probabilities. mse: hard labels -> one-hot - 1/K,
    (N, K) regression targets (FRePo's learned labels) as they are: a softmax would flatten
    them (softmax of FRePo's initial 0.9 / -0.1 targets puts only 0.23 on the class)."""
    y = jnp.asarray(y_syn)
    if y.ndim == 1:
        return class_targets(y, num_classes, loss)
    y = y.astype(jnp.float32)
    return y if loss == "mse" else jax.nn.softmax(y, axis=-1)


def augment_fn(cfg: TrainConfig):
    return dsa_augment(cfg.dsa)


def _seed_sharding(mesh: jax.sharding.Mesh, seeds: int, axis: str = "data"):
    """Leading (seed) axis over `axis` when the seed count divides, else replicated."""
    spec = (axis,) if seeds % mesh.shape[axis] == 0 else ()
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*spec))


SEED_MODES = ("auto", "rounds", "vmap")


def resolve_seed_mode(mode: str, mesh: jax.sharding.Mesh) -> str:
    """"auto" -> "rounds" on CPU devices, "vmap" on accelerators (module docstring)."""
    if mode not in SEED_MODES:
        raise ValueError(f"unknown seed mode {mode!r}; use one of {SEED_MODES}")
    if mode != "auto":
        return mode
    return "rounds" if mesh.devices.flat[0].platform == "cpu" else "vmap"


class SeedRounds:
    """K seeds' stacked training state as rounds of seeds, each round one call of
    `step`: "vmap" = one round of all K (vmapped, split over `data` when K divides);
    "rounds" = one seed per device per round (the one-seed program under shard_map)."""

    def __init__(self, one: Callable, mesh: jax.sharding.Mesh, seeds: int, mode: str,
                 axis: str = "data"):
        """`one(state, *data)`: one seed's program; data are replicated arguments."""
        P = jax.sharding.PartitionSpec
        if resolve_seed_mode(mode, mesh) == "vmap":
            w, sharding = seeds, _seed_sharding(mesh, seeds, axis)
            self.step = jax.jit(jax.vmap(one, in_axes=(0, None, None)), donate_argnums=(0,))
        else:
            w, sharding = mesh.shape[axis], jax.sharding.NamedSharding(mesh, P(axis))

            def local(state_1, *data):   # this device's one seed
                out = one(jax.tree.map(lambda a: a[0], state_1), *data)
                return jax.tree.map(lambda a: a[None], out)

            self.step = jax.jit(jax.shard_map(local, mesh=mesh, in_specs=(P(axis), P(), P()),
                                              out_specs=P(axis), check_vma=False),
                                donate_argnums=(0,))
        rounds = -(-seeds // w)
        pad = rounds * w - seeds

        def split(state):   # padded with repeats of seed 0
            state = jax.tree.map(lambda a: jnp.concatenate([a] + [a[:1]] * pad), state)
            return [jax.tree.map(lambda a: a[r * w:(r + 1) * w], state) for r in range(rounds)]

        # split: the stacked state of K seeds -> the rounds; join: back (padding dropped)
        self.split = jax.jit(split, out_shardings=sharding)
        self.join = jax.jit(lambda rs: jax.tree.map(lambda *a: jnp.concatenate(a)[:seeds], *rs))

    def __call__(self, rounds, *data):
        return [self.step(r, *data) for r in rounds]


def train_seeds(keys: jax.Array, model: Model, cfg: TrainConfig, x_NHWC, y_target,
                lr=None, progress: Progress | None = None,
                mesh: jax.sharding.Mesh | None = None,
                init_variables: Variables | None = None,
                checkpoint: tuple[str, dict] | None = None, seed_mode: str = "auto"):
    """Train len(keys) networks (`seed_mode`: the module docstring); returns stacked variables.
    `init_variables`: one network every seed starts from (the seeds then differ in data order
    and augmentation only); None = a fresh init each.
    `checkpoint`: (directory, config): the state is saved there after every chunk of epochs
    and training resumes from the latest save; a directory claimed by another config (the
    fingerprint in its run.json) is refused."""
    mesh = mesh or jmesh.make_mesh()
    repl = jmesh.replicated(mesh)
    x_NHWC = jmesh.put(np.asarray(x_NHWC, np.float32), repl)
    y_target = jmesh.put(np.asarray(y_target), repl)
    keys = jmesh.put(keys, _seed_sharding(mesh, len(keys)))
    aug = augment_fn(cfg)
    init = jax.jit(jax.vmap(lambda k, lr, v: train_init(k, model, cfg, x_NHWC.shape[0], lr, v),
                            in_axes=(0, None, None)))
    chunk = chunk_size(cfg.epochs)
    # Data are arguments (not closure constants): XLA would otherwise fold them into the program.
    run = SeedRounds(lambda s, x, y: train_epochs(s, model, cfg, x, y, chunk, aug), mesh,
                     len(keys), seed_mode)
    state = init(keys, lr, init_variables)
    ckpt, start = None, 0
    if checkpoint is not None:
        from jaxdd.run.checkpoint import Checkpointer
        # synchronous saves: the next chunk donates the state's buffers
        ckpt = Checkpointer(checkpoint[0], checkpoint[1], every=chunk, keep=2,
                            async_save=False, flag="--checkpoint-dir", resume_flag=None)
        restored = ckpt.restore(_raw_keys(state))
        if restored is not None:
            start, raw = restored
            typed = jnp.issubdtype(state.key.dtype, jax.dtypes.prng_key)
            state = raw._replace(key=jax.random.wrap_key_data(
                raw.key, impl=jax.random.key_impl(state.key)) if typed else raw.key)
            if progress is not None:
                progress(start, cfg.epochs)
    rounds = run.split(state)
    del state
    try:
        for done in range(start, cfg.epochs, chunk):
            rounds = run(rounds, x_NHWC, y_target)
            if ckpt is not None:
                ckpt.save(done + chunk, _raw_keys(run.join(rounds)), force=True)
            if progress is not None:
                jax.block_until_ready(rounds[-1].epoch)
                progress(done + chunk, cfg.epochs)
    finally:
        if ckpt is not None:
            ckpt.close()
    return run.join(rounds).variables


def _raw(key: jax.Array) -> jax.Array:
    """Typed PRNG keys as their raw uint32 data (legacy raw keys as they are)."""
    return jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key


def _raw_keys(state):
    """The state with raw key data (what a checkpoint stores)."""
    return state._replace(key=_raw(state.key))


# Images through the network at once, over all vmapped seeds together (was 1000 per seed):
# a 5-seed `mtt` evaluation (ConvNet-D3-W128) was killed for memory at 13.7 GB on the 23 GB
# CI machine; one layer's output for 5 x 1000 padded 32x32 images at width 128 is 2.6 GB.
# The counts do not depend on the chunking.
EVAL_IMAGES_PER_CHUNK = 1000


def accuracies(model: Model, variables_S, x, y) -> np.ndarray:
    """Test accuracy of each of the S stacked networks, in chunks of ~1000 / S images each."""
    seeds = jax.tree.leaves(variables_S)[0].shape[0]
    bs = max(1, EVAL_IMAGES_PER_CHUNK // seeds)
    f = jax.jit(jax.vmap(lambda v, x, y: accuracy(model, v, x, y, batch_size=bs),
                         in_axes=(0, None, None)))
    return np.asarray(f(variables_S, jnp.asarray(x), jnp.asarray(y)), np.float64)


def evaluate_set(key: jax.Array, x_syn_NHWC: np.ndarray, y_syn: np.ndarray, data: EvalData,
                 protocol: Protocol, seeds: int = 5, lr: float | None = None,
                 model_name: str | None = None, progress: Progress | None = None,
                 mesh: jax.sharding.Mesh | None = None, soup: str | None = None,
                 init_variables: Variables | None = None, init_name: str | None = None,
                 checkpoint_dir: str | None = None) -> dict:
    """Train `seeds` fresh networks on the set and report final test accuracy.

    Final-epoch accuracy is reported (no selection on test). Validation accuracy comes
    from the validation split carved from the training data and may be used for selection.
    `soup` ("uniform" | "greedy", `jaxdd.evaluate.soups`) also averages the students and
    reports the soup's test accuracy under "soup"; the students then share one init.
    `init_variables`: the network every student starts from (e.g. weight selection, named
    `init_name` in the result); it must fit the student.
    `checkpoint_dir`: save the students' training there after every chunk of epochs and
    resume from it (bit-exact); the directory is claimed for this set, protocol, model,
    seeds, key, lr and init, and refused for any other.
    """
    soups.check_soup(soup)
    if soup == "greedy" and not len(data.y_val):
        raise ValueError("greedy soup selects on the validation split, and this dataset has "
                         "none (val_per_class=0); use --soup uniform")
    if x_syn_NHWC.shape[1:] != tuple(data.image_shape):
        raise ValueError(f"set images have shape {x_syn_NHWC.shape[1:]}, but the dataset's "
                         f"are {tuple(data.image_shape)}; evaluate on the dataset the set was made from")
    model = get_model(model_name or protocol.model, data.num_classes, data.image_shape)
    if init_variables is not None:
        check_fits(model, init_variables)
    elif soup is not None:   # one shared init, drawn apart from the seeds' keys
        init_variables = model.init(jax.random.fold_in(key, SHARED_INIT_FOLD))
    ckpt = None
    if checkpoint_dir is not None:
        ckpt = (checkpoint_dir, {
            "evaluate": "students", "set_sha256": array_digest([x_syn_NHWC, y_syn]),
            "protocol": protocol.name, "train": dataclasses.asdict(protocol.train),
            "model": model.name, "seeds": seeds, "key": array_digest([_raw(key)]),
            "lr": None if lr is None else float(lr), "soup": soup, "init": init_name,
            "init_sha256": (None if init_variables is None
                            else array_digest(jax.tree.leaves(init_variables)))})
    t0 = time.time()
    variables = train_seeds(jax.random.split(key, seeds), model, protocol.train, x_syn_NHWC,
                            label_targets(y_syn, data.num_classes, protocol.train.loss), lr,
                            progress, mesh, init_variables, ckpt)
    jax.block_until_ready(variables)
    t_train = time.time() - t0
    test = accuracies(model, variables, data.x_test, data.y_test)
    val = accuracies(model, variables, data.x_val, data.y_val) if len(data.y_val) else np.array([np.nan])
    out = {}
    if soup is not None:
        out["soup"] = _soup(soup, model, variables, val, data)
    if init_variables is not None:
        out["init"] = init_name or ("shared" if soup is not None else "given")
    return {
        **out,
        "accuracy_mean": float(test.mean()), "accuracy_std": float(test.std()),
        "accuracies": test.tolist(), "val_accuracy_mean": float(val.mean()),
        "seeds": seeds, "protocol": protocol.name, "model": model.name,
        "epochs": protocol.train.epochs, "batch_size": protocol.train.batch_size,
        "augment": protocol.train.dsa or None, "loss": protocol.train.loss, "lr": None if lr is None else float(lr), "report": "final epoch",
        "train_seconds": round(t_train, 2), "seconds": round(time.time() - t0, 2),
        # the protocol as it ran (overrides and augment switch applied), so a stored result
        # says how it was obtained; `reduced`: a CPU stand-in, not a paper's protocol
        "protocol_train": dataclasses.asdict(protocol.train), "protocol_reduced": protocol.reduced,
        "protocol_description": protocol.description,
    }


def array_digest(arrays) -> str:
    """sha256 of arrays' dtypes, shapes and bytes (what a checkpoint directory is claimed for)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def check_fits(model: Model, variables: Variables) -> None:
    """One-line error when `variables` do not have the structure and shapes of `model`'s."""
    want = jax.tree.map(lambda s: s.shape, jax.eval_shape(model.init, jax.random.key(0)))
    got = jax.tree.map(np.shape, variables)
    if got != want:
        raise ValueError(f"the initial variables do not fit student {model.name!r} "
                         f"(their structure or shapes differ from the model's)")


def _soup(kind: str, model: Model, variables_S: Variables, val_S: np.ndarray,
          data: EvalData) -> dict:
    """The soup of the stacked students: its test (and val) accuracy, members, students' mean."""
    acc = jax.jit(lambda v, x, y: accuracy(model, v, x, y))
    x_val, y_val = jnp.asarray(data.x_val), jnp.asarray(data.y_val)
    if kind == "greedy":
        soup, members, _ = soups.greedy_soup(variables_S, val_S,
                                             lambda v: float(acc(v, x_val, y_val)))
    else:
        soup, members = soups.uniform_soup(variables_S), list(range(len(val_S)))
    val = float(acc(soup, x_val, y_val)) if len(data.y_val) else float("nan")
    return {"kind": kind, "accuracy": float(acc(soup, jnp.asarray(data.x_test),
                                                  jnp.asarray(data.y_test))),
            "val_accuracy": val, "members": members,
            "selection": "validation split" if kind == "greedy" else "none (all students)",
            "bn_statistics": "averaged" if model.has_batch_stats else "none"}
