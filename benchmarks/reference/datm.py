#!/usr/bin/env python
"""DATM reference fixture: tests/fixtures/reference/datm.npz (float64, PyTorch).

Reference: NUS-HPC-AI-Lab/DATM, `distill/DATM.py` `main()` (written out here after it; the
repository cannot be imported offline):
- `pix_init == "samples_predicted_correctly"`: per class, real images of that class in a
  random order, the first ipc that the label expert (`Label_Model_Timestamp = -1`: an
  expert's last timestamp) predicts correctly. Here expert 0's; jaxdd's picker draws its own
  order from a jax key, so the test takes the picked images as given;
- label init: logits of every label expert on the synthetic images, `correct_predictions =
  argmax == label_syn`, `correct_logits = logits * mask`, summed over experts and divided by
  the number of experts that are correct (`average_logits_per_image`) -> `label_syn` logits,
  learned with `optimizer_y = SGD([label_syn], lr=lr_y, momentum=Momentum_y)`;
- `criterion = SoftCrossEntropy`: sum(-log_softmax(out) * softmax(target)) / batch;
- the MTT iteration (`student_params`, `create_graph=True`, `syn_lr * grad`, mse 'sum' /
  num_params ratio), `grand_loss.backward()`, then only `if grand_loss <= args.threshold`:
  `optimizer_y.step()`, `optimizer_img.step()`, `optimizer_lr.step()` (img and lr SGD with
  momentum 0.5).
The student (`networks.py` ConvNet, instancenorm, via ReparamModule) and the experts'
trajectories (`buffer/buffer_FTD.py`, here plain SGD as MTT's buffer.py) are in
`_tm_common.py`. No DSA (`no_aug`). No Sequential_Generation (start epoch fixed at 1).

Cases (3 classes x 2 images 8x8x3, ConvNet depth 2 width 4, two experts of 4 timestamps,
matching expert 0 from start epoch 1, expert_epochs 2, syn_steps 3):
- `init_labels`: DATM's label logits from both experts' last timestamps (`num_correct`: how
  many experts got each image right);
- `full`: batch_syn = all, loss and gradients w.r.t. images, syn_lr and label logits, then
  the gated step (the loss is below the threshold, so it updates; `full_*_next`);
- `mb`: batch_syn = 3, step indices stored (`mb_idx`).

Run by hand: PYTHONPATH=. /work/venv-torch/bin/python benchmarks/reference/datm.py
"""

from __future__ import annotations

import torch

import _tm_common as tm

SEED = 2
IPC, SYN_STEPS, EXPERT_EPOCHS, START, NUM_EXPERTS = 2, 3, 2, 1, 2
LR_TEACHER, LR_IMG, LR_LR = 0.05, 1000.0, 1e-5
LR_Y, MOMENTUM_Y, THRESHOLD = 2.0, 0.9, 1.0      # DATM configs' lr_y, Momentum_y, threshold


def pick_correct(gen, x_real, y_real, label_params):
    """samples_predicted_correctly: the first ipc correctly predicted images of a random order."""
    picked = []
    for c in range(tm.NUM_CLASSES):
        data_for_class_c = torch.nonzero(y_real == c).view(-1)
        data_for_class_c = data_for_class_c[torch.randperm(len(data_for_class_c), generator=gen)]
        logits = tm.forward(label_params, x_real[data_for_class_c]).detach()
        index = [int(i) for i, p in zip(data_for_class_c, logits.argmax(-1)) if p == c][:IPC]
        if len(index) < IPC:
            raise SystemExit(f"class {c}: expert 0 gets fewer than {IPC} images right; change SEED")
        picked += index
    return torch.tensor(picked)


def init_labels(image_syn, label_syn, experts_final):
    """DATM's Initialized_Labels: mean logits over the experts that classify an image right."""
    logits = [tm.forward(p, image_syn.detach()).detach() for p in experts_final]
    logits_tensor = torch.stack(logits)
    predicted_labels = torch.argmax(logits_tensor, dim=2)
    correct_predictions = predicted_labels == label_syn.view(1, -1)
    mask = correct_predictions.unsqueeze(2)
    correct_logits = logits_tensor * mask.float()
    correct_logits_per_model = correct_logits.sum(dim=0)
    num_correct_images_per_model = correct_predictions.sum(dim=0, dtype=torch.float64)
    return correct_logits_per_model / num_correct_images_per_model.unsqueeze(1), num_correct_images_per_model


