"""Shared pieces of the trajectory-matching reference scripts (mtt.py, tesla.py, datm.py).

Written after the reference code (no internet here, so not imported from it):
- The student: MTT `networks.py` class `ConvNet` (also TESLA's and DATM's `networks.py`) with
  net_norm='instancenorm' (`nn.GroupNorm(C, C, affine=True)`, eps 1e-5), ReLU, 'avgpooling'
  (`AvgPool2d(2, 2)`), `padding=3 if channel == 1 and d == 0 else 1`, then `out.view(N, -1)`
  and `nn.Linear`, called as MTT's `reparam_module.ReparamModule` does: one flat parameter
  vector, split in `net.parameters()` order (per block conv weight, conv bias, norm weight,
  norm bias; then classifier weight and bias). `forward(flat, x)` is that function.
- The experts: MTT `buffer.py` (a fresh net, `torch.optim.SGD(lr=lr_teacher, momentum=0,
  weight_decay=0)`, `nn.CrossEntropyLoss()`, one timestamp `[p.detach().cpu() for p in
  net.parameters()]` before training and after every epoch), without its DSA augmentation
  (only the trajectory's values matter; the fixtures store them).
- The inner schedule: MTT `distill.py` (`indices_chunks`: a fresh `torch.randperm` split by
  batch_syn whenever the list is empty, `.pop()` takes the LAST chunk); `inner_indices`
  replays it and returns the indices each step used, which the fixtures store.

Everything is float64 (`torch.set_default_dtype(torch.float64)` on import).
"""

from __future__ import annotations

import os

import numpy as np
import torch
import torch.nn.functional as F

torch.set_default_dtype(torch.float64)

OUT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests",
                       "fixtures", "reference")

# The tiny problem every fixture uses: jaxdd model `convnet_d2_w4` on 8x8 RGB images.
CHANNEL, IM, WIDTH, DEPTH, NUM_CLASSES = 3, 8, 4, 2, 3
MODEL = f"convnet_d{DEPTH}_w{WIDTH}"


def param_shapes() -> list[tuple[str, tuple[int, ...]]]:
    """`net.parameters()` order and shapes of the reference ConvNet (instance norm)."""
    shapes, cin, h = [], CHANNEL, IM
    for d in range(DEPTH):
        shapes += [(f"features.conv{d}.weight", (WIDTH, cin, 3, 3)), (f"features.conv{d}.bias", (WIDTH,)),
                   (f"features.norm{d}.weight", (WIDTH,)), (f"features.norm{d}.bias", (WIDTH,))]
        pad = 3 if CHANNEL == 1 and d == 0 else 1
        cin, h = WIDTH, (h + 2 * pad - 2) // 2
    return shapes + [("classifier.weight", (NUM_CLASSES, WIDTH * h * h)), ("classifier.bias", (NUM_CLASSES,))]


def num_params() -> int:
    return sum(int(np.prod(s)) for _, s in param_shapes())


def forward(flat: torch.Tensor, x_NCHW: torch.Tensor) -> torch.Tensor:
    """ConvNet(x) with the parameters taken as views of `flat` (ReparamModule's flat_param)."""
    views, i = [], 0
    for _, s in param_shapes():
        n = int(np.prod(s))
        views.append(flat[i:i + n].view(s))
        i += n
    out = x_NCHW
    for d in range(DEPTH):
        w, b, g, beta = views[4 * d:4 * d + 4]
        out = F.conv2d(out, w, b, padding=3 if CHANNEL == 1 and d == 0 else 1)
        out = F.group_norm(out, WIDTH, g, beta, eps=1e-5)     # GroupNorm(C, C) = instancenorm
        out = F.relu(out)
        out = F.avg_pool2d(out, kernel_size=2, stride=2)
    out = out.view(out.size(0), -1)
    return F.linear(out, views[-2], views[-1])


def init_flat(gen: torch.Generator) -> torch.Tensor:
    """A fresh net's parameters: PyTorch's default Conv2d/Linear init (kaiming_uniform a=sqrt(5)
    weights, U(+-1/sqrt(fan_in)) biases), GroupNorm weight 1 and bias 0, flattened in order."""
    parts, fan_in = [], 1
    for name, s in param_shapes():
        if ".norm" in name:
            parts.append(torch.ones(s) if name.endswith("weight") else torch.zeros(s))
            continue
        if name.endswith("weight"):
            fan_in = int(np.prod(s[1:]))  # the bias below uses its weight's fan_in
        bound = 1.0 / np.sqrt(fan_in)     # kaiming_uniform(a=sqrt(5)) has the same bound
        parts.append((torch.rand(s, generator=gen) * 2 - 1) * bound)
    return torch.cat([p.reshape(-1) for p in parts])


