"""Shared base of the classic matchers' Fashion-MNIST `cpu` presets (DC, DSA, DM, DataDAM).

A preset is this base plus what differs (`jaxdd.configs.family_base(__file__, ...)`).
"""


def get_config():
    return dict(
        dataset="fashion_mnist",
        ipc=10,
        seed=0,                       # every random choice derives from key(seed)
        preprocess="normalize",       # per-channel mean/std of the training set
        model="convnet_d3_w32",       # matching network, freshly initialised each step
        eval=dict(protocol="cpu", seeds=3),
        by_ipc={1: {}, 10: {}, 50: {}},
    )
