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
        teacher=dict(                 # jaxdd.population.teachers.TeacherConfig non-defaults + model/dir
            model="resnet18",
            dir=None,
            train_if_missing=True,   # False: a pretrained teacher must be given
        ),
        recover=dict(                 # jaxdd.methods.sre2l.RecoverConfig (only non-defaults)
            lr=0.1,
            iterations=4000,
            r_bn=1.0,
            jitter=(-4, 4),
            crop=True,
        ),
        relabel=dict(
            epochs=300,
            model="resnet18",         # student
        ),
    )
