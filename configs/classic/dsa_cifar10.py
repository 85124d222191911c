"""DSA (DC + siamese augmentation) on CIFAR-10 with the paper's protocol (GPU-sized; not run
by jaxdd).

Command:  jaxdd distill --config configs/classic/dsa_cifar10.py --ipc 10
Runtime / expected accuracy: not measured by jaxdd (no such hardware here); see the DSA
paper for its published numbers.

Distillation: DC's loop with DSA (`jaxdd.methods.dc.dsa_config` defaults: VICO-UoE/
DatasetCondensation `main.py` with `--method DSA`, strategy
color_crop_cutout_flip_scale_rotate, real init per the readme), ConvNet-D3 width 128;
`iterations` = 1000 reference iterations x outer_loop (utils.py get_loops).
Evaluation (protocol `dsa`): DSA evaluates with DSA on every batch, 1000 epochs, lr 0.01,
batch 256, x0.1 at half (`evaluate_synset` with args.dsa; the same recipe as `mtt`).
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, method="dsa", dataset="cifar10", model="convnet",
        iterations=10000,
        ckpt_every=500,
        dsa=dict(lr_img=0.1, lr_net=0.01, batch_real=256, batch_train=256),
        eval=dict(protocol="dsa", seeds=5),
        by_ipc={1: dict(iterations=1000), 10: dict(iterations=10000),
                50: dict(iterations=50000)},
    )
