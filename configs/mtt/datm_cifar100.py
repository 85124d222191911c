"""DATM on CIFAR-100 IPC 10: difficulty-aligned window 30 -> 50, learned soft labels
(spec section 6; needs a GPU).

Command:  jaxdd distill --config configs/mtt/datm_cifar100.py --ipc 10
Runtime:  not measured by jaxdd. Expected: published DATM 47.2 % (IPC 10); not yet
          reproduced by jaxdd.
"""


def get_config():
    return dict(
        method="mtt", dataset="cifar100", ipc=10, seed=0,
        preprocess="zca", model="convnet", init="real", buffer_dir=None,
        iterations=10000, ckpt_every=500,
        experts=dict(num_experts=100, epochs=100, lr=0.01, batch_size=256,
                     dsa="color_crop_cutout_flip_scale_rotate"),
        mtt=dict(syn_steps=80, expert_epochs=2, min_start=0, max_start=50,
                 current_max_start=30, expansion_end=2000, batch_syn=1000,
                 lr_img=1000.0, lr_lr=1e-5, lr_init=0.01, lr_y=2.0, label_mode="learned",
                 max_loss=1.0, grad_mode="remat", unroll=1),
        eval=dict(protocol="mtt", seeds=5),
        by_ipc={10: {}},
    )
