"""RDED on Fashion-MNIST at the largest budget this 2-core CPU runs in <= 2 h per stage,
evaluated on the `mtt` protocol's student (issue #17).

Commands:
  jaxdd recover --config configs/sre2l/rded_fashion_mnist.py --ipc 10 --out runs/rded10
  jaxdd relabel runs/rded10 --protocol mtt --seeds 5 --json   # KD students, width 128
  python benchmarks/fmnist_table.py --methods rded             # every IPC, `mtt` and `cpu`
Reference (RDED's CIFAR scripts, as configs/sre2l/rded_cifar100.py; no Fashion-MNIST run
published): teacher ResNet-18 (modified stem) trained 200 epochs; selection from 300 real
images per class x 5 random-resized crops (area 0.08-1), factor 1 at 32 px; students
trained 300 epochs with KD (AdamW 1e-3, T 20, CutMix; recipe `rded`).
Kept: the selection (mipc 300, 5 crops, factor 1) and the student recipe (300 epochs).
Budget here, and why: the teacher is a BatchNorm ConvNet-D3 width 32 trained 30 epochs
(the `cpu` preset's teacher recipe, 10x longer; its own directory). Measured for the `cpu`
preset: 3 epochs took 574 s under load (~190 s/epoch), so 30 epochs ~1.6 h; a width-128
or ResNet-18 teacher costs >10x per epoch. Selection is seconds. Students: the protocol's
model (`relabel --protocol`): width 128 under `mtt`, width 32 under `cpu`; KD, not the
hard-label recipe of the other rows.
Expected: not yet measured; see benchmarks/results/fashion_mnist.md.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, method="rded",
        teacher=dict(model="convnet_d3_w32_bn",
                     dir="runs/teachers/fashion_mnist-convnet_d3_w32_bn-normalize-s0-e30",
                     epochs=30),      # reference: ResNet-18, 200 epochs (see above)
        rded=dict(factor=1, num_crop=5, mipc=300),
        relabel=dict(recipe="rded", epochs=300),
    )
