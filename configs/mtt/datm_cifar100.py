"""DATM on CIFAR-100 IPC 10: difficulty-aligned window 30 -> 50, learned soft labels
(spec section 6; needs a GPU).

Command:  jaxdd distill --config configs/mtt/datm_cifar100.py --ipc 10
Runtime:  not measured by jaxdd. Expected: published DATM 47.2 % (IPC 10); not yet
          reproduced by jaxdd.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, dataset="cifar100", ipc=10, preprocess="zca", model="convnet",
        iterations=10000,
        experts=dict(epochs=100),
        mtt=dict(syn_steps=80, expert_epochs=2, min_start=0, max_start=50,
                 current_max_start=30, expansion_end=2000, batch_syn=1000,
                 lr_img=1000.0, lr_init=0.01, lr_y=2.0, label_mode="learned",
                 max_loss=1.0),
        by_ipc={10: {}},
    )
