"""Reference fixture for SRe2L's recover loss (and two recover steps), PyTorch float64.

Written as the reference code computes it (VILA-Lab/SRe2L, read for the operations, no code
copied):
  * `SRe2L/*small_dataset/recover_cifar.py`, `get_images`: fresh Adam([inputs], lr,
    betas=(0.5, 0.9), eps=1e-8); per iteration `lr_cosine_policy(lr, 0, T)` sets
    lr = 0.5 (1 + cos(pi t / T)) lr0 before the step; off1, off2 = random.randint(0, jitter)
    each; inputs_jit = torch.roll(inputs, shifts=(off1, off2), dims=(2, 3)); loss_ce =
    CrossEntropyLoss (mean) of the eval-mode teacher; rescale = [first_bn_multiplier] +
    [1] * (L - 1) over the BN hooks in module order; loss = loss_ce + r_bn * sum(rescale_l *
    r_feature_l); backward, Adam step, then `clip_cifar` (channel c clamped to
    [-m_c / s_c, (1 - m_c) / s_c], CIFAR mean/std of that file).
  * `recover/utils.py` (and `SRe2L/*small_dataset/utils.py`), `BNFeatureHook.hook_fn`:
    forward hook on every nn.BatchNorm2d; mean = input.mean([0, 2, 3]); var =
    input.permute(1, 0, 2, 3).reshape(C, -1).var(1, unbiased=False) (biased);
    r_feature = ||running_var - var||_2 + ||running_mean - mean||_2.

Tiny setup: 3 classes x 2 images, 3 x 10 x 10 inputs, a depth-2 width-4 BN ConvNet
(sm_common.py) with random weights and running statistics.

Part A: loss, its CE and BN parts and d loss / d x at one iteration with jitter offsets
drawn by random.randint (saved). Part B: two full recover iterations (T = 4 so the
cosine lr moves) with jitter 0, from given images: the images after each step.

Run by hand (needs torch):
  PYTHONPATH=. /work/venv-torch/bin/python benchmarks/reference/sre2l.py
writes tests/fixtures/reference/sre2l.npz; tests/test_reference_sm.py compares jaxdd with it.
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sm_common import make_teacher, teacher_arrays  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "reference",
                   "sre2l.npz")
MEAN = np.array([0.4914, 0.4822, 0.4465])  # recover_cifar.py clip_cifar
STD = np.array([0.2023, 0.1994, 0.2010])
R_BN, FIRST_BN, JITTER, LR, T = 0.05, 10.0, 4, 0.25, 4


class BNHook:
    """BNFeatureHook: statistics of the BN input, norm distance to the running ones."""

    def __init__(self, module):
        self.hook = module.register_forward_hook(self.fn)

    def fn(self, module, inp, out):
        x = inp[0]
        c = x.shape[1]
        mean = x.mean([0, 2, 3])
        var = x.permute(1, 0, 2, 3).contiguous().reshape([c, -1]).var(1, unbiased=False)
        self.r_feature = (torch.norm(module.running_var.data - var, 2)
                          + torch.norm(module.running_mean.data - mean, 2))


def loss_terms(net, hooks, x_jit, y):
    out = net(x_jit)
    ce = nn.CrossEntropyLoss()(out, y)
    rescale = [FIRST_BN] + [1.0] * (len(hooks) - 1)
    bn = torch.stack([h.r_feature * rescale[i] for i, h in enumerate(hooks)]).sum()
    return ce + R_BN * bn, ce, bn


def clip_cifar(x):
    for c in range(3):
        m, s = MEAN[c], STD[c]
        x[:, c] = torch.clamp(x[:, c], -m / s, (1 - m) / s)
    return x


def main():
    torch.set_default_dtype(torch.float64)
    net = make_teacher(seed=0)
    hooks = [BNHook(m) for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    torch.manual_seed(1)
    random.seed(1)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    x = torch.randn(6, 3, 10, 10)

    # Part A: one iteration's loss and gradient, jitter offsets as the reference draws them.
    off = (random.randint(0, JITTER), random.randint(0, JITTER))
    xa = x.clone().requires_grad_(True)
    loss, ce, bn = loss_terms(net, hooks, torch.roll(xa, shifts=off, dims=(2, 3)), y)
    loss.backward()

    # Part B: two iterations of get_images' loop with jitter 0 (T = 4).
    inputs = x.clone().requires_grad_(True)
    opt = torch.optim.Adam([inputs], lr=LR, betas=[0.5, 0.9], eps=1e-8)
    steps = []
    for it in range(2):
        for g in opt.param_groups:
            g["lr"] = 0.5 * (1 + np.cos(np.pi * it / T)) * LR
        opt.zero_grad()
        l, _, _ = loss_terms(net, hooks, torch.roll(inputs, shifts=(0, 0), dims=(2, 3)), y)
        l.backward()
        opt.step()
        inputs.data = clip_cifar(inputs.data)
        steps.append(inputs.detach().numpy().copy())

    arrays = dict(teacher_arrays(net), x_NCHW=x.numpy(), y=y.numpy(), offsets=np.array(off),
                  loss=loss.detach().numpy(), ce=ce.detach().numpy(), bn=bn.detach().numpy(),
                  grad_NCHW=xa.grad.numpy(), step1_NCHW=steps[0], step2_NCHW=steps[1],
                  mean=MEAN, std=STD,
                  hp=np.array([R_BN, FIRST_BN, LR, T], np.float64))
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {os.path.normpath(OUT)}: loss {loss.item():.6f} (ce {ce.item():.6f}, "
          f"bn {bn.item():.6f}), offsets {off}")


if __name__ == "__main__":
    main()
