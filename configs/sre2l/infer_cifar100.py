"""INFER CIFAR-100 (the reference's run: github zhangxin-xd/UFC README, sh/ufc_cifar.sh).

Commands:
  jaxdd teacher --config configs/sre2l/infer_cifar100.py        # 4 ResNet-18 teachers
  jaxdd recover --config configs/sre2l/infer_cifar100.py --ipc 10 --out runs/infer_c100-ipc10
  jaxdd relabel runs/infer_c100-ipc10 --json                    # static labels, 400 epochs
  jaxdd relabel runs/infer_c100-ipc10 --recipe infer_dyn --mode online --json   # INFER+Dyn
Runtime / expected accuracy: not measured by jaxdd (no GPU here); see the paper.

Values: ufc_cifar.py / README: 1000 iterations, lr 0.25, Adam(0.5, 0.9), r_bn 1,
first_bn_multiplier 10, jitter randint(0, 4), zero-initialised compensators, all 100
classes in one batch; M = 4 compensators per base set, so IPC 10 -> B = floor(10 / 1.04)
= 9 base sets, 45 instances per class. The reference's M teachers are four architectures
(ResNet-18, MobileNetV2, EfficientNet-B0, ShuffleNetV2); here they are 4 ResNet-18 (CIFAR
stem) trained with the SRe2L CIFAR-100 teacher recipe (200 epochs), a deviation.
Student (val_static.py): ResNet-18, AdamW 1e-3 wd 0.01, cosine per epoch, T 30, MixUp 0.8,
RandomCrop(32, 4) + flip, batch 64, 400 epochs (recipe `infer`).
"""


def get_config():
    return dict(
        method="infer",
        dataset="cifar100",
        ipc=10,
        seed=0,
        preprocess="normalize",
        teacher=dict(model="resnet18", num_teachers=4),
        infer=dict(iterations=1000, lr=0.25, r_bn=1.0, jitter=(0, 4)),
        relabel=dict(recipe="infer", mode="static", model="resnet18"),
    )
