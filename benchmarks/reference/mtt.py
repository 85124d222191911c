#!/usr/bin/env python
"""MTT reference fixture: tests/fixtures/reference/mtt.npz (float64, PyTorch).

Reference: GeorgeCazenavette/mtt-distillation, `distill.py` `main()`, the training loop of
one iteration (written out here after it; the repository cannot be imported offline):
- `syn_lr = torch.tensor(args.lr_teacher)`, `optimizer_img = SGD([image_syn], lr=lr_img,
  momentum=0.5)`, `optimizer_lr = SGD([syn_lr], lr=lr_lr, momentum=0.5)`,
  `criterion = nn.CrossEntropyLoss()`;
- `starting_params = expert_trajectory[start_epoch]`, `target_params =
  expert_trajectory[start_epoch + expert_epochs]`, both flattened with `torch.cat`;
- syn_steps inner steps: minibatch `indices_chunks.pop()` of fresh `torch.randperm`s split by
  batch_syn; `grad = autograd.grad(ce, student_params[-1], create_graph=True)`;
  `student_params.append(student_params[-1] - syn_lr * grad)`;
- `param_loss = mse_loss(student_params[-1], target, 'sum') / num_params`, `param_dist =
  mse_loss(starting, target, 'sum') / num_params`, `grand_loss = param_loss / param_dist`,
  `grand_loss.backward()`, `optimizer_img.step()`, `optimizer_lr.step()`.
The student (`networks.py` ConvNet, instancenorm, via `reparam_module.py`) and the expert
trajectory (`buffer.py`) are in `_tm_common.py`. No DSA (`--no_aug`): augmentation draws
cannot be replayed in jaxdd draw for draw.

Two cases, 3 classes x 2 images of 8x8x3, ConvNet depth 2 width 4 (jaxdd `convnet_d2_w4`),
one expert of 4 timestamps (init + 3 epochs), start epoch 1, expert_epochs 2, syn_steps 3:
- `full`: batch_syn = all 6 images (the default), then one optimiser step of images and lr;
  a permutation of the full batch does not change the mean CE, so jaxdd's own schedule gives
  the same loss (the test runs the pipeline's `window_loss_and_grads` and `step`).
- `mb`: batch_syn = 3; the indices each inner step took are stored (`mb_idx`, (3, 3)) and the
  test passes them to jaxdd's `matching_loss_and_grads`.
Stored: every input (real data, trajectory as flat vectors in `net.parameters()` order,
images NCHW, labels, lr, optimiser settings, indices) and the outputs (loss, d/d image_syn,
d/d syn_lr, images and lr after the step).

Run by hand: PYTHONPATH=. /work/venv-torch/bin/python benchmarks/reference/mtt.py
"""

from __future__ import annotations

import torch

import _tm_common as tm

SEED = 0
IPC, SYN_STEPS, EXPERT_EPOCHS, START = 2, 3, 2, 1
LR_TEACHER, LR_IMG, LR_LR = 0.05, 1000.0, 1e-5   # lr_img, lr_lr: distill.py's defaults


def main() -> None:
    gen = torch.Generator().manual_seed(SEED)
    x_real, y_real, traj, image_syn0, label_syn, starting, target = tm.expert_and_real_init(
        gen, IPC, START, EXPERT_EPOCHS, LR_TEACHER)   # pix_init='real'
    out = tm.window_arrays(x_real, y_real, traj, image_syn0, label_syn, START, EXPERT_EPOCHS,
                           SYN_STEPS, LR_TEACHER, LR_IMG, LR_LR)

    # case full: batch_syn = all, one outer iteration with the optimiser step
    image_syn = image_syn0.clone().requires_grad_(True)
    syn_lr = torch.tensor(LR_TEACHER).requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=LR_IMG, momentum=0.5)
    optimizer_lr = torch.optim.SGD([syn_lr], lr=LR_LR, momentum=0.5)
    idx = tm.inner_indices(gen, len(image_syn), SYN_STEPS, len(image_syn))
    grand_loss = tm.mtt_grand_loss(image_syn, label_syn, syn_lr, starting, target, idx, tm.hard_ce)
    optimizer_img.zero_grad()
    optimizer_lr.zero_grad()
    grand_loss.backward()
    out.update(full_loss=grand_loss.detach(), full_grad_x=image_syn.grad.clone(),
               full_grad_lr=syn_lr.grad.clone())
    optimizer_img.step()
    optimizer_lr.step()
    out.update(full_x_next=image_syn.detach().clone(), full_lr_next=syn_lr.detach().clone())

    # case mb: batch_syn = 3, the step indices stored
    image_syn = image_syn0.clone().requires_grad_(True)
    syn_lr = torch.tensor(LR_TEACHER).requires_grad_(True)
    idx = tm.inner_indices(gen, len(image_syn), SYN_STEPS, 3)
    loss = tm.mtt_grand_loss(image_syn, label_syn, syn_lr, starting, target, idx, tm.hard_ce)
    gx, glr = torch.autograd.grad(loss, (image_syn, syn_lr))
    out.update(mb_idx=torch.stack(idx), mb_loss=loss.detach(), mb_grad_x=gx, mb_grad_lr=glr)

    path = tm.save("mtt", out)
    print(f"wrote {path}: full loss {out['full_loss'].item():.6f}, mb loss {out['mb_loss'].item():.6f}")


if __name__ == "__main__":
    main()
