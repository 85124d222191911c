"""DATM on CIFAR-10: difficulty-aligned windows, learned soft labels (needs a GPU).

Command:  jaxdd distill --config configs/mtt/datm_cifar10.py --ipc {1,10,50}
Runtime:  not measured by jaxdd. Experts: DATM trains 100 epochs.
Expected: published DATM 46.9 / 66.8 / 76.1 % (IPC 1 / 10 / 50); not yet reproduced.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, dataset="cifar10", ipc=10, preprocess="zca", model="convnet",
        iterations=10000,
        experts=dict(epochs=100),
        mtt=dict(syn_steps=80, expert_epochs=2, min_start=0, max_start=20, batch_syn=100,
                 lr_img=100.0, lr_init=0.01, lr_y=2.0, label_mode="learned",
                 max_loss=1.0, current_max_start=10, expansion_end=2000),
        by_ipc={
            1: dict(mtt=dict(batch_syn=10, max_start=4, current_max_start=4, lr_y=5.0)),
            10: dict(mtt=dict(batch_syn=100, max_start=20, current_max_start=10, lr_y=2.0)),
            50: dict(mtt=dict(batch_syn=500, max_start=40, current_max_start=20, lr_y=2.0)),
        },
    )
