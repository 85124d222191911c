"""Shared base of the statistics-family Fashion-MNIST `cpu` presets (SRe2L and RDED): the
same data, pixel space, student epochs and teacher, so whichever preset runs first trains
the teacher into runs/teachers/fashion_mnist-convnet_d3_w32_bn-... and the other reuses it.

A preset is this base plus what differs (`jaxdd.configs.family_base(__file__, ...)`).
"""


def get_config():
    return dict(
        dataset="fashion_mnist",
        ipc=10,
        seed=0,
        preprocess="normalize",       # teacher, recover/selection and student share this space
        teacher=dict(                 # jaxdd.population.teachers.TeacherConfig non-defaults + model/dir
            model="convnet_d3_w32_bn",  # any registry model with BatchNorm
            dir=None,                 # None = runs/teachers/<dataset>-<model>-<pre>-s<seed>
            train_if_missing=True,    # train it there when absent (resumable per epoch)
            epochs=3,                 # CIFAR-100 recipe: 200
            batch_size=256,           # CIFAR-100 recipe: 128
        ),
        relabel=dict(                 # defaults of `jaxdd relabel` on the artefact
            epochs=300,               # student epochs (SRe2L IN-1K and RDED: 300)
        ),
    )
