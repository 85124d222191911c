"""Import the expert trajectories of MTT's `buffer.py` (`replay_buffer_<n>.pt`) as a jaxdd
expert buffer, so `jaxdd distill` (MTT, TESLA, DATM, FTD) can match them.

MTT's format: `torch.save(trajectories, "replay_buffer_<n>.pt")`, `trajectories` a list
(one per expert, `save_interval` = 10 per file) of lists (`train_epochs + 1` timestamps:
init, then after every epoch) of `[p.detach().cpu() for p in net.parameters()]`: one tensor
per parameter in the module's registration order. For MTT's ConvNet that order is, per
block d, conv d weight (O, I, 3, 3) and bias (O,), then (instance/batch norm) norm d weight
and bias (C,), and finally the classifier's weight (K, F) and bias (K,). A timestamp may
also be one flat vector of all of them in that order (what MTT's ReparamModule flattens).

Layout mapping to jaxdd's ConvNet (same function, tested to 1e-5 on the logits):
- conv: OIHW -> HWIO (`transpose(2, 3, 1, 0)`; both are cross-correlations);
- GroupNorm(C, C) weight / bias (= instance norm, eps 1e-5) -> InstanceNorm scale / bias;
  BatchNorm2d weight / bias -> BatchNorm scale / bias (running statistics are buffers, not
  parameters: neither trajectory holds them);
- classifier: torch flattens (C, h, w), jaxdd (h, w, C): W (K, C*h*w) -> reshape (K, C, h, w)
  -> transpose (h, w, C, K) -> reshape (h*w*C, K).

The jaxdd buffer gets a manifest marked `imported` (source files, MTT) and the
preprocessing fitted on the dataset's training split with the given kind and seed (as
`jaxdd distill` fits it), so a config with the same dataset, model, preprocess and seed
uses it as it is (`build_buffer` never retrains or extends an imported buffer).
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Iterator, Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp

from jaxdd import data as jdata
from jaxdd import exchange, safeio
from jaxdd.models import get_model
from jaxdd.models.convnet import ConvNet
from jaxdd.population import experts as jexperts
from jaxdd.population.train import (PREPROCESS_FILE, manager, member_dir, new_manifest,
                                    write_manifest)

PyTree = Any
BUFFER_RE = re.compile(r"^replay_buffer_(\d+)\.pt$")


def buffer_files(src: str) -> list[str]:
    """`src` itself (a .pt file), or the `replay_buffer_<n>.pt` files of a directory in n
    order (MTT's buffer directory, e.g. buffers/CIFAR10/ConvNet)."""
    if os.path.isfile(src):
        return [src]
    if not os.path.isdir(src):
        raise ValueError(f"{src}: no such file or directory")
    found = sorted((int(m.group(1)), f) for f in os.listdir(src) if (m := BUFFER_RE.match(f)))
    if not found:
        raise ValueError(f"{src} holds no replay_buffer_<n>.pt files (MTT's buffer.py output)")
    return [os.path.join(src, f) for _, f in found]


def is_mtt_buffer(src: str) -> bool:
    """A replay_buffer_<n>.pt file or a directory of them."""
    if os.path.isfile(src):
        return bool(BUFFER_RE.match(os.path.basename(src)))
    return os.path.isdir(src) and any(BUFFER_RE.match(f) for f in os.listdir(src))


@dataclasses.dataclass(frozen=True)
class TorchParam:
    """One parameter in MTT's (torch's) order: where it goes in the flax tree and how."""

    path: tuple[str, ...]          # keys into the flax params tree
    kind: str                      # conv | vector | linear
    torch_shape: tuple[int, ...]   # what the torch tensor must look like
    name: str                      # for messages, e.g. "conv 1 weight"


def torch_order(model_name: str, num_classes: int, input_shape: tuple[int, int, int]
                ) -> tuple[list[TorchParam], PyTree]:
    """MTT's parameter order for jaxdd's ConvNet `model_name` and the abstract flax params."""
    model = get_model(model_name, num_classes, input_shape)
    net = model.module
    if not isinstance(net, ConvNet):
        raise ValueError(f"MTT buffers are imported into a ConvNet (convnet, convnet_dD_wW"
                         f"[_bn|_none]); {model_name!r} is not one")
    abstract = jax.eval_shape(model.init, jax.random.key(0))["params"]
    h, w, cin = input_shape
    order = []
    for d in range(net.depth):
        conv = abstract[f"Conv3x3_{d}"]["kernel"].shape          # (3, 3, I, O)
        order += [TorchParam((f"Conv3x3_{d}", "kernel"), "conv",
                             (conv[3], conv[2], conv[0], conv[1]), f"conv {d} weight"),
                  TorchParam((f"Conv3x3_{d}", "bias"), "vector", (conv[3],), f"conv {d} bias")]
        norm = {"instance": "InstanceNorm", "batch": "BatchNorm"}.get(net.norm)
        if norm:
            order += [TorchParam((f"{norm}_{d}", "scale"), "vector", (net.width,),
                                 f"norm {d} weight"),
                      TorchParam((f"{norm}_{d}", "bias"), "vector", (net.width,),
                                 f"norm {d} bias")]
        pad = 3 if (d == 0 and input_shape[0] == 28) else 1   # jaxdd's ConvNet (as MTT's)
        h, w = (h + 2 * pad - 2) // 2, (w + 2 * pad - 2) // 2
    kernel = abstract["TorchDense_0"]["Dense_0"]["kernel"].shape  # (h*w*C, K)
    if h * w * net.width != kernel[0]:
        raise AssertionError(f"feature map {h}x{w}x{net.width} != {kernel[0]}")
    order += [TorchParam(("TorchDense_0", "Dense_0", "kernel"), "linear",
                         (kernel[1], net.width, h, w), "classifier weight"),
              TorchParam(("TorchDense_0", "Dense_0", "bias"), "vector", (kernel[1],),
                         "classifier bias")]
    return order, abstract


def to_flax(tensors: Sequence[np.ndarray], order: Sequence[TorchParam], abstract: PyTree,
            what: str, dtype: np.dtype = np.float32) -> PyTree:
    """One timestamp (torch tensors in MTT's order, or one flat vector) -> flax params
    (`dtype`: float32, as buffers are stored; float64 for the reference fixtures)."""
    sizes = [int(np.prod(p.torch_shape)) for p in order]
    if len(tensors) == 1 and np.asarray(tensors[0]).ndim == 1 and len(order) > 1:
        flat = np.asarray(tensors[0])
        if flat.size != sum(sizes):
            raise ValueError(f"{what}: a flat timestamp of {flat.size} values, the model has "
                             f"{sum(sizes)} parameters")
        tensors = np.split(flat, np.cumsum(sizes)[:-1])
    if len(tensors) != len(order):
        raise ValueError(f"{what}: a timestamp holds {len(tensors)} tensors, the model has "
                         f"{len(order)} ({', '.join(p.name for p in order[:4])}, ...): check "
                         f"--model (depth, norm)")
    out: dict = {}
    for t, p in zip(tensors, order):
        a = np.asarray(t, dtype)
        if a.ndim == 1 and p.kind != "vector" and a.size == int(np.prod(p.torch_shape)):
            a = a.reshape(p.torch_shape)  # a piece of a flat timestamp
        if p.kind == "linear" and a.shape == _torch_shape(p):
            a = a.reshape(p.torch_shape)  # (K, C*h*w) -> (K, C, h, w)
        if a.shape != p.torch_shape:
            k = p.torch_shape[0]
            hint = (f"the buffer's classifier has {a.shape[0]} outputs, the dataset has {k} "
                    f"classes" if p.name.startswith("classifier") and a.ndim >= 1
                    and a.shape[0] != k else "check --model (width, depth, norm) and the "
                    "dataset's image size and channels")
            raise ValueError(f"{what}: {p.name} has shape {tuple(a.shape)}, expected "
                             f"{_torch_shape(p)}; {hint}")
        if not np.isfinite(a).all():
            raise ValueError(f"{what}: {p.name} contains NaN/inf")
        if p.kind == "conv":
            a = a.transpose(2, 3, 1, 0)                                  # OIHW -> HWIO
        elif p.kind == "linear":
            k = a.shape[0]
            a = a.transpose(2, 3, 1, 0).reshape(-1, k)                   # (K,C,h,w) -> (hwC,K)
        node = out
        for key in p.path[:-1]:
            node = node.setdefault(key, {})
        node[p.path[-1]] = np.ascontiguousarray(a)
    return out


def _torch_shape(p: TorchParam) -> tuple[int, ...]:
    if p.kind == "linear":
        return (p.torch_shape[0], int(np.prod(p.torch_shape[1:])))
    return p.torch_shape


def _trajectories(torch, path: str) -> list[list[list[np.ndarray]]]:
    """The list of trajectories of one replay_buffer file, as numpy arrays."""
    obj = exchange.torch_load(torch, path, "MTT buffer")
    bad = ValueError(f"MTT buffer {path} is not a list of trajectories (each a list of "
                     f"timestamps, each a list of parameter tensors), as MTT's buffer.py saves")
    if not isinstance(obj, (list, tuple)) or not obj:
        raise bad
    out = []
    for traj in obj:
        if not isinstance(traj, (list, tuple)) or not traj:
            raise bad
        stamps = []
        for stamp in traj:
            if isinstance(stamp, torch.Tensor):
                stamp = [stamp]
            if not isinstance(stamp, (list, tuple)) or not all(
                    isinstance(t, torch.Tensor) for t in stamp):
                raise bad
            stamps.append([t.detach().cpu().float().numpy() for t in stamp])
        out.append(stamps)
    return out


def _iter_experts(torch, files: Sequence[str]) -> Iterator[tuple[str, int, list]]:
    for f in files:
        for j, traj in enumerate(_trajectories(torch, f)):
            yield f, j, traj


def import_mtt_buffer(src: str, out_dir: str, dataset: str, *, model_name: str = "convnet",
                      preprocess: str = "zca", seed: int = 0, overwrite: bool = False
                      ) -> jexperts.BufferInfo:
    """Write the trajectories of `src` (a replay_buffer_<n>.pt or a directory of them) as a
    jaxdd expert buffer at `out_dir`; every tensor is checked before anything is written."""
    torch = exchange.torch_module()
    files = buffer_files(src)
    replace = check_target(out_dir, overwrite)
    ds = jdata.load_dataset(dataset, seed=seed)
    pre = jdata.fit_preprocess(preprocess, ds.x_train, dataset_name=ds.name)
    order, abstract = torch_order(model_name, ds.num_classes, ds.image_shape)
    # First pass: read and check everything (nothing is written on error).
    lengths = []
    for f, j, traj in _iter_experts(torch, files):
        for t, stamp in enumerate(traj):
            to_flax(stamp, order, abstract, f"{f}: expert {j}, timestamp {t}")
        lengths.append(len(traj))
    if len(set(lengths)) != 1:
        raise ValueError(f"{src}: trajectories have different lengths {sorted(set(lengths))}; "
                         f"every expert needs the same number of epochs")
    epochs = lengths[0] - 1
    if epochs < 1:
        raise ValueError(f"{src}: trajectories hold only the initial parameters (1 timestamp)")
    cfg = jexperts.ExpertConfig(num_experts=len(lengths), epochs=epochs)
    param_count = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(abstract))

    def fill(tmp: str) -> None:
        m = new_manifest(
            "jaxdd.expert_buffer", jexperts.FORMAT_VERSION, "experts", model=model_name,
            num_classes=ds.num_classes, input_shape=ds.image_shape, dataset=ds.name,
            x_train=ds.x_train, y_train=ds.y_train, pre=pre, config=cfg, seed=seed,
            layout="expert_{i:03d}/{epoch}/ = Orbax CheckpointManager steps of params",
            versions={"orbax_version": ocp.__version__},
            model_info={"param_count": param_count}, counts={"num_test": 0})
        m["imported"] = {"from": "mtt replay_buffer", "files": [os.path.abspath(f) for f in files],
                         "note": "trained by MTT's buffer.py; config holds only the expert and "
                                 "epoch counts (the recipe is MTT's, not recorded)"}
        records = []
        for i, (f, j, traj) in enumerate(_iter_experts(torch, files)):
            with manager(member_dir(tmp, "expert", i)) as traj_mgr:
                for t, stamp in enumerate(traj):
                    traj_mgr.save(t, args=ocp.args.StandardSave(
                        to_flax(stamp, order, abstract, f"{f}: expert {j}, timestamp {t}")))
            records.append(dict(index=i, epochs_done=epochs, complete=True, test_accuracy=None,
                                train_time_s=0.0))
        m["experts"], m["status"] = records, "complete"
        safeio.savez(os.path.join(tmp, PREPROCESS_FILE), **jdata.to_dict(pre))
        write_manifest(os.path.join(tmp, jexperts.MANIFEST), m)

    safeio.write_dir(out_dir, fill, replace=replace, prefix="buffer")
    return jexperts.load_buffer(out_dir)


def check_target(out_dir: str, overwrite: bool) -> bool:
    """True if `out_dir` is an imported buffer to replace; refuses anything else that exists."""
    if not os.path.exists(out_dir):
        return False
    if not os.path.isdir(out_dir):
        raise safeio.OutputError(f"{out_dir} is an existing file; choose a new directory path")
    manifest = os.path.join(out_dir, jexperts.MANIFEST)
    if os.path.isfile(manifest):
        imported = jexperts.imported_from(out_dir)
        if not imported or not overwrite:
            raise safeio.OutputError(
                f"{out_dir} already holds an expert buffer; choose another --out" + (
                    " or pass --overwrite" if imported else ""))
        return True
    if os.listdir(out_dir):
        raise safeio.OutputError(f"{out_dir} exists and is not a jaxdd expert buffer; jaxdd "
                                 f"never replaces files it did not write: choose a new directory")
    return False
