"""torchvision ResNet weights <-> jaxdd Flax variables, and converted weights as a teacher.

The jaxdd ResNets (`resnet18[_imagenet]`, `resnet50[_imagenet]`, any `_bf16`) follow
torchvision's layout, so a state dict maps one to one:

    conv1.weight (O, I, kH, kW)         -> params/Conv_0/kernel (kH, kW, I, O)
    bn1.weight / bias                   -> params/BatchNorm_0/scale / bias
    bn1.running_mean / running_var      -> batch_stats/BatchNorm_0/mean / var
    layer{s}.{b}.conv{j} / bn{j}        -> {Block}_{k}/Conv_{j-1} / BatchNorm_{j-1},
                                           k = b + blocks of the stages before s
    layer{s}.{b}.downsample.0 / .1      -> {Block}_{k}/Conv_{n} / BatchNorm_{n}, n = convs
                                           per block (BasicBlock 2, Bottleneck 3)
    fc.weight (K, D) / fc.bias          -> params/Dense_0/kernel (D, K) / bias

`num_batches_tracked` is ignored. A state dict is a mapping of name -> numpy array or torch
tensor; reading a `.pth` file needs torch (`pip install 'jaxdd[torch]'`), imported only then.
The CIFAR-stem `resnet18` matches the references' torchvision ResNet-18 with a 3x3 `conv1`
and no max-pool. Models take NHWC images; torchvision NCHW.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import jax
import numpy as np
from flax import traverse_util

from jaxdd import data as jdata
from jaxdd.data.preprocess import KNOWN_STATS
from jaxdd.models import Model, Variables, get_model
from jaxdd.models.resnet import ResNet
from jaxdd.population.teachers import save_teacher

# torchvision's ImageNet normalisation of [0, 1] pixels (transforms of every ResNet weight).
TORCHVISION_MEAN, TORCHVISION_STD = KNOWN_STATS["imagenet2012"]
_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
         "var": "running_var"}
_SHOW = 5  # keys named per kind in a mismatch error

__all__ = ["TORCHVISION_MEAN", "TORCHVISION_STD", "load_state_dict", "torchvision_to_flax",
           "flax_to_torchvision", "torchvision_to_teacher"]


def _net(model: Model) -> ResNet:
    if (not isinstance(model.module, ResNet) or model.module.norm != "batch"
            or model.module.downsample != "stride"):
        raise ValueError(f"model {model.name!r} is not a ResNet in torchvision's layout (BN, "
                         f"strided downsampling); torchvision conversion covers "
                         f"resnet18[_imagenet] and resnet50[_imagenet]")
    return model.module


def _torch_key(net: ResNet, path: tuple[str, ...]) -> str:
    """torchvision's state-dict key of the Flax variable at `path` (collection, ..., leaf)."""
    _, *mods, leaf = path
    if len(mods) == 1:  # stem and classifier
        prefix = {"Conv_0": "conv1", "BatchNorm_0": "bn1", "Dense_0": "fc"}[mods[0]]
    else:
        block, layer = mods
        k = int(block.rsplit("_", 1)[1])
        stage = int(np.searchsorted(np.cumsum(net.stage_sizes), k, side="right"))
        kind, j = layer.rsplit("_", 1)
        own = f"{'conv' if kind == 'Conv' else 'bn'}{int(j) + 1}"
        short = f"downsample.{0 if kind == 'Conv' else 1}"
        prefix = (f"layer{stage + 1}.{k - sum(net.stage_sizes[:stage])}."
                  f"{own if int(j) < net.block.num_convs else short}")
    return f"{prefix}.{_LEAF[leaf]}"


def _to_torch(a: np.ndarray) -> np.ndarray:
    """Flax layout -> torch layout: conv HWIO -> OIHW, linear (in, out) -> (out, in)."""
    return a.transpose(3, 2, 0, 1) if a.ndim == 4 else a.T if a.ndim == 2 else a


def _to_flax(a: np.ndarray) -> np.ndarray:
    """torch layout -> Flax layout (inverse of `_to_torch`)."""
    return a.transpose(2, 3, 1, 0) if a.ndim == 4 else a.T if a.ndim == 2 else a


def _layout(model: Model) -> dict[str, tuple[tuple[str, ...], tuple[int, ...]]]:
    """torchvision key -> (Flax path, torch-layout shape) of every variable of `model`."""
    net = _net(model)
    flat = traverse_util.flatten_dict(jax.eval_shape(model.init, jax.random.key(0)))
    return {_torch_key(net, p): (p, _to_torch(np.broadcast_to(False, s.shape)).shape)
            for p, s in flat.items()}


