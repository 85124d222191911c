#!/usr/bin/env python
"""TESLA reference fixture: tests/fixtures/reference/tesla.npz (float64, PyTorch).

Reference: justincui03/tesla, `distill.py` `main()`, one iteration of the training loop
(written out here after it; the repository cannot be imported offline):
- `param_dist = mse_loss(starting_params, target_params, reduction='sum')` (no division by
  num_params here; it cancels in the ratio anyway);
- `--teacher_label`: `label_syn = softmax(label_net(image_syn.detach(), flat_param=
  target_params))` (the SOFT_INIT_BATCH_SIZE batched branch; for other datasets the
  non-batched branch then calls `torch.cat` on an empty list, a crash in the reference, so the
  batched branch's result is what it means), used as probability targets of
  `nn.CrossEntropyLoss()`;
- forward pass without a graph through the parameters: for each of syn_steps minibatches
  (`indices_chunks.pop()`, indices kept in `indices_chunks_copy`), `grad = autograd.grad(ce,
  forward_params, create_graph=True)`, `student_params.append(student_params[-1] -
  syn_lr.item() * grad.detach())`, `gradient_sum += grad.detach()`;
- backward: for each step i, recompute `grad_i` at `student_params[i]` on the stored batch
  (`x_list[i]`, `y_list[i]`), `gradients = 2 * torch.autograd.grad((single_term +
  square_term) @ grad_i / param_dist, original_x_list[i])` with `single_term = syn_lr.item()
  * (target - starting)`, `square_term = syn_lr.item()**2 * gradient_sum`, and
  `syn_image_gradients[indices_chunks_copy[i]] += gradients[0]`;
- `grand_loss = (starting - syn_lr * gradient_sum - target)`, `grand_loss =
  grand_loss.dot(grand_loss) / param_dist`, `lr_grad = autograd.grad(grand_loss, syn_lr)`;
  `optimizer_img.step()` (SGD lr_img, momentum 0.5), `optimizer_lr.step()` (lr_lr, 0.5).

NOTE the reference's factor 2: `2 * torch.autograd.grad(...)` multiplies a TUPLE, which
repeats it, so `gradients[0]` is the VJP WITHOUT the 2: TESLA's image gradient is half the
derivative of its own loss (the lr gradient is exact). This script keeps that expression as
written and stores what the reference computes (`*_grad_x`); jaxdd's `grad_mode='tesla'`
returns the derivative itself, so the test compares jaxdd's image gradient with 2 x
`*_grad_x`, and jaxdd's step with lr_img / 2 with the reference's step (SGD with momentum is
linear in the gradient's scale: halving it = halving lr_img; `configs/mtt/tesla_imagenet64.py`
uses that).

The student (`networks.py` ConvNet, instancenorm, via `reparam_module.py`) and the expert
trajectory (`buffer.py`) are in `_tm_common.py`. No DSA (`--no_aug`).
Cases (3 classes x 2 images 8x8x3, ConvNet depth 2 width 4, start epoch 1, expert_epochs 2,
syn_steps 3):
- `full`: hard labels, batch_syn = all (TESLA's default num_classes * ipc), plus one
  optimiser step (images after it: `full_x_next`, lr: `full_lr_next`);
- `mb`: hard labels, batch_syn = 3, step indices stored (`mb_idx`);
- `soft`: `--teacher_label` soft labels (stored: `soft_labels`), batch_syn = all.

Run by hand: PYTHONPATH=. /work/venv-torch/bin/python benchmarks/reference/tesla.py
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import _tm_common as tm

SEED = 1
IPC, SYN_STEPS, EXPERT_EPOCHS, START = 2, 3, 2, 1
LR_TEACHER, LR_IMG, LR_LR = 0.05, 1000.0, 1e-5   # lr_img, lr_lr: distill.py's defaults


def tesla_iteration(image_syn, y_hat, syn_lr, starting_params, target_params, idx_list):
    """distill.py's loss, image gradient and lr gradient of one iteration (as written)."""
    student_params = [starting_params.clone().requires_grad_(True)]
    param_dist = torch.tensor(0.0)
    param_dist += F.mse_loss(starting_params, target_params, reduction="sum")
    syn_images = image_syn
    syn_image_gradients = torch.zeros(syn_images.shape)
    x_list, original_x_list, y_list, indices_chunks_copy = [], [], [], []
    gradient_sum = torch.zeros(student_params[-1].shape)
    for these_indices in idx_list:
        indices_chunks_copy.append(these_indices)
        x = syn_images[these_indices]
        this_y = y_hat[these_indices]
        original_x_list.append(x)
        x_list.append(x.clone())
        y_list.append(this_y.clone())
        forward_params = student_params[-1]
        x = tm.forward(forward_params, x)
        ce_loss = tm.hard_ce(x, this_y)
        grad = torch.autograd.grad(ce_loss, forward_params, create_graph=True, retain_graph=True)[0]
        detached_grad = grad.detach().clone()
        student_params.append(student_params[-1] - syn_lr.item() * detached_grad)
        gradient_sum += detached_grad
        del grad
    for i in range(len(idx_list)):
        w_i = student_params[i]
        output_i = tm.forward(w_i, x_list[i])
        ce_loss_i = tm.hard_ce(output_i, y_list[i])   # args.batch_syn is always set
        grad_i = torch.autograd.grad(ce_loss_i, w_i, create_graph=True, retain_graph=True)[0]
        single_term = syn_lr.item() * (target_params - starting_params)
        square_term = (syn_lr.item() ** 2) * gradient_sum
        gradients = 2 * torch.autograd.grad((single_term + square_term) @ grad_i / param_dist,
                                            original_x_list[i])   # tuple repetition: no factor 2
        with torch.no_grad():
            syn_image_gradients[indices_chunks_copy[i]] += gradients[0]
    grand_loss = starting_params - syn_lr * gradient_sum - target_params
    grand_loss = grand_loss.dot(grand_loss) / param_dist
    lr_grad = torch.autograd.grad(grand_loss, syn_lr)[0]
    return grand_loss.detach(), syn_image_gradients, lr_grad


