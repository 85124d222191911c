"""SRe2L CIFAR-100 (spec table, statistics-matching.md section 2).

Commands:
  jaxdd teacher --config configs/sre2l/sre2l_cifar100.py                # squeeze (recover also trains it)
  jaxdd recover --config configs/sre2l/sre2l_cifar100.py --ipc 50 --out runs/sre2l_cifar100-ipc50
  jaxdd relabel runs/sre2l_cifar100-ipc50 --mode online --json
Runtime / expected accuracy: not stated in the spec and not measured by jaxdd (no such
hardware here); see the SRe2L paper for its published numbers.

Teacher: ResNet-18 (3x3 stride-1 stem, no max-pool), SGD lr 0.1, momentum 0.9, wd 5e-4, batch 128, cosine, 200 epochs, random crop + flip; ~78.7 % test accuracy (published, not measured by jaxdd).

Student (recipe `sre2l_cifar`, the reference's CIFAR relabel, VILA-Lab/SRe2L
`SRe2L/*small_dataset/relabel_cifar.py`): ResNet-18 (CIFAR stem, :75-77), per image
RandomCrop(32, padding=4) + horizontal flip (:51-52), MixUp of the images with lambda ~
Beta(0.8, 0.8) labelled by the teacher on the mixed batch (:111-119, :133, :138), KL at
T = 30 without T^2 (:107-108), AdamW lr 1e-3, wd 0.01 on all parameters (:104), cosine
per epoch (:106), batch 128 and 400 epochs (`relabel_cifar.sh`:2,6). Deviation kept: the
reference labels with its teacher in train mode (BN batch statistics); jaxdd's teacher is
always in inference mode.
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
            recipe="sre2l_cifar",     # relabel_cifar.py: pad-crop + flip, MixUp 0.8, T 30,
                                      # AdamW on all parameters, batch 128, 400 epochs
            model="resnet18",         # student
        ),
    )
