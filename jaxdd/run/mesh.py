"""One mesh, one code path, 1..N devices (and hosts).

The synthetic set is sharded along its image axis over the `data` mesh axis (when the
count divides), everything else is replicated; XLA's SPMD partitioner splits the work.
A single CPU or GPU is simply a mesh of size 1. Expert/teacher populations can use a
second axis (`pool`) where a method stacks them.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P


def make_mesh(shape: Sequence[int] | None = None, names: Sequence[str] = ("data",),
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Mesh over `devices` (default: all); shape defaults to (num_devices,)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = tuple(shape) if shape else (len(devices),)
    if int(np.prod(shape)) != len(devices):
        raise ValueError(f"mesh shape {shape} needs {int(np.prod(shape))} devices, "
                         f"but {len(devices)} are given; change mesh.shape")
    if len(shape) != len(names):
        raise ValueError(f"mesh shape {shape} and axis names {tuple(names)} differ in length")
    return jax.make_mesh(shape, tuple(names), axis_types=(AxisType.Auto,) * len(shape),
                         devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def state_shardings(state: Any, mesh: Mesh, axis: str = "data") -> Any:
    """Shard the synthetic set (fields named x_syn_NHWC / x_ema_NHWC / y_syn, and their
    optimiser moments, i.e. every leaf whose leading dim is the image count) along `axis`;
    replicate the rest."""
    n_dev = mesh.shape[axis]
    syn = getattr(state, "syn", None)
    n_img = None if syn is None else int(syn.x_syn_NHWC.shape[0])

    def rule(x):
        if (n_img and hasattr(x, "shape") and x.ndim >= 1 and x.shape[0] == n_img
                and n_img % n_dev == 0):
            return NamedSharding(mesh, P(axis))
        return NamedSharding(mesh, P())

    return jax.tree.map(rule, state)


def put(tree: Any, shardings: Any) -> Any:
    """Place a host-identical pytree on the mesh (works across processes: every process
    passes the same values and keeps only its addressable shards)."""
    def one(x, s):
        if jax.process_count() == 1 or (isinstance(x, jax.Array) and not x.is_fully_addressable):
            return jax.device_put(x, s)   # single process, or already a global array
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            # typed PRNG keys have no numpy form: place the raw key data, then re-wrap
            return jax.random.wrap_key_data(one(jax.random.key_data(x), s),
                                            impl=jax.random.key_impl(x))
        x = np.asarray(x)
        return jax.make_array_from_callback(x.shape, s, lambda idx: x[idx])
    return jax.tree.map(one, tree, shardings)


def to_host(a: Any) -> Any:
    """Host copy of a (possibly multi-process sharded) array; every process must call it
    for such an array. None and floats pass through."""
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(a, tiled=True))
    return a if a is None or isinstance(a, float) else np.asarray(a)


def put_replicated(tree: Any, mesh: Mesh) -> Any:
    """A host-identical pytree replicated on every device of `mesh` (any process count)."""
    return put(tree, jax.tree.map(lambda _: replicated(mesh), tree))


def maybe_initialize_distributed() -> None:
    """`jax.distributed.initialize` from the environment: explicit JAXDD_COORDINATOR /
    JAXDD_NUM_PROCESSES / JAXDD_PROCESS_ID, or what JAX detects itself (TPU pods, SLURM)."""
    coord = os.environ.get("JAXDD_COORDINATOR")
    if coord:
        # "deactivate": all is explicit, so JAX's cluster detection must not fill in the rest;
        # under SLURM it would set local_device_ids=[SLURM_LOCALID], i.e. one GPU per process,
        # while jaxdd runs one process per host that drives all its devices.
        jax.distributed.initialize(coordinator_address=coord,
                                   num_processes=int(os.environ["JAXDD_NUM_PROCESSES"]),
                                   process_id=int(os.environ["JAXDD_PROCESS_ID"]),
                                   cluster_detection_method="deactivate")
    elif os.environ.get("JAXDD_DISTRIBUTED") == "auto":
        jax.distributed.initialize()