def main() -> None:
    gen = torch.Generator().manual_seed(SEED)
    x_real, y_real = tm.real_data(gen)
    trajs = [tm.train_expert(gen, x_real, y_real, epochs=START + EXPERT_EPOCHS, lr=LR_TEACHER, batch=10)
             for _ in range(NUM_EXPERTS)]
    finals = [t[-1] for t in trajs]
    label_syn_ids = torch.arange(tm.NUM_CLASSES).repeat_interleave(IPC)
    image_syn0 = x_real[pick_correct(gen, x_real, y_real, finals[0])].clone()
    logits0, num_correct = init_labels(image_syn0, label_syn_ids, finals)
    starting, target = trajs[0][START], trajs[0][START + EXPERT_EPOCHS]
    n = len(image_syn0)
    out = dict(x_real=x_real, y_real=y_real, trajs=torch.stack([torch.stack(t) for t in trajs]),
               traj=torch.stack(trajs[0]), start=START, expert_epochs=EXPERT_EPOCHS,
               syn_steps=SYN_STEPS, x_syn=image_syn0, y_syn=label_syn_ids, init_labels=logits0,
               num_correct=num_correct, syn_lr=LR_TEACHER, lr_img=LR_IMG, lr_lr=LR_LR,
               momentum=0.5, lr_y=LR_Y, momentum_y=MOMENTUM_Y, threshold=THRESHOLD)

    # full: one iteration with the gated step
    image_syn = image_syn0.clone().requires_grad_(True)
    syn_lr = torch.tensor(LR_TEACHER).requires_grad_(True)
    label_syn = logits0.clone().requires_grad_(True)
    optimizer_img = torch.optim.SGD([image_syn], lr=LR_IMG, momentum=0.5)
    optimizer_lr = torch.optim.SGD([syn_lr], lr=LR_LR, momentum=0.5)
    optimizer_y = torch.optim.SGD([label_syn], lr=LR_Y, momentum=MOMENTUM_Y)
    idx = tm.inner_indices(gen, n, SYN_STEPS, n)
    grand_loss = tm.mtt_grand_loss(image_syn, label_syn, syn_lr, starting, target, idx, tm.soft_ce)
    optimizer_img.zero_grad()
    optimizer_lr.zero_grad()
    optimizer_y.zero_grad()
    grand_loss.backward()
    if not grand_loss <= THRESHOLD:
        raise SystemExit(f"loss {grand_loss.item()} > threshold: the step would not update; change SEED")
    out.update(full_loss=grand_loss.detach(), full_grad_x=image_syn.grad.clone(),
               full_grad_lr=syn_lr.grad.clone(), full_grad_y=label_syn.grad.clone())
    optimizer_y.step()
    optimizer_img.step()
    optimizer_lr.step()
    out.update(full_x_next=image_syn.detach().clone(), full_lr_next=syn_lr.detach().clone(),
               full_y_next=label_syn.detach().clone())

    # mb: batch_syn = 3, indices stored
    image_syn = image_syn0.clone().requires_grad_(True)
    syn_lr = torch.tensor(LR_TEACHER).requires_grad_(True)
    label_syn = logits0.clone().requires_grad_(True)
    idx = tm.inner_indices(gen, n, SYN_STEPS, 3)
    loss = tm.mtt_grand_loss(image_syn, label_syn, syn_lr, starting, target, idx, tm.soft_ce)
    gx, glr, gy = torch.autograd.grad(loss, (image_syn, syn_lr, label_syn))
    out.update(mb_idx=torch.stack(idx), mb_loss=loss.detach(), mb_grad_x=gx, mb_grad_lr=glr, mb_grad_y=gy)

    path = tm.save("datm", out)
    print(f"wrote {path}: full loss {out['full_loss'].item():.6f}, mb loss {out['mb_loss'].item():.6f}, "
          f"experts correct per image {num_correct.tolist()}")


if __name__ == "__main__":
    main()
