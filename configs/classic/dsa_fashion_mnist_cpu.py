"""DSA (DC + siamese augmentation) on Fashion-MNIST, reduced for a 2-core CPU.

Command:  jaxdd distill --config configs/classic/dsa_fashion_mnist_cpu.py --ipc 10
Runtime / expected accuracy: measured by jaxdd in benchmarks/results/fashion_mnist.md.
Reductions: as configs/classic/dc_fashion_mnist_cpu.py; real init (DSA readme).
Evaluation: the reduced `cpu` protocol (ConvNet-D3 width 32, 300 epochs, DSA; a CPU
stand-in, recorded as `protocol_reduced`); the paper's protocol is in dsa_cifar10.py.
DSA color_crop_cutout_flip_scale_rotate: the DatasetCondensation readme (DSA section, basic
experiments) uses flip for FashionMNIST and CIFAR and drops it only for the digit sets
MNIST / SVHN; DataDAM and DCC build on that code with the same default.
Rows measured before this change (issue #14) used dsa_strategy color_crop_cutout_scale_rotate
(no flip): reproduce them with `--set dsa.dsa_strategy=color_crop_cutout_scale_rotate`.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, method="dsa",
        iterations=200,
        ckpt_every=50,
        dsa=dict(lr_img=0.1, lr_net=0.01, batch_real=64, batch_train=256,
                 dsa_strategy="color_crop_cutout_flip_scale_rotate"),
        by_ipc={1: dict(iterations=300), 10: dict(iterations=200), 50: dict(iterations=100)},
    )
