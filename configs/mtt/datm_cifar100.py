"""DATM on CIFAR-100 IPC 10: difficulty-aligned window 30 -> 50, learned soft labels
(needs a GPU).

Command:  jaxdd distill --config configs/mtt/datm_cifar100.py --ipc 10
Runtime:  not measured by jaxdd. Expected: published DATM 47.2 % (IPC 10); not yet
          reproduced by jaxdd.

Values from DATM's code (github.com/NUS-HPC-AI-Lab/DATM; files as `path:line`; C =
configs/CIFAR-100/ConvIN/IPC10.yaml): syn_steps 80 (C:5), expert_epochs 2 (C:6), lr_img 1000
(C:7), lr_init = lr_teacher 0.01 (C:8), iterations 10000 (C:12), batch_syn 1000 (C:13),
lr_y 10 (C:22), Momentum_y 0.9 (C:23), max_loss = threshold 1 (C:24), pix_init
samples_predicted_correctly (C:25) -> init_correct_only, expansion_end 2000 (C:26),
evaluation batch_train 128 (C:27; utils/utils_baseline.py:506), min_start 0 (C:28),
current_max_start 30 (C:29), max_start 50 (C:30), lr_lr 1e-5 (C:31), zca (C:32); label logits
and the picking expert at the final checkpoint (utils/cfg.py:136). Experts: the GSAM recipe of
README.md:31 (100 epochs, rho 0.01, alpha 0.3); DATM publishes that command for CIFAR-10 only.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, dataset="cifar100", ipc=10, preprocess="zca", model="convnet",
        iterations=10000,
        experts=dict(epochs=100, optimizer="gsam", gsam_rho=0.01, gsam_alpha=0.3),
        mtt=dict(syn_steps=80, expert_epochs=2, min_start=0, max_start=50,
                 current_max_start=30, expansion_end=2000, batch_syn=1000,
                 lr_img=1000.0, lr_init=0.01, lr_y=10.0, label_mode="learned",
                 label_expert_epoch="final", init_correct_only=True, max_loss=1.0),
        eval=dict(overrides=dict(batch_size=128)),
        by_ipc={10: {}},
    )