def train_expert(gen: torch.Generator, x_NCHW: torch.Tensor, y: torch.Tensor, epochs: int,
                 lr: float, batch: int) -> list[torch.Tensor]:
    """buffer.py's trajectory: timestamps (flat vectors) at init and after every epoch."""
    flat = init_flat(gen).requires_grad_(True)
    traj = [flat.detach().clone()]
    for _ in range(epochs):
        perm = torch.randperm(len(x_NCHW), generator=gen)
        for i in range(0, len(perm), batch):
            idx = perm[i:i + batch]
            loss = F.cross_entropy(forward(flat, x_NCHW[idx]), y[idx])
            (g,) = torch.autograd.grad(loss, flat)
            with torch.no_grad():
                flat -= lr * g
        traj.append(flat.detach().clone())
    return traj


def inner_indices(gen: torch.Generator, num_syn: int, syn_steps: int, batch_syn: int) -> list[torch.Tensor]:
    """distill.py's minibatch of each inner step (fresh randperm split by batch_syn, pop())."""
    chunks, out = [], []
    for _ in range(syn_steps):
        if not chunks:
            chunks = list(torch.split(torch.randperm(num_syn, generator=gen), batch_syn))
        out.append(chunks.pop())
    return out


def real_data(gen: torch.Generator, per_class: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Stand-in 'real' training set: class-dependent means plus noise (so experts learn)."""
    means = torch.randn(NUM_CLASSES, CHANNEL, IM, IM, generator=gen)
    y = torch.arange(NUM_CLASSES).repeat_interleave(per_class)
    x = means[y] + 0.8 * torch.randn(len(y), CHANNEL, IM, IM, generator=gen)
    return x, y



def expert_and_real_init(gen: torch.Generator, ipc: int, start: int, expert_epochs: int,
                         lr_teacher: float):
    """The tiny real data, one expert trajectory, pix_init='real' (ipc random real images per
    class, in class order) and the window's start/target parameters, drawn from `gen`."""
    x_real, y_real = real_data(gen)
    traj = train_expert(gen, x_real, y_real, epochs=start + expert_epochs, lr=lr_teacher, batch=10)
    pick = torch.cat([torch.nonzero(y_real == c).view(-1)[torch.randperm(10, generator=gen)[:ipc]]
                      for c in range(NUM_CLASSES)])
    label_syn = torch.arange(NUM_CLASSES).repeat_interleave(ipc)
    return x_real, y_real, traj, x_real[pick].clone(), label_syn, traj[start], traj[start + expert_epochs]


def window_arrays(x_real, y_real, traj, image_syn0, label_syn, start: int, expert_epochs: int,
                  syn_steps: int, lr_teacher: float, lr_img: float, lr_lr: float) -> dict:
    """The inputs every trajectory-matching fixture stores (momentum 0.5: distill.py's)."""
    return dict(x_real=x_real, y_real=y_real, traj=torch.stack(traj), start=start,
                expert_epochs=expert_epochs, syn_steps=syn_steps, x_syn=image_syn0, y_syn=label_syn,
                syn_lr=lr_teacher, lr_img=lr_img, lr_lr=lr_lr, momentum=0.5)

def save(name: str, arrays: dict) -> str:
    os.makedirs(OUT_DIR, exist_ok=True)
    path = os.path.normpath(os.path.join(OUT_DIR, f"{name}.npz"))
    out = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
           for k, v in arrays.items()}
    np.savez_compressed(path, **out)
    return path


def hard_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """MTT/TESLA `criterion = nn.CrossEntropyLoss()` (mean over the batch; class ids or, in
    TESLA's teacher_label mode, probabilities as targets)."""
    return F.cross_entropy(logits, y)


def soft_ce(inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """DATM `SoftCrossEntropy`: sum(-log_softmax(inputs) * softmax(target)) / batch."""
    input_log_likelihood = -F.log_softmax(inputs, dim=1)
    target_log_likelihood = F.softmax(target, dim=1)
    return torch.sum(torch.mul(input_log_likelihood, target_log_likelihood)) / inputs.shape[0]


def mtt_grand_loss(image_syn: torch.Tensor, y_hat: torch.Tensor, syn_lr: torch.Tensor,
                   starting: torch.Tensor, target: torch.Tensor, idx_list: list[torch.Tensor],
                   criterion) -> torch.Tensor:
    """MTT distill.py's outer loss (DATM distill/DATM.py the same with its criterion):
    student_params from the expert's start, one `create_graph=True` SGD step per index chunk
    with `syn_lr`, then mse_loss(reduction='sum') of student and start vs target, both divided
    by num_params, and their ratio. Differentiable in image_syn, y_hat and syn_lr."""
    student_params = [starting.clone().requires_grad_(True)]
    for these_indices in idx_list:
        x = image_syn[these_indices]
        this_y = y_hat[these_indices]
        x = forward(student_params[-1], x)
        ce_loss = criterion(x, this_y)
        grad = torch.autograd.grad(ce_loss, student_params[-1], create_graph=True)[0]
        student_params.append(student_params[-1] - syn_lr * grad)
    n = num_params()
    param_loss = F.mse_loss(student_params[-1], target, reduction="sum") / n
    param_dist = F.mse_loss(starting, target, reduction="sum") / n
    return param_loss / param_dist
