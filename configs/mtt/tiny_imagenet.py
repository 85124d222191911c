"""MTT on Tiny-ImageNet (64 px, 200 classes), the reference presets (needs a GPU).

Tiny-ImageNet is not in the TFDS catalogue: point `dataset` at an image folder
(`folder:PATH` with PATH/train/<class>/*.JPEG and PATH/test/<class>/*), e.g.
    jaxdd distill --config configs/mtt/tiny_imagenet.py --ipc 10 --set dataset=folder:/data/tiny
Runtime:  not measured by jaxdd. Expected: see ../shared/reference-numbers.md (MTT
          Tiny rows are not listed there); not yet reproduced.
"""


def get_config():
    return dict(
        method="mtt", dataset="folder:/data/tiny-imagenet-200", ipc=10, seed=0,
        preprocess="normalize", model="convnet_d4", init="real", buffer_dir=None,
        iterations=5000, ckpt_every=500,
        experts=dict(num_experts=100, epochs=50, lr=0.01, batch_size=256,
                     dsa="color_crop_cutout_flip_scale_rotate"),
        mtt=dict(syn_steps=20, expert_epochs=2, max_start=40, batch_syn=200,
                 lr_img=10000.0, lr_lr=1e-4, lr_init=0.01, grad_mode="remat", unroll=1),
        eval=dict(protocol="mtt", seeds=5),
        by_ipc={
            1: dict(mtt=dict(syn_steps=10, expert_epochs=2, max_start=10, batch_syn=None)),
            10: dict(mtt=dict(syn_steps=20, expert_epochs=2, max_start=40, batch_syn=200)),
        },
    )
