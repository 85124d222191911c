"""MTT on Tiny-ImageNet (64 px, 200 classes), the reference presets (needs a GPU).

Tiny-ImageNet is not in the TFDS catalogue: point `dataset` at an image folder
(`folder:PATH` with PATH/train/<class>/*.JPEG and PATH/test/<class>/*), e.g.
    jaxdd distill --config configs/mtt/tiny_imagenet.py --ipc 10 --set dataset=folder:/data/tiny
Runtime:  not measured by jaxdd. Expected: see ../shared/reference-numbers.md (MTT
          Tiny rows are not listed there); not yet reproduced.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, dataset="folder:/data/tiny-imagenet-200", ipc=10,
        preprocess="normalize", model="convnet_d4",
        iterations=5000,
        mtt=dict(syn_steps=20, expert_epochs=2, max_start=40, batch_syn=200,
                 lr_img=10000.0, lr_lr=1e-4, lr_init=0.01),
        by_ipc={
            1: dict(mtt=dict(syn_steps=10, expert_epochs=2, max_start=10, batch_syn=None)),
            10: dict(mtt=dict(syn_steps=20, expert_epochs=2, max_start=40, batch_syn=200)),
        },
    )
