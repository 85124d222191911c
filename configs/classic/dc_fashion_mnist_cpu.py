"""DC (gradient matching) on Fashion-MNIST, reduced for a 2-core CPU.

Command:  jaxdd distill --config configs/classic/dc_fashion_mnist_cpu.py --ipc 10
Runtime / expected accuracy: measured by jaxdd in benchmarks/results/fashion_mnist.md.
Reductions: ConvNet-D3 width 32; `iterations` counts distiller steps (one outer step of
the reference each; the reference runs 1000 x outer_loop of them); batch_real 64.
Evaluation: the reduced `cpu` protocol (ConvNet-D3 width 32, 300 epochs, DSA; a CPU
stand-in, recorded as `protocol_reduced`); the paper's protocol is in dc_cifar10.py.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, method="dc",
        iterations=200,               # distiller steps = reference iterations x outer_loop
        ckpt_every=50,
        dc=dict(lr_img=0.1, lr_net=0.01, batch_real=64, batch_train=256),
        by_ipc={1: dict(iterations=300), 10: dict(iterations=200), 50: dict(iterations=100)},
    )
