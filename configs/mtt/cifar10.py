"""MTT on CIFAR-10, the reference presets (spec section 6; needs a GPU).

Command:  jaxdd distill --config configs/mtt/cifar10.py --ipc {1,10,50}
Runtime:  not measured by jaxdd (GPU preset). Experts: 100 x 50 epochs.
Expected: published MTT 46.3 / 65.3 / 71.6 % (IPC 1 / 10 / 50), `mtt` protocol;
          not yet reproduced by jaxdd.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, dataset="cifar10", ipc=10,
        preprocess="zca",             # IPC 1/10 use ZCA; IPC 50 does not (by_ipc)
        model="convnet",              # ConvNet-D3, width 128, instance norm
        iterations=5000,              # outer iterations (MTT)
        mtt=dict(syn_steps=30, expert_epochs=2, max_start=20, batch_syn=None,
                 lr_img=100.0, lr_init=0.001),
        by_ipc={
            1: dict(mtt=dict(syn_steps=50, expert_epochs=2, max_start=2, lr_img=100.0,
                             lr_lr=1e-7, lr_init=0.01)),
            10: dict(mtt=dict(syn_steps=30, expert_epochs=2, max_start=20, lr_img=100.0,
                              lr_lr=1e-5, lr_init=0.001)),
            50: dict(preprocess="normalize",
                     mtt=dict(syn_steps=30, expert_epochs=2, max_start=40, lr_img=1000.0,
                              lr_lr=1e-5, lr_init=0.001)),
        },
    )
