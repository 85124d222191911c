"""TESLA on ImageNet-1K at 64 px with assigned soft labels (spec section 6; needs GPUs).

Command:  jaxdd distill --config configs/mtt/tesla_imagenet64.py --ipc 1
Runtime:  not measured by jaxdd. Data: TFDS `imagenet_resized/64x64` (label order differs
          from imagenet2012). Expected: published TESLA 7.7 / 17.8 / 27.9 % (IPC 1/10/50);
          not yet reproduced. `grad_mode="tesla"` is the paper's procedure; "remat" gives
          the exact gradient at the same memory.
"""


def get_config():
    return dict(
        method="mtt", dataset="imagenet_resized/64x64", ipc=1, seed=0,
        preprocess="normalize", model="convnet_d4", init="real", buffer_dir=None,
        iterations=10000, ckpt_every=500,
        experts=dict(num_experts=100, epochs=50, lr=0.01, batch_size=256,
                     dsa="color_crop_cutout_flip_scale_rotate"),
        mtt=dict(syn_steps=10, expert_epochs=3, max_start=10, batch_syn=100,
                 lr_img=10000.0, lr_lr=1e-4, lr_init=0.01, grad_mode="tesla", unroll=1,
                 label_mode="tesla"),
        eval=dict(protocol="mtt", seeds=5),
        by_ipc={1: {}, 10: {}, 50: {}},
    )
