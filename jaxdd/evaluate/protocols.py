"""Named, serialisable evaluation protocols.

`mtt` is the reference recipe of the trajectory-matching papers (../shared/specs/
evaluation.md section 1). The classic matchers' papers evaluate in their own ways, each a
named protocol (facts from VICO-UoE/DatasetCondensation and DataDistillation/DataDAM):
- `dc`: DC's `main.py` (:20 epoch_eval_train 300, :23 lr_net 0.01, :25 batch_train 256)
  with `utils.get_daparam` strategy 'none' for every non-MNIST dataset and ConvNet: no
  augmentation, 300 epochs (1000 only when augmenting), lr x0.1 after half of them.
- `dsa`: DSA's and DM's `evaluate_synset` with DSA (`color_crop_cutout_flip_scale_rotate`),
  1000 epochs, batch 256, lr 0.01: the same recipe as `mtt`, named for what it evaluates.
- `datadam`: DataDAM's `main_DataDAM.py` (:26 epoch_eval_train 1800, :29 lr_net 0.01, :31
  batch_train 64, :33 DSA strategy) with a BatchNorm ConvNet (`ConvNetBN`, issue #14).
`cpu` is the `mtt` recipe reduced to fit this project's 2-core CI machine (`reduced`: its
numbers are only comparable with other `cpu` numbers). `smoke` is for tests.
`frepo` is FRePo's own evaluation (github.com/yongchao97/FRePo `script/eval.py`: Adam 3e-4,
no weight decay, MSE on the set's learned regression targets, ConvNet without norm,
1000 steps at batch min(N, 500)); `frepo_cpu` is it on ConvNet-D3-W32, 300 epochs (reduced).
"""

from __future__ import annotations

import dataclasses

from jaxdd.augment import DSA_DEFAULT
from jaxdd.train import TrainConfig



@dataclasses.dataclass(frozen=True)
class Protocol:
    name: str
    model: str            # registry name of the student (cross-arch: override per call)
    train: TrainConfig    # recipe for training on a distilled set (lr: default if none learned)
    full_train: TrainConfig  # recipe for the full-dataset upper bound
    description: str = ""
    reduced: bool = False  # a CPU-sized stand-in for a paper's protocol (compare like with like)


def _sgd(epochs: int, batch_size: int = 256, dsa: str = DSA_DEFAULT) -> TrainConfig:
    """The references' evaluation optimiser: SGD(lr 0.01, m 0.9, wd 5e-4), lr x0.1 at half."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=0.01, momentum=0.9,
                       weight_decay=5e-4, schedule="step", dsa=dsa)


def _adam_mse(epochs: int, batch_size: int = 500, dsa: str = DSA_DEFAULT) -> TrainConfig:
    """FRePo's evaluation optimiser: Adam 3e-4 without weight decay, cosine, MSE targets."""
    return TrainConfig(epochs=epochs, batch_size=batch_size, lr=3e-4, momentum=0.0,
                       weight_decay=0.0, schedule="cosine", optimizer="adamw", loss="mse",
                       dsa=dsa)


PROTOCOLS: dict[str, Protocol] = {
    "mtt": Protocol(
        "mtt", "convnet",
        _sgd(1000),
        _sgd(50, dsa=""),
        "ConvNet-D3/D4 width 128, SGD(m 0.9, wd 5e-4), 1000 epochs, lr x0.1 at 500, "
        "batch 256, DSA on every batch (MTT/TESLA/DATM/FTD evaluation)."),
    "cpu": Protocol(
        "cpu", "convnet_d3_w32",
        _sgd(300),
        _sgd(5, dsa=""),
        "ConvNet-D3 width 32, SGD(m 0.9, wd 5e-4), 300 epochs, lr x0.1 at 150, batch 256, "
        "DSA; full data: 5 epochs without DSA. Reduced: sized for a 2-core CPU.", reduced=True),
    "dc": Protocol(
        "dc", "convnet",
        _sgd(300, dsa=""),
        _sgd(50, dsa=""),
        "DC's evaluation: ConvNet-D3 width 128, SGD(m 0.9, wd 5e-4), 300 epochs, lr x0.1 at "
        "150, batch 256, no augmentation (DatasetCondensation main.py, get_daparam)."),
    "dsa": Protocol(
        "dsa", "convnet",
        _sgd(1000),
        _sgd(50, dsa=""),
        "DSA / DM evaluation: ConvNet-D3 width 128, SGD(m 0.9, wd 5e-4), 1000 epochs, lr x0.1 "
        "at 500, batch 256, DSA on every batch (DatasetCondensation evaluate_synset)."),
    "datadam": Protocol(
        "datadam", "convnet_d3_w128_bn",
        _sgd(1800, batch_size=64),
        _sgd(50, dsa=""),
        "DataDAM's evaluation: ConvNet-D3 width 128 with BatchNorm, SGD(m 0.9, wd 5e-4), 1800 "
        "epochs, lr x0.1 at 900, batch 64, DSA on every batch (main_DataDAM.py)."),
    # FRePo script/eval.py: eval net = the distilling ConvNet with 'identity' norm (l.202-203),
    # Adam lr 3e-4 (l.128; weight_decay only reaches adamw/lamb), batch min(N, 500) (l.231),
    # 1000 updates for 100 images (l.208), MSE on y_proto (l.129 loss='mse'), augmax
    # 'color_crop_rotate_translate_cutout' for grey data (l.164-166). jaxdd: cosine to 0
    # without FRePo's 500-step warmup (l.221-225), DSA, epochs (= steps while N <= 500).
    "frepo": Protocol(
        "frepo", "convnet_d3_none",
        _adam_mse(1000),
        _adam_mse(50, batch_size=256, dsa=""),
        "ConvNet-D3 width 128 without norm, Adam 3e-4 (no wd), cosine, 1000 epochs, batch "
        "min(N, 500), MSE on the learned regression targets (hard labels: one-hot - 1/K), "
        "DSA (FRePo's script/eval.py)."),
    "frepo_cpu": Protocol(
        "frepo_cpu", "convnet_d3_w32_none",
        _adam_mse(300),
        _adam_mse(5, batch_size=256, dsa=""),
        "`frepo` on ConvNet-D3 width 32 without norm, 300 epochs. Reduced: sized for a 2-core "
        "CPU; compare only with other `frepo_cpu` numbers.", reduced=True),
    "smoke": Protocol(
        "smoke", "mlp_w32",
        _sgd(20, batch_size=64, dsa=""),
        TrainConfig(epochs=1, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4,
                    schedule="constant", dsa=""),
        "Tiny MLP, 20 epochs, no augmentation: for tests and smoke runs only."),
}


def get_protocol(name: str, *, augment: bool = True, **overrides) -> Protocol:
    """A named protocol; `overrides` replace TrainConfig fields (e.g. epochs=10).

    `augment=False` trains without any augmentation (dsa ""), on the set and on the full
    data alike: the switch that separates what a set holds from what its augmentation adds
    (DD-Ranking's augmentation-robust comparison, `jaxdd score`)."""
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; use one of {', '.join(PROTOCOLS)}")
    p = PROTOCOLS[name]
    if overrides:
        p = dataclasses.replace(p, train=dataclasses.replace(p.train, **overrides))
    if not augment:
        p = dataclasses.replace(p, train=dataclasses.replace(p.train, dsa=""),
                                full_train=dataclasses.replace(p.full_train, dsa=""))
    return p


def protocol_to_dict(p: Protocol) -> dict:
    return dataclasses.asdict(p)
