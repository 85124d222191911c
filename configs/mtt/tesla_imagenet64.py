"""TESLA on ImageNet-1K at 64 px with assigned soft labels (spec section 6; needs GPUs).

Command:  jaxdd distill --config configs/mtt/tesla_imagenet64.py --ipc 1
Runtime:  not measured by jaxdd. Data: TFDS `imagenet_resized/64x64` (label order differs
          from imagenet2012). Expected: published TESLA 7.7 / 17.8 / 27.9 % (IPC 1/10/50);
          not yet reproduced. `grad_mode="tesla"` is the paper's procedure; "remat" gives
          the exact gradient at the same memory.
lr_img:   5000 = TESLA's 10000 (its README.md, ImageNet-1K command) / 2. TESLA's
          distill.py computes its image gradient as `2 * torch.autograd.grad(...)`, which
          repeats a tuple, so its images move by HALF the derivative of its loss (its lr
          gradient is exact); jaxdd's `grad_mode="tesla"` returns the derivative itself, and
          SGD with momentum is linear in the gradient's scale, so lr_img / 2 takes TESLA's
          steps (tests/test_reference_tm.py, fixture benchmarks/reference/tesla.py).
"""

from jaxdd.configs import family_base


def get_config():
    return family_base(
        __file__, dataset="imagenet_resized/64x64", ipc=1,
        preprocess="normalize", model="convnet_d4",
        iterations=10000,
        mtt=dict(syn_steps=10, expert_epochs=3, max_start=10, batch_syn=100,
                 lr_img=5000.0, lr_lr=1e-4, lr_init=0.01, grad_mode="tesla",
                 label_mode="tesla"),
        by_ipc={1: {}, 10: {}, 50: {}},
    )
