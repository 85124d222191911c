"""INFER ImageNet-1K (github zhangxin-xd/UFC README "ImageNet-1K", ufc_generation/ufc_imgnet.py).

Commands:
  jaxdd recover --config configs/sre2l/infer_imagenet1k.py --ipc 10 --out runs/infer_in1k-ipc10
  jaxdd relabel runs/infer_in1k-ipc10 --json
Runtime / expected accuracy: not measured by jaxdd (no such hardware here); see the paper.

Values: 2000 iterations, lr 0.25, Adam(0.5, 0.9), r_bn 0.01, first_bn_multiplier 10,
RandomResizedCrop(224) + flip then jitter randint(0, 32), zero-initialised compensators,
all 1000 classes in one batch (--batch-size 1000); M = 3 compensators per base set
(ResNet-18, MobileNetV2, EfficientNet-B0 from torchvision), so IPC 10 -> B =
floor(10 / 1.003) = 9 base sets (9000 real images + 27 compensators), 36 instances per
class. Here the M teachers are the converted torchvision networks of ONE architecture
(put M converted teachers in teacher.dir; jaxdd's teacher directory holds one
architecture), a deviation. Student: the reference's static labels with MixUp; its
ImageNet student recipe is not in the released code, so the CIFAR static recipe `infer`
is used with a ResNet-18 student, 300 epochs (SRe2L's ImageNet budget), batch 128.
Data: streamed (image_size=224); the base images are the only training images read.
"""


def get_config():
    return dict(
        method="infer",
        dataset="imagenet2012",
        ipc=10,
        seed=0,
        preprocess="normalize",
        image_size=224,               # streamed: decoded + resized by the grain loader
        teacher=dict(
            model="resnet18_imagenet",
            dir="runs/teachers/REPLACE-with-converted-pretrained-teachers",
            train_if_missing=False,   # pretrained teachers must be given
            num_teachers=3,           # M (reference: 3 architectures)
        ),
        infer=dict(
            iterations=2000,
            lr=0.25,
            r_bn=0.01,
            jitter=(0, 32),
            crop=True,                # RandomResizedCrop(224) + flip before the jitter
        ),
        relabel=dict(recipe="infer", mode="static", model="resnet18_imagenet", epochs=300,
                     batch_size=128, pad_crop=0, crop_min_scale=0.08),
    )
