"""SRe2L on Fashion-MNIST, reduced to run on a 2-core CPU (the statistics-matching quickstart).

Commands:
  jaxdd teacher --config configs/sre2l/fashion_mnist_cpu.py            # squeeze (optional:
                                                                         # recover trains it)
  jaxdd recover --config configs/sre2l/fashion_mnist_cpu.py --ipc 10 --out runs/sm10
  jaxdd relabel runs/sm10 --mode stored --json                          # KD students, test acc
Runtime / expected: measured by jaxdd, see benchmarks/results/sm_fmnist.json
(`python benchmarks/sm_fmnist.py`).

Reductions against the references: ConvNet-D3 width 32 with BN as the teacher (3 epochs
of the CIFAR-100 recipe instead of a 200-epoch ResNet-18), 300 recover iterations per
batch instead of 1000, and a 300-epoch student on the `cpu` protocol's ConvNet-D3-W32.
The recover hyper-parameters are otherwise the SRe2L CIFAR-100 preset (no crop, jitter
0..4 px, r_bn 0.01, lr 0.25).
"""


def get_config():
    return dict(
        method="sre2l",               # sre2l | cda | gvbsm | dwa
        dataset="fashion_mnist",
        ipc=10,
        seed=0,
        preprocess="normalize",       # teacher, recover and student share this pixel space
        teacher=dict(                 # jaxdd.population.teachers.TeacherConfig non-defaults + model/dir
            model="convnet_d3_w32_bn",  # any registry model with BatchNorm
            dir=None,                 # None = runs/teachers/<dataset>-<model>-<pre>-s<seed>
            train_if_missing=True,    # train it there when absent (resumable per epoch)
            epochs=3,                 # CIFAR-100 recipe: 200
            batch_size=256,           # CIFAR-100 recipe: 128
        ),
        recover=dict(                 # jaxdd.methods.sre2l.RecoverConfig (only non-defaults)
            lr=0.25,                  # Adam(0.5, 0.9) on normalised pixels, cosine to 0
            r_bn=0.01,                # weight of the BN statistics term
            iterations=300,           # per batch (SRe2L CIFAR-100: 1000)
        ),
        relabel=dict(                 # defaults of `jaxdd relabel` on the artefact
            epochs=300,               # student epochs (SRe2L IN-1K: 300)
        ),
    )
