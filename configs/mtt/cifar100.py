"""MTT on CIFAR-100, the reference presets (spec section 6; needs a GPU).

Command:  jaxdd distill --config configs/mtt/cifar100.py --ipc {1,10,50}
Runtime:  not measured by jaxdd (GPU preset). `remat` keeps memory flat in syn_steps
          (the reference needed 8 x 12 GB GPUs for IPC 10).
Expected: published MTT 24.3 / 40.1 / 47.7 % (IPC 1 / 10 / 50); not yet reproduced.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, dataset="cifar100", ipc=10, preprocess="zca", model="convnet",
        iterations=5000,
        mtt=dict(syn_steps=20, expert_epochs=2, max_start=20, batch_syn=None,
                 lr_img=1000.0, lr_init=0.01),
        by_ipc={
            1: dict(mtt=dict(syn_steps=20, expert_epochs=3, max_start=20)),
            10: dict(preprocess="normalize", mtt=dict(syn_steps=20, expert_epochs=2, max_start=20)),
            50: dict(mtt=dict(syn_steps=80, expert_epochs=2, max_start=40, batch_syn=125)),
        },
    )
