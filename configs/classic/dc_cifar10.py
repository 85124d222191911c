"""DC (gradient matching) on CIFAR-10 with the paper's protocol (GPU-sized; not run by jaxdd).

Command:  jaxdd distill --config configs/classic/dc_cifar10.py --ipc 10
Runtime / expected accuracy: not measured by jaxdd (no such hardware here); see the DC
paper for its published numbers.

Distillation: the DCConfig defaults, i.e. VICO-UoE/DatasetCondensation `main.py` argparse
(:21 Iteration 1000, :22 lr_img 0.1, :23 lr_net 0.01, :24-25 batch_real / batch_train 256,
noise init), ConvNet-D3 width 128 (instance norm); `iterations` counts distiller steps, 1000
reference iterations x outer_loop (utils.py get_loops: 1 / 10 / 50 at IPC 1 / 10 / 50).
Evaluation (protocol `dc`): DC evaluates its sets WITHOUT augmentation — `main.py` takes
`utils.get_daparam`'s strategy 'none' for every non-MNIST dataset with a ConvNet, hence
epoch_eval_train 300 (:20; 1000 only when augmenting), lr 0.01, batch 256, x0.1 at half.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, method="dc", dataset="cifar10", model="convnet",
        iterations=10000,             # distiller steps = 1000 reference iterations x outer_loop
        ckpt_every=500,
        dc=dict(lr_img=0.1, lr_net=0.01, batch_real=256, batch_train=256),
        eval=dict(protocol="dc", seeds=5),
        by_ipc={1: dict(iterations=1000), 10: dict(iterations=10000),
                50: dict(iterations=50000)},
    )
