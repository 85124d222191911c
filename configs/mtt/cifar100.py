"""MTT on CIFAR-100, the reference presets (spec section 6; needs a GPU).

Command:  jaxdd distill --config configs/mtt/cifar100.py --ipc {1,10,50}
Runtime:  not measured by jaxdd (GPU preset). `remat` keeps memory flat in syn_steps
          (the reference needed 8 x 12 GB GPUs for IPC 10).
Expected: published MTT 24.3 / 40.1 / 47.7 % (IPC 1 / 10 / 50); not yet reproduced.
"""


def get_config():
    return dict(
        method="mtt", dataset="cifar100", ipc=10, seed=0,
        preprocess="zca", model="convnet", init="real", buffer_dir=None,
        iterations=5000, ckpt_every=500,
        experts=dict(num_experts=100, epochs=50, lr=0.01, batch_size=256,
                     dsa="color_crop_cutout_flip_scale_rotate"),
        mtt=dict(syn_steps=20, expert_epochs=2, max_start=20, batch_syn=None,
                 lr_img=1000.0, lr_lr=1e-5, lr_init=0.01, grad_mode="remat", unroll=1),
        eval=dict(protocol="mtt", seeds=5),
        by_ipc={
            1: dict(mtt=dict(syn_steps=20, expert_epochs=3, max_start=20)),
            10: dict(preprocess="normalize", mtt=dict(syn_steps=20, expert_epochs=2, max_start=20)),
            50: dict(mtt=dict(syn_steps=80, expert_epochs=2, max_start=40, batch_syn=125)),
        },
    )
