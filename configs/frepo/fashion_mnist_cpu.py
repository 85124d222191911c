"""FRePo on Fashion-MNIST, reduced for a 2-core CPU (minutes, not GPU-days).

Command:  jaxdd distill --config configs/frepo/fashion_mnist_cpu.py --ipc 10
Runtime / result: measured by jaxdd, see benchmarks/results/frepo_cpu_ipc10.json.
FRePo's own hyper-parameters (configs/frepo/common.py, with their source lines) except:
ConvNet-D3 width 32 with BatchNorm (reference: width 128, widths doubling per layer),
real batch 256 (reference 1024), 1500 iterations (reference up to 500K, README.md).
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__,
        model="convnet_d3_w32_bn",    # online models: ConvNet-D3, BatchNorm, width 32
        iterations=1500,              # distiller steps (reference: up to 500000)
        ckpt_every=250,
        frepo=dict(batch_real=256),   # real images per step (reference 1024)
    )
