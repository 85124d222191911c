"""DM (distribution matching) on CIFAR-10 with the paper's protocol (GPU-sized; not run by
jaxdd).

Command:  jaxdd distill --config configs/classic/dm_cifar10.py --ipc 10
Runtime / expected accuracy: not measured by jaxdd (no such hardware here); see the DM
paper for its published numbers.

Distillation: the DMConfig defaults (VICO-UoE/DatasetCondensation `main_DM.py` argparse and
readme: 20000 iterations, lr_img 1, batch_real 256, real init, DSA
color_crop_cutout_flip_scale_rotate), ConvNet-D3 width 128.
Evaluation (protocol `dsa`): DM evaluates as DSA does — DSA on every batch, 1000 epochs, lr
0.01, batch 256, x0.1 at half (`evaluate_synset` with args.dsa).
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, method="dm", dataset="cifar10", model="convnet",
        iterations=20000,             # main_DM.py Iteration
        ckpt_every=1000,
        dm=dict(lr_img=1.0, batch_real=256),
        eval=dict(protocol="dsa", seeds=5),
    )
