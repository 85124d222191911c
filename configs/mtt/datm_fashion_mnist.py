"""DATM (difficulty-aligned trajectory matching, learned soft labels) on Fashion-MNIST at the
largest budget this 2-core CPU runs in <= 2 h per distillation, evaluated with the
references' `mtt` protocol (issue #17).

Command:  jaxdd distill --config configs/mtt/datm_fashion_mnist.py --ipc {1,10,50}
          python benchmarks/fmnist_table.py --methods datm   # every IPC, `mtt` and `cpu`
Reference (NUS-HPC-AI-Lab/DATM CIFAR-10 ConvIN configs, as configs/mtt/datm_cifar10.py; no
Fashion-MNIST run published): GSAM experts 100 epochs (rho 0.01, alpha 0.3); 10000
iterations; N = 80, M = 2; learned soft labels (lr_y 5 / 2 / 2), picked correctly
classified real images as init; IPC 1: fixed window max_start 4, batch_syn 10, lr_lr 1e-7,
max_loss 1.1; IPC 10: window 10 -> 20 epochs by iteration 1000 (10 % of the run), batch_syn
100; IPC 50: window 20 -> 40 by iteration 2000 (20 %), batch_syn 500, lr_img 1000.
Kept: M = 2, lr_y, lr_img, lr_lr, label learning and init, max_loss, batch_syn at IPC 1
and 10, window growth ending at the same fraction of the run.
Budget here, and why: ConvNet-D3 width 32 (reference 128); 3 GSAM experts x 5 epochs
(reference 100 epochs DATM / 50 FTD) in runs/buffers/fashion_mnist-w32-gsam-E3x5, shared by
datm_fashion_mnist.py and ftd_fashion_mnist.py at every IPC. GSAM costs two gradients per
step: ~8 min/epoch at load 5-12 (twice the ~4 min of an SGD epoch, see
configs/mtt/fashion_mnist.py; not timed separately), so the 15 epochs take ~2 h
(estimated; slower under load). Outer iterations as configs/mtt/fashion_mnist.py, and for
the same cost: 1000 / 400 / 300 with N = 50 / 20 / 20 at IPC 1 / 10 / 50 (~2 / 1.8 / 1.7 h
at load 5-12, estimated); max_start 3 at every IPC (reference 4 / 20 / 40),
window growth 1 -> 3 epochs by 10 % / 20 % of the run at IPC 10 / 50 (as the reference's
10 -> 20 by iteration 1000 of 10000, 20 -> 40 by 2000); lr_init 0.01 (= the experts' lr,
as the reference). batch_syn at IPC 50: 100 (reference 500).
Expected: not yet measured; see benchmarks/results/fashion_mnist.md.
Evaluation: `mtt` (5 seeds) with the learned labels and lr; the table also gives `cpu`.
(DATM evaluates with batch 128; the table's protocols use their own batch 256.)
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, dataset="fashion_mnist", ipc=10, preprocess="normalize",
        model="convnet_d3_w32",       # experts and inner student (reference width 128)
        buffer_dir="runs/buffers/fashion_mnist-w32-gsam-E3x5",  # shared with ftd_fashion_mnist.py
        iterations=400,               # reference 10000 (see above)
        ckpt_every=25,
        experts=dict(num_experts=3, epochs=5, optimizer="gsam", gsam_rho=0.01, gsam_alpha=0.3,
                     dsa="color_crop_cutout_scale_rotate"),
        mtt=dict(syn_steps=20, expert_epochs=2, min_start=0, max_start=3, batch_syn=100,
                 lr_img=100.0, lr_init=0.01, lr_y=2.0, label_mode="learned",
                 label_expert_epoch="final", init_correct_only=True,
                 max_loss=1.0, current_max_start=1, expansion_end=40,
                 unroll=1, image_chunks="auto",   # rolled: constant memory (README)
                 dsa_strategy="color_crop_cutout_scale_rotate"),
        eval=dict(protocol="mtt", seeds=5),
        by_ipc={
            1: dict(iterations=1000,
                    mtt=dict(syn_steps=50, batch_syn=10, max_start=3, current_max_start=None,
                             expansion_end=None, lr_y=5.0, lr_lr=1e-7, max_loss=1.1)),
            10: dict(iterations=400,
                     mtt=dict(batch_syn=100, max_start=3, current_max_start=1,
                              expansion_end=40, lr_y=2.0)),       # 10 % of 400
            50: dict(iterations=300,
                     mtt=dict(batch_syn=100, max_start=3, current_max_start=1,
                              expansion_end=60, lr_img=1000.0, lr_y=2.0)),   # 20 % of 300
        },
    )
