"""DataDAM (attention matching) on CIFAR-10 with the paper's protocol (GPU-sized; not run by
jaxdd).

Command:  jaxdd distill --config configs/classic/datadam_cifar10.py --ipc 10
Runtime / expected accuracy: not measured by jaxdd (no such hardware here); see the DataDAM
paper for its published numbers.

Distillation: DataDistillation/DataDAM `main_DataDAM.py` argparse (:27 Iteration 20000, :28
lr_img 1, :30 batch_real 64, :32 real init, :33 DSA color_crop_cutout_flip_scale_rotate;
the DataDAMConfig defaults) with a BatchNorm ConvNet-D3 width 128, as DataDAM distils and
evaluates (issue #14).
Evaluation (protocol `datadam`): the same BatchNorm ConvNet, 1800 epochs (:26), batch 64
(:31), lr 0.01 (:29), DSA on every batch, x0.1 at half.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, method="datadam", dataset="cifar10", model="convnet_d3_w128_bn",
        iterations=20000,             # main_DataDAM.py Iteration
        ckpt_every=1000,
        datadam=dict(lr_img=1.0, batch_real=64),
        eval=dict(protocol="datadam", seeds=5),
    )
