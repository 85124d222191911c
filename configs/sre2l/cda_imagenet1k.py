"""CDA ImageNet-1K (spec table, statistics-matching.md section 2, CDA section 3).

Commands:
  jaxdd recover --config configs/sre2l/cda_imagenet1k.py --ipc 50 --out runs/cda_imagenet1k-ipc50
  jaxdd relabel runs/cda_imagenet1k-ipc50 --mode online --json
Runtime / expected accuracy: not stated in the spec and not measured by jaxdd (no such
hardware here); see the CDA paper for its published numbers.

Pretrained teacher needed (see sre2l_imagenet1k.py: not runnable end to end today).
"""


def get_config():
    return dict(
        method="cda",
        dataset="imagenet2012",
        ipc=50,
        seed=0,
        preprocess="normalize",
        teacher=dict(
            model="resnet18",
            dir="runs/teachers/REPLACE-with-converted-pretrained-teacher",
            train_if_missing=False,   # False: a pretrained teacher must be given
            num_teachers=1,
            epochs=200,               # CIFAR-100 recipe (spec section 1)
            batch_size=128,
            lr=0.1,                   # SGD, momentum 0.9, wd 5e-4, cosine
            momentum=0.9,
            weight_decay=5e-4,
            schedule="cosine",
            dsa="crop_flip",
        ),
        recover=dict(                 # jaxdd.methods.sre2l.RecoverConfig (only non-defaults)
            lr=0.25,
            r_bn=0.01,
            iterations=4000,
            jitter=(0, 32),
            crop=True,
            cda_mode='cosine',
        ),
        relabel=dict(
            recipe="cda",        # AdamW 1e-3, wd 0.01, cosine per epoch, T 20, no T^2
            mode="online",
            epochs=300,
            seeds=3,
            seed=0,
            protocol="cpu",
            model="resnet18",         # student
            top_k=0,
            batch_size=None,          # recipe's (1024)
            lr=None,
            temperature=None,
        ),
    )
