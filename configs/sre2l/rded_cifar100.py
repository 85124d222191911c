"""RDED CIFAR-100 (spec section 6; numbers from the RDED reference scripts
`cifar100_10ipc_resnet-18-modified_to_resnet-18-modified_cr5.sh` and its argument defaults).

Commands:
  jaxdd teacher --config configs/sre2l/rded_cifar100.py        # squeeze (recover also trains it)
  jaxdd recover --config configs/sre2l/rded_cifar100.py --ipc 10 --out runs/rded_cifar100-ipc10
  jaxdd relabel runs/rded_cifar100-ipc10 --mode online --json  # --report best: RDED's best-of-curve
Runtime / expected accuracy: not measured by jaxdd (no such hardware here); see the RDED
paper for its published numbers. The selection itself is cheap: 100 classes x 300 images
x 5 crops = 150k teacher forward passes.

Teacher: ResNet-18 with the 3x3 stride-1 stem and no max-pool (RDED's `resnet18_modified`),
trained with the SRe2L CIFAR-100 recipe (SGD 0.1, cosine, 200 epochs; jaxdd's
TeacherConfig defaults). Selection: 300 real images per class, 5 square random-resized
crops each (area 0.08-1), scored by the teacher's CE, factor 1 (one crop per 32 px image).
Student (recipe `rded`): ResNet-18, AdamW 1e-3, wd 0.01, KL at T 20 with CutMix, flip, no
crop (scale (1/factor, 1) = 1 at factor 1), half-cosine lr per epoch, 300 epochs, batch 100
(the script's IPC-10 value; 200 at IPC 50).
"""


def get_config():
    return dict(
        method="rded",
        dataset="cifar100",
        ipc=10,
        seed=0,
        preprocess="normalize",
        teacher=dict(                 # jaxdd.population.teachers.TeacherConfig non-defaults + model/dir
            model="resnet18",
            dir=None,
            train_if_missing=True,    # False: a pretrained teacher must be given
        ),
        rded=dict(                    # jaxdd.methods.rded.RDEDConfig
            factor=1,                 # tiles per side (224 px recipes: 2)
            num_crop=5,               # candidate crops per real image
            mipc=300,                 # real images per class scored
            min_scale=0.08,           # crop area fraction lower bound
        ),
        relabel=dict(
            recipe="rded",
            epochs=300,
            batch_size=100,           # RDED CIFAR-100: 100 at IPC 10, 200 at IPC 50
            model="resnet18",         # student
        ),
    )
