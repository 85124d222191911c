"""Reference fixture for G-VBSM's recover loss (one teacher, two iterations), PyTorch float64.

Written as the reference code computes it (shaoshitong/G_VBSM_Dataset_Condensation,
Branch_CIFAR_100/recover/, read for the operations, no code copied):
  * `utils.py` `BNFeatureHook.hook_fn`: mean over (N, H, W), var(unbiased=False) of the BN
    input; moving averages dd <- a dd + (1 - a) stat under no_grad, starting from the float
    0. (so `isinstance(self.dd_var, int)` is false and the first update already averages
    with 0); r = ||running_var - (dd_var + var - var.detach())|| + ||running_mean - (...)||.
  * `utils.py` `ConvFeatureHook`: `pre_hook_fn` accumulates the targets running_* += stat *
    bs / data_number over the real data; `post_hook_fn` (recover) first drops the layer with
    `random.random() > 1 - drop_rate` (r = 0, no average update), else channel mean / biased
    var over (N, H, W) of the conv *input*, the map `F.interpolate(bilinear)` to
    `div_four_mul` (next multiple of 4) sizes, `einops` "b c (u h) (v w) -> (u v) (b c h w)"
    with h = w = 4, cell mean / biased var; the same moving averages; r = ||t_var - (dd_var
    + v - v.detach())|| + ||t_mean - (...)|| + ||t_pmean - (...)|| + ||t_pvar - (...)||.
  * `data_synthesis_with_svd_with_db_with_all_statistic.py`, `main_worker`: hooks on every
    BatchNorm2d and Conv2d in `named_modules()` order; per iteration inputs_jit =
    Compose(RandomCrop(32, padding=4), RandomHorizontalFlip())(inputs) (one crop, one flip
    for the batch tensor), then torch.roll by (randint(0, jitter), randint(0, jitter));
    loss_ce = CrossEntropyLoss; rescale = [first_multiplier] + [1] * (L - 1) over that hook
    list; loss_r_feature = sum(r_l * rescale_l); diversity: AdaptiveAvgPool2d((32, 32)) of
    inputs_jit flattened, for each class the Gram F F^T, l = torch.linalg.eigvals(.).real
    .float() (float32, as there), KLDivLoss(reduction="sum")(l.log_softmax(-1),
    (l / tau).softmax(-1).detach()); loss = loss_ce + nuc_norm * nuc + r_loss * loss_r_feature.

Tiny setup: one teacher (depth-3 width-4 BN ConvNet, sm_common.py; conv inputs 10x10 ->
resized to 12x12 (9 cells), 5x5 -> 8x8 (4 cells), 2x2 -> 4x4 (1 cell)), 3 classes x 2
images (class-major), 10 x 10 inputs scaled so the Gram spectra are not saturated. The
targets are `pre_hook_fn`'s sums over one real batch (data_number = its size); the BN
averages then start at 0. as in a run whose targets are loaded from disk (in a run that
computes them, the BN hooks, registered first, also average the target pass). Two
consecutive iterations on given images x1, x2 with their own crop / flip / roll parameters
and drop draws (saved; drawn from a seeded random.Random, the reference uses the global
`random` module), the averages carried from the first to the second. Saved: loss, CE, BN,
conv and diversity parts, d loss / d x of each iteration (and the diversity part's share
of it), the averages after each.

Run by hand (needs torch):
  PYTHONPATH=. /work/venv-torch/bin/python benchmarks/reference/gvbsm.py
writes tests/fixtures/reference/gvbsm.npz; tests/test_reference_sm.py compares jaxdd with it.
"""

from __future__ import annotations

import os
import random
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from sm_common import make_teacher, teacher_arrays  # noqa: E402

OUT = os.path.join(os.path.dirname(__file__), "..", "..", "tests", "fixtures", "reference",
                   "gvbsm.npz")
R_LOSS, FIRST, MOMENTUM, DROP, NUC, TAU, JITTER, PAD = 0.05, 10.0, 0.8, 0.4, 1.0, 4.0, 4, 4


def div_four_mul(v):
    v = int(v)
    return v // 4 * 4 + int(v % 4 > 0) * 4


