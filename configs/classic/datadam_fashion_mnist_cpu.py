"""DataDAM (attention matching) on Fashion-MNIST, reduced for a 2-core CPU.

Command:  jaxdd distill --config configs/classic/datadam_fashion_mnist_cpu.py --ipc 10
Runtime / expected accuracy: measured by jaxdd in benchmarks/results/fashion_mnist.md.
Reductions: ConvNet-D3 width 32 (instance norm), 1000 iterations (reference 20000).
Evaluation: the reduced `cpu` protocol (ConvNet-D3 width 32, 300 epochs, DSA; a CPU
stand-in, recorded as `protocol_reduced`); the paper's protocol is in datadam_cifar10.py.
DSA color_crop_cutout_flip_scale_rotate: the DatasetCondensation readme (DSA section, basic
experiments) uses flip for FashionMNIST and CIFAR and drops it only for the digit sets
MNIST / SVHN; DataDAM and DCC build on that code with the same default.
Rows measured before this change (issue #14) used dsa_strategy color_crop_cutout_scale_rotate
(no flip): reproduce them with `--set datadam.dsa_strategy=color_crop_cutout_scale_rotate`.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, method="datadam",
        iterations=1000,
        ckpt_every=200,
        datadam=dict(lr_img=1.0, batch_real=64, dsa_strategy="color_crop_cutout_flip_scale_rotate"),
    )
