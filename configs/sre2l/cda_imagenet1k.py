"""CDA ImageNet-1K (spec table, statistics-matching.md section 2, CDA section 3).

Commands:
  jaxdd recover --config configs/sre2l/cda_imagenet1k.py --ipc 50 --out runs/cda_imagenet1k-ipc50
  jaxdd relabel runs/cda_imagenet1k-ipc50 --mode online --json
Runtime / expected accuracy: not stated in the spec and not measured by jaxdd (no such
hardware here); see the CDA paper for its published numbers.

Teacher and data as in sre2l_imagenet1k.py (a converted torchvision ResNet-18, streamed at 224 px).
"""


def get_config():
    return dict(
        method="cda",
        dataset="imagenet2012",
        ipc=50,
        seed=0,
        preprocess="normalize",
        image_size=224,               # streamed: decoded + resized by the grain loader
        teacher=dict(                 # jaxdd.population.teachers.TeacherConfig non-defaults + model/dir
            model="resnet18_imagenet",
            dir="runs/teachers/REPLACE-with-converted-pretrained-teacher",
            train_if_missing=False,   # False: a pretrained teacher must be given
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
            epochs=300,
            model="resnet18_imagenet",  # student
        ),
    )