def cell_stats(x):
    """Resize to multiples of 4 (bilinear), cells of 4x4 row-major, stats over (b c h w)."""
    h, w = div_four_mul(x.shape[2]), div_four_mul(x.shape[3])
    x = F.interpolate(x, [h, w], mode="bilinear")
    b, c = x.shape[:2]
    cells = x.reshape(b, c, h // 4, 4, w // 4, 4).permute(2, 4, 0, 1, 3, 5)
    cells = cells.reshape((h // 4) * (w // 4), -1)
    return cells.mean([1]), cells.var([1], unbiased=False)


def channel_stats(x):
    c = x.shape[1]
    var = x.permute(1, 0, 2, 3).contiguous().reshape([c, -1]).var(1, unbiased=False)
    return x.mean([0, 2, 3]), var


class BNHook:
    def __init__(self, module):
        self.hook = module.register_forward_hook(self.fn)
        self.dd_var, self.dd_mean = 0.0, 0.0

    def fn(self, module, inp, out):
        mean, var = channel_stats(inp[0])
        with torch.no_grad():
            if isinstance(self.dd_var, int):  # never true: the averages start at the float 0.
                self.dd_var, self.dd_mean = var, mean
            else:
                self.dd_var = MOMENTUM * self.dd_var + (1 - MOMENTUM) * var
                self.dd_mean = MOMENTUM * self.dd_mean + (1 - MOMENTUM) * mean
        self.r_feature = (
            torch.norm(module.running_var.data - (self.dd_var + var - var.detach()), 2)
            + torch.norm(module.running_mean.data - (self.dd_mean + mean - mean.detach()), 2))


class ConvHook:
    def __init__(self, module, data_number):
        self.hook = module.register_forward_hook(self.fn)
        self.mode, self.data_number = "pre", data_number
        self.t = [0.0, 0.0, 0.0, 0.0]  # running_dd_var, running_dd_mean, patch_var, patch_mean
        self.dd = [0.0, 0.0, 0.0, 0.0]
        self.draws, self.rng = [], None

    def fn(self, module, inp, out):
        x = inp[0]
        if self.mode == "pre":  # pre_hook_fn (no_grad): the dataset targets
            with torch.no_grad():
                mean, var = channel_stats(x)
                pm, pv = cell_stats(x)
                bs = x.shape[0]
                for k, s in enumerate((var, mean, pv, pm)):
                    self.t[k] = self.t[k] + s * bs / self.data_number
            return
        u = self.rng.random()
        self.draws.append(u)
        if u > 1.0 - DROP:
            self.r_feature = torch.zeros(1)
            return
        mean, var = channel_stats(x)
        pm, pv = cell_stats(x)
        cur = (var, mean, pv, pm)
        with torch.no_grad():
            self.dd = [MOMENTUM * d + (1 - MOMENTUM) * s for d, s in zip(self.dd, cur)]
        self.r_feature = sum(torch.norm(t - (d + s - s.detach()), 2)
                             for t, d, s in zip(self.t, self.dd, cur))


def augment(x, p):
    """RandomCrop(size, padding=PAD) at (i, j) + flip (p[2]) on the batch, then roll."""
    h, w = x.shape[2:]
    x = F.pad(x, (PAD, PAD, PAD, PAD))[:, :, p[0]:p[0] + h, p[1]:p[1] + w]
    if p[2]:
        x = torch.flip(x, dims=[3])
    return torch.roll(x, shifts=(int(p[3]), int(p[4])), dims=(2, 3))


def diversity(x_jit, y):
    f = nn.AdaptiveAvgPool2d((32, 32))(x_jit).reshape(x_jit.shape[0], -1)
    total = 0.0
    for c in sorted(set(y.tolist())):
        g = f[y == c] @ f[y == c].t()
        lam = torch.linalg.eigvals(g).real.float()
        total = total + nn.KLDivLoss(reduction="sum")(lam.log_softmax(dim=-1),
                                                       (lam / TAU).softmax(dim=-1).detach())
    return total


def main():
    torch.set_default_dtype(torch.float64)
    net = make_teacher(seed=2, depth=3)
    hooks = []
    for _, m in net.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            hooks.append(BNHook(m))
        elif isinstance(m, nn.Conv2d):
            hooks.append(ConvHook(m, data_number=6))
    convs = [h for h in hooks if isinstance(h, ConvHook)]
    torch.manual_seed(3)
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    x_real = torch.rand(6, 3, 10, 10) * 2 - 1
    with torch.no_grad():  # the targets pass (set_hook(pre=True)), one batch = the data set
        net(x_real)
    for h in convs:
        h.mode = "post"
    # The BN hooks also saw that pass (the reference registers them before its target loop,
    # so a run that computes the targets starts its BN averages from the last real
    # batches); a run with the targets loaded from disk (load_tag True, no such pass)
    # starts them at 0., which this fixture follows.
    for h in hooks:
        if isinstance(h, BNHook):
            h.dd_var, h.dd_mean = 0.0, 0.0
    # one drop stream for the run; the seed is fixed so each iteration drops some layers
    # and keeps others (reported)
    rng = random.Random(7)
    for h in convs:
        h.rng = rng
    out = dict(teacher_arrays(net), x_real_NCHW=x_real.numpy(), y=y.numpy())
    for k, name in enumerate(("var", "mean", "patch_var", "patch_mean")):
        for i, h in enumerate(convs):
            out[f"target{i}_{name}"] = h.t[k].numpy()
    prng = random.Random(11)
    for it in (1, 2):
        x = (0.05 * torch.randn(6, 3, 10, 10)).requires_grad_(True)
        p = (int(torch.randint(0, 2 * PAD + 1, (1,))), int(torch.randint(0, 2 * PAD + 1, (1,))),
             int(torch.rand(1) < 0.5), prng.randint(0, JITTER), prng.randint(0, JITTER))
        x_jit = augment(x, p)
        logits = net(x_jit)
        ce = nn.CrossEntropyLoss()(logits, y)
        rescale = [FIRST] + [1.0] * (len(hooks) - 1)
        terms = [h.r_feature.sum() * rescale[i] for i, h in enumerate(hooks)]
        bn = sum(t for t, h in zip(terms, hooks) if isinstance(h, BNHook))
        conv = sum(t for t, h in zip(terms, hooks) if isinstance(h, ConvHook))
        nuc = diversity(x_jit, y)
        loss = ce + NUC * nuc + R_LOSS * sum(terms)
        # d loss / d x, and separately the diversity part's share (its eigenvalues are
        # float32 in the reference, so that share carries float32 rounding)
        g_div, = torch.autograd.grad(NUC * nuc, x, retain_graph=True)
        loss.backward()
        keep = [u <= 1.0 - DROP for u in (h.draws[-1] for h in convs)]
        out.update({f"it{it}_x_NCHW": x.detach().numpy(), f"it{it}_aug": np.array(p),
                    f"it{it}_keep": np.array(keep), f"it{it}_loss": loss.detach().numpy(),
                    f"it{it}_ce": ce.detach().numpy(), f"it{it}_bn": bn.detach().numpy(),
                    f"it{it}_conv": conv.detach().numpy(), f"it{it}_div": nuc.detach().numpy(),
                    f"it{it}_grad_NCHW": x.grad.numpy(),
                    f"it{it}_grad_div_NCHW": g_div.numpy()})
        for i, h in enumerate(b for b in hooks if isinstance(b, BNHook)):
            out[f"it{it}_bn{i}_ema_mean"] = np.asarray(h.dd_mean)
            out[f"it{it}_bn{i}_ema_var"] = np.asarray(h.dd_var)
        for i, h in enumerate(convs):
            for k, name in enumerate(("var", "mean", "patch_var", "patch_mean")):
                out[f"it{it}_conv{i}_ema_{name}"] = np.asarray(h.dd[k])
        print(f"iteration {it}: loss {loss.item():.6f} ce {ce.item():.6f} bn {bn.item():.6f} "
              f"conv {conv.item():.6f} div {nuc.item():.3e} keep {keep} aug {p}")
    out["hp"] = np.array([R_LOSS, FIRST, MOMENTUM, NUC, TAU, PAD], np.float64)
    np.savez_compressed(OUT, **out)
    print(f"wrote {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
