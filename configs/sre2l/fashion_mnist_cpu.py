"""SRe2L on Fashion-MNIST, reduced to run on a 2-core CPU (the statistics-matching quickstart).

Commands:
  jaxdd teacher --config configs/sre2l/fashion_mnist_cpu.py            # squeeze (optional:
                                                                         # recover trains it)
  jaxdd recover --config configs/sre2l/fashion_mnist_cpu.py --ipc 10 --out runs/sm10
  jaxdd relabel runs/sm10 --mode stored --json                          # KD students, test acc
Runtime / expected: measured by jaxdd, see benchmarks/results/sm_fmnist.json
(`python benchmarks/sm_fmnist.py`).

Reductions against the references: ConvNet-D3 width 32 with BN as the teacher (3 epochs
of the CIFAR-100 recipe instead of a 200-epoch ResNet-18), 300 recover iterations per
batch instead of 1000, and a 300-epoch student on the `cpu` protocol's ConvNet-D3-W32.
The recover hyper-parameters are otherwise the SRe2L CIFAR-100 preset (no crop, jitter
0..4 px, r_bn 0.01, lr 0.25).
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, method="sre2l",     # sre2l | cda | gvbsm | dwa
        recover=dict(                 # jaxdd.methods.sre2l.RecoverConfig (only non-defaults)
            lr=0.25,                  # Adam(0.5, 0.9) on normalised pixels, cosine to 0
            r_bn=0.01,                # weight of the BN statistics term
            iterations=300,           # per batch (SRe2L CIFAR-100: 1000)
        ),
    )
