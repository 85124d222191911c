"""CDA ImageNet-21K (spec table, statistics-matching.md section 2, CDA section 3).

Commands:
  jaxdd recover --config configs/sre2l/cda_imagenet21k.py --ipc 20 --out runs/cda_imagenet21k-ipc20
  jaxdd relabel runs/cda_imagenet21k-ipc20 --mode online --json
Runtime / expected accuracy: not stated in the spec and not measured by jaxdd (no such
hardware here); see the CDA paper for its published numbers.

Pretrained ImageNet-21K teacher needed and ImageNet-21K is not in TFDS: pass --set dataset=folder:PATH --teacher DIR (the teacher converted as in sre2l_imagenet1k.py; data streamed at 224 px).
"""


def get_config():
    return dict(
        method="cda",
        dataset="imagenet21k",
        ipc=20,
        seed=0,
        preprocess="normalize",
        image_size=224,               # streamed: decoded + resized by the grain loader
        teacher=dict(                 # jaxdd.population.teachers.TeacherConfig non-defaults + model/dir
            model="resnet18_imagenet",
            dir="runs/teachers/REPLACE-with-converted-pretrained-teacher",
            train_if_missing=False,   # False: a pretrained teacher must be given
        ),
        recover=dict(                 # jaxdd.methods.sre2l.RecoverConfig (only non-defaults)
            lr=0.05,
            iterations=2000,
            r_bn=0.25,
            jitter=(0, 32),
            crop=True,
            cda_mode='cosine',
        ),
        relabel=dict(
            recipe="cda",        # AdamW 1e-3, wd 0.01, cosine per epoch, T 20, no T^2
            epochs=300,
            model="resnet18_imagenet",  # student
        ),
    )
