"""Model registry: one name -> a `Model` with pure `init`/`apply` functions.

Names: `convnet` (depth picked from the resolution: 28/32 px -> D3, 64 -> D4, 128 -> D5),
`convnet_d4`, `convnet_d3_w64`, `convnet_bn` / `convnet_d3_w64_bn` (BatchNorm),
`convnet_d3_none` (no norm), `resnet18` (CIFAR stem, BN), `mlp`, `mlp_w64`.

ResNets (torchvision's layout, BN): `resnet18` / `resnet50` have the CIFAR stem (3x3 conv,
no max-pool); `resnet18_imagenet` / `resnet50_imagenet` the ImageNet stem (7x7/2 conv +
3x3/2 max-pool) and torchvision's parameter counts (11,689,512 / 25,557,032 at 1000
classes), loadable from torchvision weights with `jaxdd.models.convert`. The suffix `_bf16`
(e.g. `resnet50_imagenet_bf16`) computes in bfloat16 with float32 parameters and BN
statistics and float32 logits (for GPU/TPU; on CPU bfloat16 is slower). ResNets accept any
image size at `apply` (global average pool; ImageNet stem: H, W >= 32).

ResNet-18 variants of DC/DSA/DM's `networks.py` (the references' cross-architecture pool; no
suffix = BN, as jaxdd's `resnet18` always was): `resnet18` = `resnet18_bn` (DC
`ResNet18BN`), `resnet18_instance` (DC `ResNet18`, instance norm), `resnet18_ap` =
`resnet18_ap_bn` (DC `ResNet18BN_AP`: average-pool downsampling, flattened classifier input),
`resnet18_ap_instance` (DC `ResNet18_AP`).

The zoo (`jaxdd.models.zoo`, layouts of the references): `lenet`, `alexnet`, `alexnet_bn`,
`vgg11` (instance norm, DC's default), `vgg11_bn`, `mobilenetv2` (`mobilenetv2_half`: width
0.5, G-VBSM's teacher), `wrn_16_2` (`wrn_D_W`: any depth 6n + 4 and width), `shufflenetv2`
(1.0x; `shufflenetv2_0_5` ... `_2_0`). Every zoo model takes 28 px (1 or 3 channel) and
32 px images; see `ZOO` for each one's reference.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdd.models.convnet import ConvNet
from jaxdd.models.mlp import MLP
from jaxdd.models.resnet import BasicBlock, Bottleneck, ResNet
from jaxdd.models.zoo import (SHUFFLENETV2_SIZES, VGG, VGG_CFGS, AlexNet, LeNet, MobileNetV2,
                              ShuffleNetV2, WideResNet)

Variables = dict[str, Any]

_CONVNET = re.compile(r"^convnet(?:_d(\d+))?(?:_w(\d+))?(?:_(instance|bn|none))?$")
_MLP = re.compile(r"^mlp(?:_w(\d+))?$")
_RESNET = re.compile(r"^resnet(18|50)(_ap)?(_imagenet)?(?:_(bn|instance))?(_bf16)?$")
_RESNET_STAGES = {"18": ((2, 2, 2, 2), BasicBlock), "50": ((3, 4, 6, 3), Bottleneck)}
_WRN = re.compile(r"^wrn_(\d+)_(\d+)$")
_SHUFFLENETV2 = re.compile(r"^shufflenetv2(?:_(\d_\d))?$")
_ZOO_FIXED = {
    "lenet": LeNet,
    "alexnet": AlexNet,
    "alexnet_bn": lambda k: AlexNet(k, norm="batch"),
    "vgg11": lambda k: VGG(k, VGG_CFGS["vgg11"], norm="instance"),
    "vgg11_bn": lambda k: VGG(k, VGG_CFGS["vgg11"], norm="batch"),
    "mobilenetv2": MobileNetV2,
    "mobilenetv2_half": lambda k: MobileNetV2(k, width=0.5),
}
# The cross-architecture zoo: name -> the reference definition it follows (README's table).
ZOO = {
    "lenet": "DC networks.py LeNet",
    "alexnet": "DC networks.py AlexNet",
    "alexnet_bn": "DC networks.py AlexNetBN",
    "vgg11": "DC networks.py VGG11 (instance norm)",
    "vgg11_bn": "DC networks.py VGG11BN",
    "resnet18": "DC networks.py ResNet18BN (= torchvision ResNet-18, CIFAR stem)",
    "resnet18_instance": "DC networks.py ResNet18 (instance norm)",
    "resnet18_ap": "DC networks.py ResNet18BN_AP",
    "resnet18_ap_instance": "DC networks.py ResNet18_AP (instance norm)",
    "mobilenetv2": "G-VBSM models/mobilenetv2.py MobileNetV2 (T 6, width 1.0)",
    "mobilenetv2_half": "G-VBSM models/mobilenetv2.py mobile_half (G-VBSM's MobileNetV2)",
    "wrn_16_2": "G-VBSM models/wrn.py wrn_16_2",
    "shufflenetv2": "G-VBSM models/ShuffleNetv2.py ShuffleV2 (1.0x)",
    "shufflenetv2_0_5": "G-VBSM models/ShuffleNetv2.py ShuffleV2_0_5",
}
MODEL_NAMES = ("convnet", "convnet_d3", "convnet_d4", "convnet_d5", "convnet_bn",
               "convnet_d3_w64", "convnet_d3_w32", "resnet18", "resnet18_imagenet",
               "resnet50_imagenet", "mlp", *(n for n in ZOO if n != "resnet18"))


@dataclasses.dataclass(frozen=True)
class Model:
    """A network as pure functions of (variables, images).

    `variables` is Flax's dict: {'params': ...} plus {'batch_stats': ...} for BN models.
    """

    name: str
    module: nn.Module
    input_shape: tuple[int, int, int]  # (H, W, C)
    num_classes: int

    @property
    def has_batch_stats(self) -> bool:
        # Every jaxdd module with a normalisation names it in its `norm` field.
        return getattr(self.module, "norm", "") == "batch"

    def init(self, key: jax.Array) -> Variables:
        x = jnp.zeros((1, *self.input_shape), jnp.float32)
        return dict(self.module.init(key, x, train=False))

    def forward_only(self) -> "Model":
        """The same network (same variables, same function) in the layout that is fastest
        for a forward pass that is never differentiated.

        On XLA:CPU a ConvNet's `lax.conv` forward is ~2x faster than the channel-major im2col
        one (measured: DM's real embeddings, w128 on 10 x 256 CIFAR-size images 5.0 -> 2.2 s
        per class-mapped pass, w32 on 10 x 64 Fashion-MNIST images 0.12 -> 0.06 s), while
        im2col wins wherever a gradient flows back through the convs. Other models and
        backends: the model itself.
        """
        if (jax.default_backend() != "cpu" or not isinstance(self.module, ConvNet)
                or self.module.conv_impl == "lax"):
            return self
        return dataclasses.replace(self, module=self.module.clone(conv_impl="lax"))

    def apply(self, variables: Variables, x_NHWC: jax.Array) -> jax.Array:
        """Inference logits (BN uses running statistics)."""
        return self.module.apply(variables, x_NHWC, train=False)

    def apply_train(self, variables: Variables, x_NHWC: jax.Array,
                    mask_B: jax.Array | None = None) -> tuple[jax.Array, Variables]:
        """Training-mode logits and the variables with updated BN statistics.

        mask_B (B,), nonzero for real rows: every BatchNorm takes its batch mean and (biased)
        variance over those rows only, for the normalisation and the running statistics, so
        a padded batch trains as the smaller batch of its real rows (PyTorch's last batch
        with drop_last=False). Without BN the mask changes nothing and is not used.
        """
        if mask_B is not None and tuple(mask_B.shape) != (x_NHWC.shape[0],):
            raise ValueError(f"mask_B has shape {tuple(mask_B.shape)}; pass one entry per "
                             f"image, shape ({x_NHWC.shape[0]},)")
        if not self.has_batch_stats:
            return self.module.apply(variables, x_NHWC, train=True), variables
        if mask_B is None:
            logits, upd = self.module.apply(variables, x_NHWC, train=True, mutable=["batch_stats"])
        else:
            seen = []
            with nn.intercept_methods(_batch_norm_mask(mask_B, seen)):
                logits, upd = self.module.apply(variables, x_NHWC, train=True,
                                                mutable=["batch_stats"])
            if not seen:
                raise ValueError(f"model {self.name!r} has batch statistics but called no "
                                 f"flax.linen.BatchNorm, so mask_B cannot reach them")
        return logits, {**variables, "batch_stats": upd["batch_stats"]}


def _batch_norm_mask(mask_B: jax.Array, seen: list) -> Callable:
    """Method interceptor handing mask_B to every `nn.BatchNorm` call (Flax then reduces
    with `mean(where=mask)`; under a sharded jit XLA sums over all devices). An interceptor
    rather than a `mask` argument on every model: it reaches each BN of any Linen model."""
    mask = jnp.asarray(mask_B) != 0

    def intercept(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.BatchNorm) and context.method_name == "__call__":
            x = args[0]
            if x.shape[0] != mask.shape[0]:
                raise ValueError(f"BatchNorm {'/'.join(context.module.path)} sees a batch of "
                                 f"{x.shape[0]}, mask_B has {mask.shape[0]} entries; the batch "
                                 f"must be axis 0 of every BN input")
            seen.append(context.module.path)
            kwargs = {**kwargs, "mask": mask.reshape((-1,) + (1,) * (x.ndim - 1))}
        return next_fun(*args, **kwargs)

    return intercept


def default_depth(height: int) -> int:
    return {28: 3, 32: 3, 64: 4, 128: 5}.get(height, 3)


def get_model(name: str, num_classes: int, input_shape: tuple[int, int, int],
              conv_impl: str = "auto") -> Model:
    """Build a registered model for images of `input_shape` (H, W, C).

    conv_impl (ConvNets): "auto" = channel-major im2col ("im2col_cm", the fastest measured on
    XLA:CPU: MTT outer step -30 %, training step -20..30 %) where the norm allows it, else
    "im2col"; "lax" = lax.conv. All give the same parameters and the same function.
    """
    input_shape = tuple(int(s) for s in input_shape)
    if m := _CONVNET.match(name):
        depth = int(m.group(1)) if m.group(1) else default_depth(input_shape[0])
        width = int(m.group(2)) if m.group(2) else 128
        norm = {"bn": "batch", None: "instance"}.get(m.group(3), m.group(3))
        if input_shape[0] // 2**depth < 1:
            raise ValueError(f"model {name!r}: depth {depth} pools {input_shape[0]} px images "
                             f"to nothing; use a smaller depth (e.g. convnet_d3)")
        if conv_impl == "auto":
            conv_impl = "im2col" if norm == "batch" else "im2col_cm"
        module = ConvNet(num_classes, width=width, depth=depth, norm=norm, conv_impl=conv_impl)
    elif (m := _RESNET.match(name)) and not (m.group(2) and (m.group(1) != "18" or m.group(3))):
        stages, block = _RESNET_STAGES[m.group(1)]
        imagenet = bool(m.group(3))
        module = ResNet(stages, block, num_classes, stem="imagenet" if imagenet else "cifar",
                        dtype=jnp.bfloat16 if m.group(5) else None, torch_fc_init=imagenet,
                        norm="instance" if m.group(4) == "instance" else "batch",
                        downsample="avgpool" if m.group(2) else "stride")
    elif name in _ZOO_FIXED:
        module = _ZOO_FIXED[name](num_classes)
    elif (m := _WRN.match(name)) and (int(m.group(1)) - 4) % 6 == 0 and int(m.group(1)) >= 10:
        module = WideResNet(num_classes, depth=int(m.group(1)), widen=int(m.group(2)))
    elif (m := _SHUFFLENETV2.match(name)) and (m.group(1) or "1_0") in SHUFFLENETV2_SIZES:
        module = ShuffleNetV2(num_classes, size=m.group(1) or "1_0")
    elif m := _MLP.match(name):
        module = MLP(num_classes, width=int(m.group(1) or 128))
    else:
        raise ValueError(f"unknown model {name!r}; use one of {', '.join(MODEL_NAMES)} "
                         f"(convnet_dD_wW[_bn|_none] for other depths/widths, "
                         f"resnet{{18,50}}[_imagenet][_bn|_instance][_bf16], resnet18_ap[_bn|_instance], "
                         f"wrn_D_W with D = 6n + 4, shufflenetv2_{{0_5,1_0,1_5,2_0}})")
    return Model(name, module, input_shape, num_classes)


def count_params(variables: Variables) -> int:
    """Trainable parameters only (BN running statistics excluded), as the papers count."""
    return sum(int(x.size) for x in jax.tree.leaves(variables["params"]))


def param_count(name: str, num_classes: int, input_shape: tuple[int, int, int]) -> int:
    """Parameter count without allocating (shapes only)."""
    model = get_model(name, num_classes, input_shape)
    shapes = jax.eval_shape(model.init, jax.random.key(0))
    return sum(int(x.size) for x in jax.tree.leaves(shapes["params"]))


# Chunking on CPU (`auto_chunks`), measured on the 2-core machine with benchmarks/chunks.py
# (benchmarks/results/chunks_cpu.json; ConvNet-D3, 28 px; time against the whole batch):
# MTT outer step (10 unrolled inner steps): width 32, 100 images, 2 chunks 0.92, 4 chunks
# 0.93; 10 images, 2 chunks 0.92; width 128, 100 images, 4 chunks 0.80, 8 chunks 0.82.
# Training, 10 epochs: width 32 batch 256, 4 chunks 0.76, 5 chunks 0.80; width 128 on 100
# images, 4 chunks 0.86, 8 chunks 0.80. Two chunks let XLA run two independent chains on
# the two cores; beyond that, chunks whose activations fit in cache help wide nets. Under
# an unrolled loop compile time grows with the chunk count (MTT width 128: 5 s whole, 20 s
# at 4 chunks, 58 s at 8), so MTT caps it lower (`max_chunks`).
CPU_CHUNK_BYTES = 13 * 2**19   # first-layer activations per chunk (6.5 MiB)
CPU_MAX_CHUNKS = 8


def chunked(apply_fn: Callable[[Any, jax.Array], jax.Array], num_chunks: int
            ) -> Callable[[Any, jax.Array], jax.Array]:
    """`apply_fn` evaluated on `num_chunks` consecutive, balanced chunks of the batch, logits
    concatenated: the same function for any per-image model (no batch statistics); 1 = off.

    Why: XLA:CPU materialises every op of the whole batch in memory and splits each op over
    the cores; independent chunks run side by side on the cores and keep their activations
    (and, under autodiff, their derivatives) in cache. The chunks are a Python loop, so
    compile time grows with their number.
    """
    if num_chunks < 1:
        raise ValueError(f"num_chunks={num_chunks} must be >= 1 (1 = no chunking)")
    if num_chunks == 1:
        return apply_fn

    def apply(params: Any, x_NHWC: jax.Array) -> jax.Array:
        n = x_NHWC.shape[0]
        size = -(-n // min(num_chunks, n))   # 100 images in 8 chunks -> 7 x 13 + 9
        if size >= n:
            return apply_fn(params, x_NHWC)
        return jnp.concatenate([apply_fn(params, x_NHWC[i : i + size]) for i in range(0, n, size)])

    return apply


def auto_chunks(model: Model, batch: int, max_chunks: int = CPU_MAX_CHUNKS) -> int:
    """Chunks for `chunked` that suit this model, batch size and machine; 1 = no chunking.

    Chunks only where it is exact and measured faster: a ConvNet without batch statistics on
    a single multi-core CPU device (a sharded batch is already split by the mesh; GPUs and
    TPUs want the whole batch). At least two chunks, more when the first-layer activations
    exceed CPU_CHUNK_BYTES per chunk, at most `max_chunks`.
    """
    m = model.module
    if (jax.default_backend() != "cpu" or jax.device_count() > 1 or (os.cpu_count() or 1) < 2
            or not isinstance(m, ConvNet) or model.has_batch_stats or batch < 2):
        return 1
    h, w = model.input_shape[:2]
    pad = 3 if h == 28 else 1   # as ConvNet's first layer
    act_bytes = batch * (h + 2 * pad - 2) * (w + 2 * pad - 2) * m.width * 4
    return int(min(max(2, -(-act_bytes // CPU_CHUNK_BYTES)), max_chunks, batch))


__all__ = ["Model", "get_model", "count_params", "param_count", "embed", "MODEL_NAMES", "ZOO",
           "chunked", "auto_chunks"]


def embed(model: Model, variables: Variables, x_NHWC: jax.Array) -> jax.Array:
    """Features entering the final linear layer (the embedding DM/herding use).

    Captured with `nn.intercept_methods`, so no model needs an `embed` method of its own.
    """
    captured = []

    def grab(next_fun, args, kwargs, context):
        if isinstance(context.module, nn.Dense) and context.method_name == "__call__":
            captured.append(args[0])
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(grab):
        model.apply(variables, x_NHWC)
    return captured[-1]
