"""FTD on CIFAR-10: GSAM experts + EMA of the synthetic images (needs a GPU).

Command:  jaxdd distill --config configs/mtt/ftd_cifar10.py --ipc {1,10,50}
          (writes OUT/artefact and OUT/artefact_ema; both are evaluated)
Runtime:  not measured by jaxdd.
Expected: published FTD 46.8 / 66.6 / 73.8 % (IPC 1 / 10 / 50); not yet reproduced.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, dataset="cifar10", ipc=10, preprocess="zca", model="convnet",
        iterations=5000,
        experts=dict(optimizer="gsam", gsam_rho=0.01, gsam_alpha=0.3),
        mtt=dict(syn_steps=30, expert_epochs=2, max_start=20, batch_syn=None,
                 lr_img=100.0, lr_init=0.001, ema_decay=0.9995),
        by_ipc={
            1: dict(experts=dict(gsam_alpha=0.3),
                    mtt=dict(syn_steps=50, max_start=2, lr_lr=1e-7, lr_init=0.01, ema_decay=0.9999)),
            10: dict(mtt=dict(ema_decay=0.9995)),
            50: dict(preprocess="normalize", experts=dict(gsam_alpha=1.0),
                     mtt=dict(max_start=40, lr_img=1000.0, ema_decay=0.999)),
        },
    )
