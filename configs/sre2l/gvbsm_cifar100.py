"""G-VBSM CIFAR-100 (spec section 4; the reference's Branch_CIFAR_100 scripts).

Commands:
  jaxdd teacher --config configs/sre2l/gvbsm_cifar100.py               # 5 weak teachers (recover also trains them)
  jaxdd recover --config configs/sre2l/gvbsm_cifar100.py --ipc 10 --out runs/gvbsm_cifar100-ipc10
  jaxdd relabel runs/gvbsm_cifar100-ipc10 --mode online --json
Runtime / expected accuracy: not measured by jaxdd (no such hardware here); see the G-VBSM
paper (Shao et al., CVPR 2024) for its published numbers. The first recover computes the
conv targets (one inference pass over the 50 000 training images per teacher) and caches
them in TEACHER_DIR/conv_targets/.

Settings carried over from shaoshitong/G_VBSM_Dataset_Condensation:
  recover (recover.sh, data_synthesis_with_svd_with_db_with_all_statistic.py): Adam(0.5,
    0.9) lr 0.05 cosine, 4000 iterations, N(0, 1) init, batch 100 = 10 classes x 10 images
    at IPC 10 (50 images of 2 classes at IPC 50), r_loss 0.01 on BN and conv terms alike,
    first_multiplier 10, training_momentum (EMA) 0.8, drop_rate 0.4, nuc_norm (diversity) 1
    with tau 4, RandomCrop(32, padding 4) + flip on the batch then torch.roll by
    randint(0, 32) (the --jitter default; recover.sh does not set it).
  conv targets: the training set in batches of 64, RandomCrop(pad 4) + flip, teachers in
    eval mode; 4-px cells pooled over channels (the 32/64-px branches' utils.py; the
    CIFAR-100 branch's own utils.py is not in the copy we read).
  teachers (squeeze/train.py defaults): SGD lr 0.05 constant, momentum 0.9, no weight
    decay, batch 64, 50 epochs, RandomCrop + flip.
  student (train.sh, relabel.sh): ConvNet-W128, SGD lr 0.1, momentum 0.9, wd 5e-4, cosine
    per epoch, batch 64, 1000 epochs, CutMix, RandomResizedCrop 0.08-1, loss MSE(logits) +
    0.15 CE.
Differences: the reference matches five architectures (ResNet-18, ConvNet-W128,
MobileNetV2, WRN-16-2, ShuffleNetV2-0.5), one per iteration in rotation; jaxdd vmaps N
teachers of one architecture and averages their losses every iteration: here 5 ResNet-18
seeds, ~5x the reference's compute per iteration. The reference splits each batch of 100
over 2 GPUs (BN / conv statistics over 50 images each, the diversity term over all 100);
here all 100 images are on one device. EMA averages restart with every batch (the
reference carries its hooks' averages across batches).
"""


def get_config():
    return dict(
        method="gvbsm",
        dataset="cifar100",
        ipc=10,
        seed=0,
        preprocess="normalize",
        teacher=dict(                 # jaxdd.population.teachers.TeacherConfig non-defaults + model/dir
            model="resnet18",
            dir=None,
            train_if_missing=True,
            num_teachers=5,           # reference: 5 different architectures
            epochs=50,
            batch_size=64,
            lr=0.05,
            schedule="constant",
            weight_decay=0.0,
        ),
        recover=dict(                 # jaxdd.methods.sre2l.RecoverConfig (only non-defaults)
            lr=0.05,
            iterations=4000,
            r_bn=0.01,                # r_loss: BN and conv terms
            jitter=(0, 32),
            pad_crop=4,               # RandomCrop(32, padding=4) + flip per batch
            stacked_teachers=True,
            stat_ema=0.8,
            conv_stats=True,
            conv_drop=0.4,
            patch_size=4,
            diversity=1.0,
            batch_size=10,            # classes per batch ...
            ipc_per_batch=10,         # ... x images per class = 100
        ),
        relabel=dict(
            recipe="gvbsm",           # norm-rescaled ensemble, MSE(logits) + ce_weight * CE
            model="convnet",          # ConvNet-D3-W128
            ce_weight=0.15,
            optimizer="sgd",
            lr=0.1,
            momentum=0.9,
            weight_decay=5e-4,
            batch_size=64,
            epochs=1000,
        ),
        by_ipc={
            10: {},
            50: dict(recover=dict(batch_size=2, ipc_per_batch=50)),
        },
    )