def _as_numpy(v: Any) -> np.ndarray:
    """A numpy array or a torch tensor (any float dtype, bfloat16 included) -> float32 numpy."""
    if hasattr(v, "detach"):  # torch.Tensor, without importing torch
        v = v.detach().cpu().float().numpy()
    return np.asarray(v, np.float32)


def load_state_dict(path: str | os.PathLike) -> dict[str, Any]:
    """The state dict of a torchvision `.pth` file (tensors on the CPU); needs torch.

    Accepts a bare state dict or a checkpoint holding one under "state_dict" or "model";
    a "module." prefix on every key (DataParallel) is removed.
    """
    try:
        import torch
    except ImportError:
        raise ImportError(f"reading {os.fspath(path)} needs PyTorch: pip install 'jaxdd[torch]' "
                          f"(or pass a dict of numpy arrays)") from None
    obj = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    for k in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(k), Mapping):
            obj = obj[k]
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def torchvision_to_flax(state_dict: Mapping[str, Any], model: Model) -> Variables:
    """{'params', 'batch_stats'} (float32 numpy) of `model` from a torchvision state dict.

    Raises ValueError naming the missing, unexpected and shape-mismatched keys (the first
    few of each and their counts) when the state dict does not fit the model.
    """
    layout = _layout(model)
    given = {k: v for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in layout if k not in given]
    unexpected = [k for k in given if k not in layout]
    mismatched = [f"{k} {tuple(np.shape(given[k]))} (model: {layout[k][1]})"
                  for k in layout if k in given and tuple(np.shape(given[k])) != layout[k][1]]
    if missing or unexpected or mismatched:
        parts = [f"{len(keys)} {what}: {', '.join(keys[:_SHOW])}{', ...' * (len(keys) > _SHOW)}"
                 for what, keys in (("missing", missing), ("unexpected", unexpected),
                                    ("shape-mismatched", mismatched)) if keys]
        raise ValueError(f"torchvision state dict does not fit model {model.name!r} with "
                         f"{model.num_classes} classes: " + "; ".join(parts))
    flat = {path: _to_flax(_as_numpy(given[k])) for k, (path, _) in layout.items()}
    return traverse_util.unflatten_dict(flat)


def flax_to_torchvision(variables: Variables, model: Model) -> dict[str, np.ndarray]:
    """The torchvision state dict (numpy, no `num_batches_tracked`) of `model`'s variables;
    the inverse of `torchvision_to_flax` (evaluate or fine-tune a jaxdd ResNet in PyTorch)."""
    net = _net(model)
    return {_torch_key(net, p): _to_torch(np.asarray(v, np.float32))
            for p, v in traverse_util.flatten_dict(variables).items()}


def torchvision_to_teacher(pth_or_state_dict: str | os.PathLike | Mapping[str, Any],
                           model_name: str, out_dir: str, dataset: str, num_classes: int = 1000,
                           input_shape: tuple[int, int, int] = (224, 224, 3),
                           preprocess: jdata.Preprocess | None = None) -> dict[str, Any]:
    """Convert torchvision weights into a jaxdd teacher directory at `out_dir`
    (`jaxdd.population.teachers.load_teachers` reads it). Returns its manifest.

    `preprocess` defaults to torchvision's ImageNet normalisation (`normalize`, mean
    TORCHVISION_MEAN, std TORCHVISION_STD, for `input_shape`).
    """
    is_path = isinstance(pth_or_state_dict, (str, os.PathLike))
    sd = load_state_dict(pth_or_state_dict) if is_path else pth_or_state_dict
    shape = tuple(int(s) for s in input_shape)
    variables = torchvision_to_flax(sd, get_model(model_name, num_classes, shape))
    pre = preprocess or jdata.Preprocess("normalize", shape,
                                         np.asarray(TORCHVISION_MEAN, np.float32),
                                         np.asarray(TORCHVISION_STD, np.float32))
    source = os.path.abspath(pth_or_state_dict) if is_path else "torchvision state dict"
    return save_teacher(out_dir, model_name, variables, dataset=dataset,
                        num_classes=num_classes, input_shape=shape, preprocess=pre,
                        source=f"torchvision: {source}")
