"""G-VBSM CIFAR-100 (spec section 4; the reference's Branch_CIFAR_100 scripts).

Commands:
  jaxdd teacher --config configs/sre2l/gvbsm_cifar100.py   # the 5 weak teachers, one directory each
  jaxdd recover --config configs/sre2l/gvbsm_cifar100.py --ipc 10 --out runs/gvbsm_cifar100-ipc10
  jaxdd relabel runs/gvbsm_cifar100-ipc10 --mode online --json
Runtime / expected accuracy: not measured by jaxdd (no such hardware here); see the G-VBSM
paper (Shao et al., CVPR 2024) for its published numbers. The first recover computes the
conv targets (one inference pass over the 50 000 training images per teacher) and caches
them in each TEACHER_DIR/conv_targets/. Small CPU run of the same options (tiny models and
data): tests/test_gvbsm.py::test_gvbsm_mixed_teachers_rotate_pipeline.

Settings carried over from shaoshitong/G_VBSM_Dataset_Condensation (Branch_CIFAR_100/):
  teachers (recover/data_synthesis_with_svd_with_db_with_all_statistic.py:331, model
    dict recover/models/__init__.py, baseline.py:189,239): ResNet18 (resnet18),
    ConvNetW128 (get_network: depth 3, width 128, *instance* norm, avg pooling ->
    convnet_d3_w128: no BN, matched through its conv inputs only), MobileNetV2 = mobile_half
    (mobilenetv2_half), WRN_16_2 (wrn_16_2), ShuffleNetV2_0_5 (shufflenetv2_0_5), in that
    order, each in its own directory (teacher.dir None: runs/teachers/cifar100-<model>-...).
  teacher training (squeeze/train.py:57-62, :78, :97, :129-135; squeeze.sh): SGD lr 0.05
    constant, momentum 0.9, no weight decay, batch 64, 50 epochs, per-image
    RandomCrop(32, padding 4) + RandomHorizontalFlip (teacher.pad_crop=4, dsa='').
  rotation (data_synthesis...py:112, :150-151): `id = counter % 5; counter += 1` once per
    iteration, one counter across batches: teacher t mod 5 at iteration t
    (teacher_schedule="rotate"; the same teacher as the reference's, since 4000 is a
    multiple of 5). Only that teacher's CE, BN and conv terms enter the iteration
    (:152-159), and only its hooks update their moving averages.
  recover (recover.sh, data_synthesis...py): Adam(0.5, 0.9) lr 0.05 cosine, 4000
    iterations, N(0, 1) init, batch 100 = 10 classes x 10 images at IPC 10 (50 images of 2
    classes at IPC 50), r_loss 0.01 on BN and conv terms alike, first_multiplier 10 on the
    first hooked layer (:157; for each of the five models its stem conv), training_momentum
    (EMA) 0.8 started at 0., drop_rate 0.4, nuc_norm (diversity) 1 with tau 4,
    RandomCrop(32, padding 4) + flip on the batch then torch.roll by randint(0, 32) (the --jitter default; recover.sh
    does not set it).
  conv targets (data_synthesis...py:71-93, recover/utils.py ConvFeatureHook): the training
    set in batches of 64, RandomCrop(pad 4) + flip, teachers in eval mode; 4-px cells
    pooled over channels.
  relabel (relabel/relabel.sh: --candidate-number 5; generate_soft_label_with_db.py:144,
    :282-284): all five teachers, the *plain* mean of their logits (the norm rescaling is
    commented out on CIFAR-100; ensemble_reduce="mean").
  student (train/train.sh, train/train_FKD.py): ConvNet-W128, SGD lr 0.1, momentum 0.9, wd
    5e-4, cosine per epoch, batch 64, 1000 epochs, CutMix, RandomResizedCrop 0.08-1, loss
    MSE(logits) + 0.15 CE.
Differences: the reference splits each batch of 100 over 2 GPUs (BN / conv statistics over
50 images each, the diversity term over all 100); here all 100 images are on one device.
EMA averages restart with every batch at zero (stat_ema_init="zero": the reference's
hooks start at the float 0., utils.py BNFeatureHook / ConvFeatureHook, so its first
batch matches; it then carries the averages across batches, and in a run that computes
the conv targets its BN hooks have also averaged that pass). The reference's soft labels are the
teachers' outputs on the un-mixed crops (generate_soft_label_with_db.py:266-274) while its
student sees the CutMix of them; jaxdd labels the images the student sees.
"""


def get_config():
    return dict(
        method="gvbsm",
        dataset="cifar100",
        ipc=10,
        seed=0,
        preprocess="normalize",
        teacher=dict(                 # jaxdd.population.teachers.TeacherConfig non-defaults + model/dir
            model=["resnet18", "convnet_d3_w128", "mobilenetv2_half", "wrn_16_2",
                   "shufflenetv2_0_5"],  # the reference's five, in its rotation order
            dir=None,                 # one default directory per model
            train_if_missing=True,
            num_teachers=1,           # one network of each architecture
            epochs=50,
            batch_size=64,
            lr=0.05,
            schedule="constant",
            weight_decay=0.0,
            dsa="",                   # no DSA: ...
            pad_crop=4,               # ... per-image RandomCrop(32, padding 4) + flip
        ),
        recover=dict(                 # jaxdd.methods.sre2l.RecoverConfig (only non-defaults)
            lr=0.05,
            iterations=4000,
            r_bn=0.01,                # r_loss: BN and conv terms
            jitter=(0, 32),
            pad_crop=4,               # RandomCrop(32, padding=4) + flip per batch
            teacher_schedule="rotate",  # teacher t mod 5 at iteration t
            stat_ema=0.8,
            stat_ema_init="zero",     # averages start at 0. (utils.py hooks: dd_var = 0.)
            conv_stats=True,
            conv_drop=0.4,
            patch_size=4,
            diversity=1.0,
            batch_size=10,            # classes per batch ...
            ipc_per_batch=10,         # ... x images per class = 100
        ),
        relabel=dict(
            recipe="gvbsm",           # teacher ensemble, MSE(logits) + ce_weight * CE
            ensemble_reduce="mean",   # CIFAR-100: the plain mean of the 5 teachers' logits
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
