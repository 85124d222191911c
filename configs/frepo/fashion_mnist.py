"""FRePo on Fashion-MNIST with the reference's network and per-step budget.

Command:  jaxdd distill --config configs/frepo/fashion_mnist.py --ipc 10
Everything per step is FRePo's (configs/frepo/common.py, with source lines): 10 online
ConvNet-D3 models of width 128 with BatchNorm, real batch 1024, LAMB 3e-4 with cosine
decay, labels learned, reg 1e-6, models replaced after 100 online steps. Not the
reference's length: its README trains up to 500000 steps (GPU). One step here took 10.1 s
on the shared 2-core CPU (measured, load 5-10; ConvNet-D3-W128 on 1024 real images
dominates), so 500 iterations (~1.4 h) fit the 2 h budget of this machine; 500000 would
take ~58 days. Evaluation: the `cpu` protocol (ConvNet-D3-W32, 300 epochs), to compare
with the other CPU numbers; `--set eval.protocol=mtt` trains the width-128 student
instead. Not yet run to the end by jaxdd; accuracy not measured.
Differences in the network: jaxdd's ConvNet keeps the width constant and normalises after
each conv; FRePo's `Conv` doubles it per layer (128/256/512) and normalises before the
2nd and 3rd conv (lib/models/networks.py:185-237), and its BatchNorm keeps running
statistics with Flax momentum 0.1 (networks.py:200: almost the last batch's), jaxdd's with
0.9 (PyTorch's 0.1); the KRR features are computed in inference mode with them.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__,
        model="convnet_d3_w128_bn",   # online models: ConvNet-D3, BatchNorm, width 128
        iterations=500,               # distiller steps (reference: up to 500000; see above)
        ckpt_every=50,
    )
