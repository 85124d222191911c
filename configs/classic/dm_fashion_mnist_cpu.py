"""DM (distribution matching) on Fashion-MNIST, reduced for a 2-core CPU.

Command:  jaxdd distill --config configs/classic/dm_fashion_mnist_cpu.py --ipc 10
Runtime / expected accuracy: measured by jaxdd in benchmarks/results/fashion_mnist.md.
Reductions: ConvNet-D3 width 32, 500 iterations (reference 20000), batch_real 64.
"""


def get_config():
    return dict(
        method="dm",
        dataset="fashion_mnist",
        ipc=10,
        seed=0,
        preprocess="normalize",
        model="convnet_d3_w32",       # feature extractor (freshly initialised every step)
        iterations=500,               # distiller steps (reference 20000)
        ckpt_every=200,
        dm=dict(lr_img=1.0, batch_real=64,
                dsa_strategy="color_crop_cutout_scale_rotate"),  # no flip, as the readme for digits
        eval=dict(protocol="cpu", seeds=3),
        by_ipc={1: {}, 10: {}, 50: {}},
    )
