"""Named, serialisable evaluation protocols.

`mtt` is the reference recipe of the trajectory-matching papers (../shared/specs/
evaluation.md section 1). `cpu` is the same recipe reduced to fit this project's 2-core CI
machine; its numbers are only comparable with other `cpu` numbers. `smoke` is for tests.
`frepo` is FRePo's own evaluation (github.com/yongchao97/FRePo `script/eval.py`: Adam 3e-4,
no weight decay, MSE on the set's learned regression targets, ConvNet without norm,
1000 steps at batch min(N, 500)); `frepo_cpu` is it on ConvNet-D3-W32, 300 epochs.
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


PROTOCOLS: dict[str, Protocol] = {
    "mtt": Protocol(
        "mtt", "convnet",
        TrainConfig(epochs=1000, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4,
                    schedule="step", dsa=DSA_DEFAULT),
        TrainConfig(epochs=50, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4,
                    schedule="step", dsa=""),
        "ConvNet-D3/D4 width 128, SGD(m 0.9, wd 5e-4), 1000 epochs, lr x0.1 at 500, "
        "batch 256, DSA on every batch (MTT/TESLA/DATM/FTD evaluation)."),
    "cpu": Protocol(
        "cpu", "convnet_d3_w32",
        TrainConfig(epochs=300, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4,
                    schedule="step", dsa=DSA_DEFAULT),
        TrainConfig(epochs=5, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4,
                    schedule="step", dsa=""),
        "ConvNet-D3 width 32, SGD(m 0.9, wd 5e-4), 300 epochs, lr x0.1 at 150, batch 256, "
        "DSA; full data: 5 epochs without DSA. Sized for a 2-core CPU."),
    # FRePo script/eval.py: eval net = the distilling ConvNet with 'identity' norm (l.202-203),
    # Adam lr 3e-4 (l.128; weight_decay only reaches adamw/lamb), batch min(N, 500) (l.231),
    # 1000 updates for 100 images (l.208), MSE on y_proto (l.129 loss='mse'), augmax
    # 'color_crop_rotate_translate_cutout' for grey data (l.164-166). jaxdd: cosine to 0
    # without FRePo's 500-step warmup (l.221-225), DSA, epochs (= steps while N <= 500).
    "frepo": Protocol(
        "frepo", "convnet_d3_none",
        TrainConfig(epochs=1000, batch_size=500, lr=3e-4, momentum=0.0, weight_decay=0.0,
                    schedule="cosine", optimizer="adamw", loss="mse", dsa=DSA_DEFAULT),
        TrainConfig(epochs=50, batch_size=256, lr=3e-4, momentum=0.0, weight_decay=0.0,
                    schedule="cosine", optimizer="adamw", loss="mse", dsa=""),
        "ConvNet-D3 width 128 without norm, Adam 3e-4 (no wd), cosine, 1000 epochs, batch "
        "min(N, 500), MSE on the learned regression targets (hard labels: one-hot - 1/K), "
        "DSA (FRePo's script/eval.py)."),
    "frepo_cpu": Protocol(
        "frepo_cpu", "convnet_d3_w32_none",
        TrainConfig(epochs=300, batch_size=500, lr=3e-4, momentum=0.0, weight_decay=0.0,
                    schedule="cosine", optimizer="adamw", loss="mse", dsa=DSA_DEFAULT),
        TrainConfig(epochs=5, batch_size=256, lr=3e-4, momentum=0.0, weight_decay=0.0,
                    schedule="cosine", optimizer="adamw", loss="mse", dsa=""),
        "`frepo` on ConvNet-D3 width 32 without norm, 300 epochs. Sized for a 2-core CPU; "
        "compare only with other `frepo_cpu` numbers."),
    "smoke": Protocol(
        "smoke", "mlp_w32",
        TrainConfig(epochs=20, batch_size=64, lr=0.01, momentum=0.9, weight_decay=5e-4,
                    schedule="step", dsa=""),
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
