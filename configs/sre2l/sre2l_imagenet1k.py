"""SRe2L ImageNet-1K (spec table, statistics-matching.md section 2).

Commands:
  jaxdd recover --config configs/sre2l/sre2l_imagenet1k.py --ipc 50 --out runs/sre2l_imagenet1k-ipc50
  jaxdd relabel runs/sre2l_imagenet1k-ipc50 --mode online --json
Runtime / expected accuracy: not stated in the spec and not measured by jaxdd (no such
hardware here); see the SRe2L paper for its published numbers.

ImageNet-1K uses pretrained torchvision weights (spec 1): convert them into a jaxdd teacher directory and pass --teacher DIR. jaxdd's `resnet18` has the CIFAR stem (3x3, no max-pool); a 224-px ImageNet ResNet-18 is not in the model registry yet, so this preset cannot run end to end today.
"""


def get_config():
    return dict(
        method="sre2l",
        dataset="imagenet2012",
        ipc=50,
        seed=0,
        preprocess="normalize",
        teacher=dict(                 # jaxdd.population.teachers.TeacherConfig non-defaults + model/dir
            model="resnet18",
            dir="runs/teachers/REPLACE-with-converted-pretrained-teacher",
            train_if_missing=False,   # False: a pretrained teacher must be given
        ),
        recover=dict(                 # jaxdd.methods.sre2l.RecoverConfig (only non-defaults)
            lr=0.25,
            r_bn=0.01,
            iterations=4000,
            jitter=(0, 32),
            crop=True,
        ),
        relabel=dict(
            epochs=300,
            model="resnet18",         # student
        ),
    )
