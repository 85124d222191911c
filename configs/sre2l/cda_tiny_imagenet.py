"""CDA Tiny-ImageNet (spec table, statistics-matching.md section 2, CDA section 3).

Commands:
  jaxdd teacher --config configs/sre2l/cda_tiny_imagenet.py                # squeeze (recover also trains it)
  jaxdd recover --config configs/sre2l/cda_tiny_imagenet.py --ipc 50 --out runs/cda_tiny_imagenet-ipc50
  jaxdd relabel runs/cda_tiny_imagenet-ipc50 --mode online --json
Runtime / expected accuracy: not stated in the spec and not measured by jaxdd (no such
hardware here); see the CDA paper for its published numbers.

Teacher as in sre2l_tiny_imagenet.py. Tiny-ImageNet is not a TFDS catalogue name: use --set dataset=folder:PATH.
"""


def get_config():
    return dict(
        method="cda",
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
            lr=0.4,
            iterations=4000,
            r_bn=0.05,
            crop=True,
            cda_mode='cosine',
        ),
        relabel=dict(
            recipe="cda",        # AdamW 1e-3, wd 0.01, cosine per epoch, T 20, no T^2
            epochs=300,
            model="resnet18",         # student
        ),
    )
