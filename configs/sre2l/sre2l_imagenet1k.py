"""SRe2L ImageNet-1K (spec table, statistics-matching.md section 2).

Commands:
  jaxdd recover --config configs/sre2l/sre2l_imagenet1k.py --ipc 50 --out runs/sre2l_imagenet1k-ipc50
  jaxdd relabel runs/sre2l_imagenet1k-ipc50 --mode online --json
Runtime / expected accuracy: not stated in the spec and not measured by jaxdd (no such
hardware here); see the SRe2L paper for its published numbers.

The teacher is torchvision's pretrained ResNet-18 converted once (no training here):
  jaxdd convert-teacher resnet18-f37072fd.pth --model resnet18_imagenet --dataset imagenet2012 --out runs/teachers/imagenet2012-resnet18_imagenet-tv
Data: streamed (image_size=224: every image decoded and resized by the grain loader, never
held in memory); recover from noise reads no training image at all, relabel reads the
validation split to report accuracy. See README "Running on ImageNet".
"""


def get_config():
    return dict(
        method="sre2l",
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
        ),
        relabel=dict(
            epochs=300,
            model="resnet18_imagenet",  # student
        ),
    )