def teacher_labels(image_syn, target_params):
    """--teacher_label: softmax of the target expert's logits (batched branch, one batch)."""
    batch_labels = [tm.forward(target_params, image_syn.detach())]
    label_syn = torch.cat(batch_labels, dim=0)
    return torch.nn.functional.softmax(label_syn, dim=1).detach()


def main() -> None:
    gen = torch.Generator().manual_seed(SEED)
    x_real, y_real, traj, image_syn0, label_syn, starting, target = tm.expert_and_real_init(
        gen, IPC, START, EXPERT_EPOCHS, LR_TEACHER)   # pix_init='real'
    n = len(image_syn0)
    out = tm.window_arrays(x_real, y_real, traj, image_syn0, label_syn, START, EXPERT_EPOCHS,
                           SYN_STEPS, LR_TEACHER, LR_IMG, LR_LR)

    # full: hard labels, all images per step, and the optimiser step
    image_syn = image_syn0.clone().requires_grad_(True)
    syn_lr = torch.tensor(LR_TEACHER).requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=LR_IMG, momentum=0.5)
    optimizer_lr = torch.optim.SGD([syn_lr], lr=LR_LR, momentum=0.5)
    optimizer_img.zero_grad()
    optimizer_lr.zero_grad()
    idx = tm.inner_indices(gen, n, SYN_STEPS, n)
    loss, gx, glr = tesla_iteration(image_syn, label_syn, syn_lr, starting, target, idx)
    image_syn.grad = gx
    syn_lr.grad = glr
    optimizer_img.step()
    optimizer_lr.step()
    out.update(full_loss=loss, full_grad_x=gx, full_grad_lr=glr,
               full_x_next=image_syn.detach().clone(), full_lr_next=syn_lr.detach().clone())

    # mb: hard labels, batch_syn = 3, indices stored
    syn_lr = torch.tensor(LR_TEACHER).requires_grad_(True)
    idx = tm.inner_indices(gen, n, SYN_STEPS, 3)
    loss, gx, glr = tesla_iteration(image_syn0.clone().requires_grad_(True), label_syn, syn_lr,
                                    starting, target, idx)
    out.update(mb_idx=torch.stack(idx), mb_loss=loss, mb_grad_x=gx, mb_grad_lr=glr)

    # soft: teacher labels from the target expert, all images per step
    soft = teacher_labels(image_syn0, target)
    syn_lr = torch.tensor(LR_TEACHER).requires_grad_(True)
    idx = tm.inner_indices(gen, n, SYN_STEPS, n)
    loss, gx, glr = tesla_iteration(image_syn0.clone().requires_grad_(True), soft, syn_lr,
                                    starting, target, idx)
    out.update(soft_labels=soft, soft_loss=loss, soft_grad_x=gx, soft_grad_lr=glr)

    path = tm.save("tesla", out)
    print(f"wrote {path}: losses full {out['full_loss'].item():.6f} mb {out['mb_loss'].item():.6f} "
          f"soft {out['soft_loss'].item():.6f}")


if __name__ == "__main__":
    main()
