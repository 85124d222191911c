"""DataDAM (attention matching) on Fashion-MNIST at the largest budget this 2-core CPU runs in
<= 2 h, evaluated with the references' `mtt` protocol (issue #17).

Command:  jaxdd distill --config configs/classic/datadam_fashion_mnist.py --ipc {1,10,50}
          python benchmarks/fmnist_table.py --methods datadam   # every IPC, `mtt` and `cpu`
Reference (DataDistillation/DataDAM main_DataDAM.py, as configs/classic/datadam_cifar10.py):
20000 iterations, lr_img 1, batch_real 64, real init, DSA, BatchNorm ConvNet-D3 width 128.
Kept: lr_img 1, batch_real 64, real init, DSA with flip (below),
BatchNorm in the matching network.
Budget here, and why: the reference's 20000 iterations, with a BatchNorm ConvNet-D3 of
width 32 (reference width 128). Measured (fmnist_table queue, IPC 1, idle 2-core EPYC,
2026-12-02): 0.13 s/iteration (10000 in 1333 s), so 20000 take ~45 min at IPC 1; the real
batches (64 per class) dominate the step, so IPC 10 / 50 cost about as much (~1-1.5 h,
estimated). Width 128 with BatchNorm took 19.9 s/iteration (10 iterations at IPC 10, under
load 13-18; several times too high by the idle figure above, still days for 20000).
Earlier cells (benchmarks/results/fmnist_datadam_*.json with budget "10000 it") ran the
previous budget, 10000 iterations, sized from those loaded estimates.
Expected: see benchmarks/results/fashion_mnist.md. No published DataDAM
Fashion-MNIST number in ../shared/reference-numbers.md.
Evaluation: `mtt` (ConvNet-D3 width 128, 1000 epochs, DSA, 5 seeds); the table also gives
`cpu`. (DataDAM's own protocol, `datadam`, trains a BatchNorm width-128 net for 1800 epochs.)
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
        model="convnet_d3_w32_bn",    # matching network (reference: width 128 with BatchNorm)
        iterations=20000,             # distiller steps (the reference's; see above)
        ckpt_every=500,
        datadam=dict(lr_img=1.0, batch_real=64, dsa_strategy="color_crop_cutout_flip_scale_rotate"),
        eval=dict(protocol="mtt", seeds=5),
    )
