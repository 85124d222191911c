"""AST (Shen et al., "Distilling Dataset through Alignment with Smooth and High-Quality
Expert Trajectories") on Fashion-MNIST, reduced to run on a 2-core CPU like
configs/mtt/fashion_mnist_cpu.py.

Command:  jaxdd distill --config configs/mtt/ast_fashion_mnist_cpu.py --ipc 10
Runtime / expected accuracy: not measured yet (no benchmarks/results row for AST so far).

AST values (reference shenjiyuan123/AST-Alignment-with-Smooth-Expert):
- experts, buffer.py (`--optim SGDMOM --loss_decay --gp True`): lr 0.003 (its default
  lr_teacher), momentum 0.9 (--mom), weight decay 1e-3 (--l2), lr x0.6 after epoch
  epochs//2 + 1 (schedule "ast"), loss scaled by 0.5, 0.55, ..., 0.95 over epochs 0-9,
  input-gradient penalty lambda 2 (utils.py epoch_gp LAMBDA=2).
- distillation, distill.py / distill.sh: inner momentum 0.9 (--mom), --agg_middle_loss
  (ast_intermediate), --weight_perturb alpha 1 (ast_perturb), --balance_loss (ast_balance),
  --pix_init avg (init_kmeans), lr_teacher 0.01 (lr_init), lr_lr 1e-5.
Reductions (as the MTT cpu preset): ConvNet-D3 width 32, 2 experts of 4 epochs (one more
than the MTT cpu preset so that expert_epochs = 2 leaves two start epochs), no expert DSA,
10 inner steps, 200 outer iterations, the `cpu` evaluation protocol.
"""

from jaxdd.configs import family_base

AST_LOSS_SCALES = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)  # buffer.py loss_decay


def get_config():
    return family_base(
        __file__, dataset="fashion_mnist", ipc=10,
        preprocess="normalize",
        model="convnet_d3_w32",
        iterations=200,
        ckpt_every=50,
        experts=dict(
            num_experts=2,
            epochs=4,                  # >= max_start + expert_epochs
            dsa="",                    # no DSA for experts here (CPU budget)
            lr=0.003,                  # AST buffer.py lr_teacher default
            momentum=0.9,              # --mom
            weight_decay=1e-3,         # --l2
            schedule="ast",            # lr x0.6 after epoch epochs//2 + 1
            loss_scales=AST_LOSS_SCALES,
            grad_penalty=2.0,          # epoch_gp LAMBDA
        ),
        mtt=dict(
            syn_steps=10,
            expert_epochs=2,           # one intermediate target at inner step 5
            max_start=2,
            batch_syn=None,
            lr_img=100.0,
            lr_init=0.01,              # AST lr_teacher
            unroll=True,
            image_chunks="auto",
            dsa_strategy="color_crop_cutout_flip_scale_rotate",
            inner_momentum=0.9,        # AST --mom
            ast_intermediate=True,     # --agg_middle_loss
            ast_perturb=1.0,           # --weight_perturb (alpha 1)
            ast_balance=True,          # --balance_loss
            init_kmeans=True,          # --pix_init avg
        ),
        eval=dict(protocol="cpu", seeds=3),
        by_ipc={
            1: dict(mtt=dict(lr_img=100.0)),
            10: dict(mtt=dict(lr_img=100.0)),
            50: dict(mtt=dict(lr_img=1000.0, batch_syn=100)),
        },
    )
