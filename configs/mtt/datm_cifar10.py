"""DATM on CIFAR-10: difficulty-aligned windows, learned soft labels (needs a GPU).

Command:  jaxdd distill --config configs/mtt/datm_cifar10.py --ipc {1,10,50}
Runtime:  not measured by jaxdd.
Expected: published DATM 46.9 / 66.8 / 76.1 % (IPC 1 / 10 / 50); not yet reproduced.

Values from DATM's code (github.com/NUS-HPC-AI-Lab/DATM; files as `path:line`; C = the
preset's configs/CIFAR-10/ConvIN/IPC{1,10,50}.yaml):
- experts: README.md:31 (buffer_FTD.py --train_epochs=100 --rho_max=0.01 --rho_min=0.01
  --alpha=0.3 --lr_teacher=0.01 --mom=0. --batch_train=256 --zca): 100 GSAM epochs, constant
  lr (buffer/buffer_FTD.py:84 StepLR gamma=1), ZCA.
- every IPC: syn_steps 80 (C:5), expert_epochs 2 (C:6), lr_init = lr_teacher 0.01 (C:8),
  iterations 10000 (IPC1.yaml:14, IPC10.yaml:12, IPC50.yaml:12), min_start 0, Momentum_y 0.9,
  zca (IPC1.yaml:33, IPC10.yaml:34, IPC50.yaml:32).
- IPC 1 (IPC1.yaml): lr_img 100 (:7), batch_syn 10 (:15), lr_y 5 (:24), max_loss = threshold
  1.1 (:26), Sequential_Generation False (:28: fixed window, expansion_end None),
  max_start 4 (:31), lr_lr 1e-7 (:32).
- IPC 10 (IPC10.yaml): lr_img 100 (:7), batch_syn 100 (:13), lr_y 2 (:22), threshold 1 (:23),
  current_max_start 10 (:29), max_start 20 (:30), expansion_end 1000 (:31), lr_lr 1e-5 (:33).
- IPC 50 (IPC50.yaml): lr_img 1000 (:7), batch_syn 500 (:13), lr_y 2 (:22), threshold 1 (:24),
  expansion_end 2000 (:26), current_max_start 20 (:29), max_start 40 (:30), lr_lr 1e-5 (:31).
  Sequential generation is on at IPC 10 / 50 by default (utils/cfg.py:116).
- init: pix_init samples_predicted_correctly (C:27/25/25) -> init_correct_only; label logits and
  the picking expert at Label_Model_Timestamp = -1, the final checkpoint (utils/cfg.py:136;
  distill/DATM.py:201, 288) -> label_expert_epoch "final".
- eval: batch_train 128 (IPC1.yaml:29, IPC10.yaml:26, IPC50.yaml:27; used as the evaluation
  batch at utils/utils_baseline.py:506), 1000 epochs (utils/cfg.py:42), learned lr.
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, dataset="cifar10", ipc=10, preprocess="zca", model="convnet",
        iterations=10000,
        experts=dict(epochs=100, optimizer="gsam", gsam_rho=0.01, gsam_alpha=0.3),
        mtt=dict(syn_steps=80, expert_epochs=2, min_start=0, max_start=20, batch_syn=100,
                 lr_img=100.0, lr_init=0.01, lr_y=2.0, label_mode="learned",
                 label_expert_epoch="final", init_correct_only=True,
                 max_loss=1.0, current_max_start=10, expansion_end=1000),
        eval=dict(overrides=dict(batch_size=128)),
        by_ipc={
            1: dict(mtt=dict(batch_syn=10, max_start=4, current_max_start=None, expansion_end=None,
                             lr_y=5.0, lr_lr=1e-7, max_loss=1.1)),
            10: dict(mtt=dict(batch_syn=100, max_start=20, current_max_start=10, expansion_end=1000,
                              lr_y=2.0)),
            50: dict(mtt=dict(batch_syn=500, max_start=40, current_max_start=20, expansion_end=2000,
                              lr_img=1000.0, lr_y=2.0)),
        },
    )
