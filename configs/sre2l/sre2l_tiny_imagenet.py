"""SRe2L Tiny-ImageNet (spec table, statistics-matching.md section 2).

Commands:
  jaxdd teacher --config configs/sre2l/sre2l_tiny_imagenet.py                # squeeze (recover also trains it)
  jaxdd recover --config configs/sre2l/sre2l_tiny_imagenet.py --ipc 50 --out runs/sre2l_tiny_imagenet-ipc50
  jaxdd relabel runs/sre2l_tiny_imagenet-ipc50 --mode online --json
Runtime / expected accuracy: not stated in the spec and not measured by jaxdd (no such
hardware here); see the SRe2L paper for its published numbers.

The teacher is trained here with the spec's CIFAR-100 recipe (ResNet-18 with a 3x3 stride-1 stem, SGD 0.1, cosine, 200 epochs); the spec gives no Tiny-specific recipe. Tiny-ImageNet is not a TFDS catalogue name: use --set dataset=folder:PATH.
"""


def get_config():
    return dict(
        method="sre2l",
        dataset="tiny_imagenet",
        ipc=50,
        seed=0,
        preprocess="normalize",
        teacher=dict(
            model="resnet18",
            dir=None,
            train_if_missing=True,   # False: a pretrained teacher must be given
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
            lr=0.1,
            iterations=4000,
            r_bn=1.0,
            jitter=(-4, 4),
            crop=True,
        ),
        relabel=dict(
            recipe="sre2l",        # AdamW 1e-3, wd 0.01, cosine per epoch, T 20, no T^2
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
