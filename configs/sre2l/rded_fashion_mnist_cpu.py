"""RDED on Fashion-MNIST, reduced to run on a 2-core CPU (the crop-selection quickstart).

Commands:
  jaxdd teacher --config configs/sre2l/rded_fashion_mnist_cpu.py       # squeeze (optional:
                                                                         # recover trains it)
  jaxdd recover --config configs/sre2l/rded_fashion_mnist_cpu.py --ipc 10 --out runs/rded10
  jaxdd relabel runs/rded10 --json                                      # KD students, test acc
  jaxdd evaluate runs/rded10/artefact --protocol cpu                    # hard labels only

The teacher is the one of configs/sre2l/fashion_mnist_cpu.py (same model, epochs, batch
and seed, hence the same directory runs/teachers/fashion_mnist-convnet_d3_w32_bn-...):
whichever preset runs first trains it, the other reuses it. Selection at 28 px uses factor
1 with the RDED CIFAR numbers (5 crops of each of 300 images per class).

Measured (one run, seed 0, one pinned core of a 2-core CPU shared with other jobs; wall
times): teacher 574 s, 88.7 % test accuracy; selection 30 s (15,000 teacher passes);
`jaxdd relabel runs/rded10 --report best --select val` (recipe rded, 3 ConvNet-D3-W32
students, 300 epochs, evaluated every 10) 37 min: last epoch 75.9 +- 0.7 % test accuracy,
best (val-selected) 77.2 +- 0.3 %. SRe2L IPC 10 with the same teacher preset: 68.7 %
(benchmarks/results/sm_fmnist.json; another student recipe).
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, method="rded",
        rded=dict(                    # jaxdd.methods.rded.RDEDConfig
            factor=1,                 # 28 px: one crop per synthetic image
            num_crop=5,
            mipc=300,
        ),
        relabel=dict(recipe="rded"),  # RDED's student recipe
    )
