"""SRe2L CIFAR-100 (spec table, statistics-matching.md section 2).

Commands:
  jaxdd teacher --config configs/sre2l/sre2l_cifar100.py                # squeeze (recover also trains it)
  jaxdd recover --config configs/sre2l/sre2l_cifar100.py --ipc 50 --out runs/sre2l_cifar100-ipc50
  jaxdd relabel runs/sre2l_cifar100-ipc50 --mode online --json
Runtime / expected accuracy: not stated in the spec and not measured by jaxdd (no such
hardware here); see the SRe2L paper for its published numbers.

Teacher: ResNet-18 (3x3 stride-1 stem, no max-pool), SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, cosine, 200 epochs, random crop + flip; ~78.7 % test accuracy (published, not measured by jaxdd).
"""


def get_config():
    return dict(
        method="sre2l",
        dataset="cifar100",
        ipc=50,
        seed=0,
        preprocess="normalize",
        teacher=dict(                 # jaxdd.population.teachers.TeacherConfig non-defaults + model/dir
            model="resnet18",
            dir=None,
            train_if_missing=True,   # False: a pretrained teacher must be given
        ),
        recover=dict(                 # jaxdd.methods.sre2l.RecoverConfig (only non-defaults)
            lr=0.25,
            r_bn=0.01,
        ),
        relabel=dict(
            epochs=300,
            model="resnet18",         # student
        ),
    )
