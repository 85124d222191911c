#!/usr/bin/env python
"""Every stage of jaxdd against a PyTorch implementation written as the field's reference code.

Stages (same model, data, budget and initial weights on both sides; images are Gaussian
noise of CIFAR-10's shape, 10 classes: a stage's cost does not depend on pixel content):

  dc            DC outer step (ConvNet-D3): fresh net, gradient matching per class
                (distance_wb), SGD step on the images, then `inner_loop` epochs of SGD on
                the synthetic set (ipc 10: the reference's 10 x 50 loops).
  dsa           the same step with DSA: jaxdd only (no PyTorch DiffAugment here; torch null).
  dm            DM step: fresh net, class-mean embeddings of real vs synthetic, SGD step.
  datadam       DataDAM step: attention maps of the first blocks + embeddings, SGD step.
  expert_epoch  one epoch of an MTT expert (plain SGD 0.01, batch 256) on --train-images.
  experts_K     the same epoch for --experts K experts: jaxdd as `jaxdd buffer` trains a group
                (`population.train.group_step`, one compiled program; --group-mode, default
                the buffer's own `ExpertConfig.group_mode`, "unroll"; "vmap" batches the
                experts' kernels), PyTorch one after another (as the reference's buffer.py loop).
  teacher_epoch one epoch of the statistics teacher: ResNet-18 (CIFAR stem, BN), SGD 0.1,
                momentum 0.9, wd 5e-4, cosine over 200 epochs.
  recover       one SRe2L recover step: ResNet-18 BN teacher, 100 images, CE + BN-statistic
                loss (first BN x10), Adam(0.25, betas 0.5/0.9), circular jitter.
  relabel_epoch one KD epoch of a ResNet-18 student on the 100 images, online teacher logits,
                KL at T = 20, AdamW 1e-3 (no decay on 1-D parameters), batch 50.
  eval_seeds    evaluation: --seeds ConvNets trained --eval-epochs epochs on the 100-image set
                (SGD momentum 0.9, wd 5e-4, x0.1 at half) + test accuracy; jaxdd as
                `train_seeds` runs them (--seed-mode, default its "auto": on CPU "rounds",
                one seed's compiled program called per seed; "vmap", one program of all),
                PyTorch one after another (evaluate_synset's loop).
The MTT outer step is benchmarks/tm_vs_torch.py (its helpers are reused here).

No augmentation in any compared stage (random draws cannot be matched across libraries),
except `recover`'s jitter and the DC inner loop's shuffling, which are timed with each
library's own draws and checked with jitter off (a full-batch epoch does not depend on order).

Equality first: each stage runs once in float64 on a tiny input in both libraries (same
weights, same minibatch order: jaxdd's permutations are recomputed from its keys and handed to
PyTorch) and the outputs (new images, or logits of the trained networks on a probe batch) must
agree to a relative L2 error <= 1e-9 (ConvNet stages; they agree to ~1e-15). ResNet stages:
<= 1e-5, because jaxdd's ResNet casts its logits to float32 (`ResNet.__call__`), so even under
float64 their losses round at float32 (they agree to ~1e-7); DC: <= 1e-6, because its step
draws the network with `model.init` (float32 parameters), so the parameter gradients it matches
are float32 even under float64 (they agree to ~1e-8); relabel_epoch: <= 5e-3 (measured 9.8e-4),
the weakest check: Adam's first step moves every parameter by ~+-lr whatever the gradient's
size, so the float32 rounding of the ResNet's logits becomes O(lr) parameter differences where
a gradient component is tiny. A mismatch exits non-zero.

Timing: --warmup untimed runs, then --repeats runs alternating jaxdd and PyTorch, medians.
jaxdd is jitted (compile reported apart); FLOPs of the compiled jaxdd stage come from XLA's
cost analysis (`jax.jit(f).lower(...).compile().cost_analysis()["flops"]`), and
achieved = flops / jaxdd seconds. XLA counts a while loop's body once: the count is taken on a
loop-free form of the same math (`count_flops`: classes vmapped, one block of images in
`loop_safe_conv`), a training stage's count is scaled by its loop's trip count (an estimate,
flagged; the minibatch step dominates), and DC, whose inner training loop does not dominate its
step, reports none (flops_xla, the raw count, is a lower bound). `--recount` redoes the counts
of a kept result file without timing anything. The same FLOP count is used for PyTorch's achieved rate (the
same math). Peak fp32 of the CPU = cores x clock x FLOPs/cycle, with
  cores  = usable cores (sched_getaffinity; 2 here, 1 thread per core per lscpu),
  clock  = the nominal "cpu MHz" of /proc/cpuinfo (2599.998 MHz here; turbo ignored),
  FLOPs/cycle = 2 FMA units x 16 fp32 lanes x 2 (multiply + add) = 64 with AVX-512 (flag
           avx512f), 2 x 8 x 2 = 32 with AVX2 + FMA only.
Here: 2 x 2.6e9 x 64 = 332.8 GFLOP/s. The FMA-unit count is not visible in a VM (Xeon Silver
and some Gold SKUs have one 512-bit FMA unit: then the peak is half), so this is an upper bound.
On CUDA, no peak is computed (null).

Usage:
  python benchmarks/stages_vs_torch.py --tiny                    # equality checks + a smoke timing
  python benchmarks/stages_vs_torch.py                           # full run: on an idle machine
  python benchmarks/stages_vs_torch.py --stages dm,datadam --repeats 5
Prints one JSON line and writes it to --out (default benchmarks/results/stages_vs_torch_<device>.json;
--tiny: stages_vs_torch_tiny.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time

STAGES = ("dc", "dsa", "dm", "datadam", "expert_epoch", "experts_K", "teacher_epoch", "recover",
          "relabel_epoch", "eval_seeds")
RESNET_STAGES = ("teacher_epoch", "recover", "relabel_epoch")
TOL64 = {"convnet": 1e-9, "dc": 1e-6, "resnet": 1e-5, "resnet_adam": 5e-3}  # see the docstring


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true",
                   help="correctness smoke run: tiny shapes, 1 repeat (times are meaningless)")
    p.add_argument("--stages", default=",".join(STAGES), help="comma list of " + ",".join(STAGES))
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--width", type=int, default=128, help="ConvNet-D3 width")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--train-images", type=int, default=5000, help="images of an expert/teacher epoch")
    p.add_argument("--experts", type=int, default=4, help="K of experts_K")
    p.add_argument("--group-mode", choices=("unroll", "vmap"), default=None,
                   help="how experts_K's jaxdd program runs its experts (default: the buffer's, "
                        "ExpertConfig.group_mode)")
    p.add_argument("--seeds", type=int, default=5, help="evaluation seeds")
    p.add_argument("--seed-mode", choices=("rounds", "vmap"), default=None,
                   help="how eval_seeds' jaxdd side runs its seeds (default: train_seeds' own "
                        "choice for the device)")
    p.add_argument("--eval-epochs", type=int, default=300, help="epochs of each evaluation network")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--no-check64", dest="check64", action="store_false", help="skip the float64 checks")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: usable cores)")
    p.add_argument("--out", default=None)
    p.add_argument("--resume", action="store_true",
                   help="keep the stages already in --out (an interrupted run's) and run the rest")
    p.add_argument("--recount", action="store_true",
                   help="recount the FLOPs of the stages in --out and redo their FLOP/s and "
                        "fractions of peak from its kept times (no timing: safe on a busy machine)")
    args = p.parse_args(argv)
    args.stage_list = [s for s in args.stages.split(",") if s]
    for s in args.stage_list:
        if s not in STAGES:
            p.error(f"unknown stage {s!r}; use some of {','.join(STAGES)}")
    if args.tiny:
        args.repeats, args.warmup = 1, 0
    if args.out is None:
        tag = "tiny" if args.tiny else args.device
        args.out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                f"stages_vs_torch_{tag}.json")
    return args


ARGS = parse_args(None if __name__ == "__main__" else [])
os.environ.setdefault("JAX_PLATFORMS", "cpu" if ARGS.device == "cpu" else "cuda")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from _common import environment, one_conv_block, write  # noqa: E402
from tm_vs_torch import NUM_CLASSES, device_name, rel, torch_layout  # noqa: E402
from jaxdd.labels import relabel as jrelabel  # noqa: E402
from jaxdd.methods.datadam import DataDAMConfig, make_datadam  # noqa: E402
from jaxdd.methods.dc import DCConfig, make_dc  # noqa: E402
from jaxdd.methods.dm import DMConfig, make_dm  # noqa: E402
from jaxdd.methods import matching  # noqa: E402
from jaxdd.methods.matching import hard_labels  # noqa: E402
from jaxdd.methods.statistics.recover import RecoverConfig, make_recover  # noqa: E402
from jaxdd.models import Model, get_model  # noqa: E402
from jaxdd.models.convert import flax_to_torchvision  # noqa: E402
from jaxdd.models.layers import cpu_flags  # noqa: E402
from jaxdd.evaluate.core import resolve_seed_mode  # noqa: E402
from jaxdd.population.experts import ExpertConfig  # noqa: E402
from jaxdd.population.train import group_step, stack_members  # noqa: E402
from jaxdd.run.mesh import make_mesh  # noqa: E402
from jaxdd.train.loop import (TrainConfig, accuracy, steps_per_epoch, train_epochs,  # noqa: E402
                              train_init)

ARGS.group_mode = ARGS.group_mode or ExpertConfig().group_mode
ARGS.seed_mode = ARGS.seed_mode or resolve_seed_mode("auto", make_mesh())

K = NUM_CLASSES  # tm_vs_torch's torch_layout is written for 10 classes


@dataclasses.dataclass(frozen=True)
class Sizes:
    hw: int
    channels: int
    width: int
    ipc: int
    batch_real: int
    batch_real_dam: int
    train_images: int
    batch_train: int
    experts: int
    seeds: int
    eval_epochs: int
    test_images: int
    dc_loops: tuple[int, int]
    recover_images: int
    relabel_batch: int
    group_mode: str               # experts_K: "unroll" | "vmap" (--group-mode)
    seed_mode: str                # eval_seeds: "rounds" | "vmap" (--seed-mode)


def full_sizes(a) -> Sizes:
    return Sizes(32, 3, a.width, a.ipc, 256, 64, a.train_images, 256, a.experts, a.seeds,
                 a.eval_epochs, 2000, (10, 50) if a.ipc == 10 else (1, 1), 100, 50,
                 a.group_mode, a.seed_mode)


TINY = Sizes(8, 1, 4, 1, 3, 3, 12, 6, 2, 2, 3, 20, (2, 2), 8, 4,  # batches divide: see train_stage
             ARGS.group_mode, ARGS.seed_mode)


@dataclasses.dataclass
class Stage:
    """jstep(*jargs) is timed (jitted); jview(out) -> arrays compared with tview(tstep())."""

    jstep: object
    jargs: tuple
    jview: object
    tstep: object
    tview: object
    family: str = "convnet"
    note: str = ""
    # Trip count of the program's training loop (lax.scan over minibatches/epochs) whose body
    # dominates its FLOPs; None: the loop does not dominate (DC) or there is none to scale.
    trips: int | None = 1
    # eval_seeds: FLOPs = count(loop_part) x trips + count(once), both functions of jargs
    # written loop-free apart from the training loop (the timed step's test accuracy runs in
    # chunk and seed loops, which XLA would count once each). None: count jstep.
    loop_part: object = None
    once: object = None
    # When the timed jaxdd side is several compiled programs (eval_seeds under "rounds"):
    # jcompile() compiles them and returns a callable of jargs with jstep's outputs.
    jcompile: object = None


def compiled_step(st):
    """The timed jaxdd side of a stage, compiled: st.jcompile() or jstep's one program."""
    return st.jcompile() if st.jcompile else jax.jit(st.jstep).lower(*st.jargs).compile()


# ----------------------------------------------------------------------------------------------
# PyTorch networks, loaded with jaxdd's initial weights
# ----------------------------------------------------------------------------------------------


class TorchConvNetD3(torch.nn.Module):
    """The references' ConvNet (conv 3x3 -> instancenorm as GroupNorm(C, C) -> ReLU -> avgpool)."""

    def __init__(self, params, width, hw, channels, dtype, device):
        super().__init__()
        arrays = torch_layout(params, width)
        self.pad0 = 3 if hw == 28 else 1
        cin = channels
        self.convs, self.norms = torch.nn.ModuleList(), torch.nn.ModuleList()
        for d in range(3):
            conv = torch.nn.Conv2d(cin, width, 3, padding=self.pad0 if d == 0 else 1)
            conv.weight.data, conv.bias.data = (torch.as_tensor(np.array(a)) for a in arrays[4 * d:4 * d + 2])
            norm = torch.nn.GroupNorm(width, width, eps=1e-5)
            norm.weight.data, norm.bias.data = (torch.as_tensor(np.array(a)) for a in arrays[4 * d + 2:4 * d + 4])
            self.convs.append(conv)
            self.norms.append(norm)
            cin = width
        self.fc = torch.nn.Linear(arrays[12].shape[1], K)
        self.fc.weight.data, self.fc.bias.data = torch.as_tensor(arrays[12]), torch.as_tensor(arrays[13])
        self.to(device=device, dtype=dtype)

    def blocks_embed(self, x):
        blocks = []
        for conv, norm in zip(self.convs, self.norms):
            x = F.relu(norm(conv(x)))
            blocks.append(x)
            x = F.avg_pool2d(x, 2)
        return blocks, x.flatten(1)

    def embed(self, x):
        return self.blocks_embed(x)[1]

    def forward(self, x):
        return self.fc(self.embed(x))


def torch_resnet18(variables, model, channels, dtype, device):
    """torchvision's ResNet-18 with the CIFAR stem (3x3 conv1, no max-pool), jaxdd's weights."""
    import torchvision
    net = torchvision.models.resnet18(num_classes=K)
    net.conv1 = torch.nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
    net.maxpool = torch.nn.Identity()
    sd = {k: torch.as_tensor(np.array(v)) for k, v in flax_to_torchvision(variables, model).items()}
    missing, unexpected = net.load_state_dict(sd, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing), (missing, unexpected)
    return net.to(device=device, dtype=dtype)


def nchw(x, dtype, device):
    return torch.as_tensor(np.ascontiguousarray(np.asarray(x).transpose(0, 3, 1, 2))).to(device=device, dtype=dtype)


def to_nhwc(t):
    return t.detach().cpu().numpy().transpose(0, 2, 3, 1)


def convnet(sz):
    return get_model(f"convnet_d3_w{sz.width}", K, (sz.hw, sz.hw, sz.channels))


def cast(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, tree)


def images(key, n, sz, dtype):
    return jax.random.normal(key, (n, sz.hw, sz.hw, sz.channels), dtype)


# ----------------------------------------------------------------------------------------------
# Stages. Each builder returns a Stage for sizes `sz`, float dtype `jdt`/`tdt`, torch device.
# ----------------------------------------------------------------------------------------------


def matcher_stage(kind, sz, jdt, tdt, dev, seed=0):
    """DC / DSA / DM / DataDAM: one distiller step from its init state."""
    model = convnet(sz)
    k_x, k_real, k_init, k_step = jax.random.split(jax.random.key(seed), 4)
    x0 = images(k_x, K * sz.ipc, sz, jdt)
    y0 = hard_labels(K, sz.ipc)
    b = sz.batch_real_dam if kind == "datadam" else sz.batch_real
    x_real = jax.random.normal(k_real, (K, b, sz.hw, sz.hw, sz.channels), jdt)
    if kind in ("dc", "dsa"):
        cfg = DCConfig(dsa=kind == "dsa", outer_loop=sz.dc_loops[0], inner_loop=sz.dc_loops[1],
                       batch_real=b, batch_train=256, init="real")
        dist = make_dc(cfg, model, K)
        k_net = jax.random.split(k_step, 3)[0]
    else:
        cfg = (DMConfig(dsa_strategy="none") if kind == "dm"
               else DataDAMConfig(dsa_strategy="none"))
        dist = (make_dm if kind == "dm" else make_datadam)(cfg, model, K)
        k_net = jax.random.split(k_step)[0]
    state = dist.init(k_init, x0, y0)
    # the images and their optimiser in the run's dtype; DC's network stays as model.init
    # makes it (float32), as the step re-draws it in that dtype
    state = state._replace(syn=state.syn._replace(x_syn_NHWC=x0), opt_img=cast(state.opt_img, jdt))

    def jstep(state, x_real, key):
        return dist.step(state, x_real, key)[0]

    params = cast(model.init(k_net)["params"], jdt)
    tx0, treal = nchw(x0, tdt, dev), nchw(np.asarray(x_real).reshape(-1, *x_real.shape[2:]), tdt, dev)
    treal = treal.reshape(K, b, *treal.shape[1:])
    ipc = sz.ipc

    def tstep():
        net = TorchConvNetD3(params, sz.width, sz.hw, sz.channels, tdt, dev)
        x_syn = tx0.clone().requires_grad_(True)
        opt_img = torch.optim.SGD([x_syn], lr=cfg.lr_img, momentum=cfg.momentum_img)
        if kind in ("dc", "dsa"):
            loss = torch_dc_loss(net, treal, x_syn, ipc)
        elif kind == "dm":
            loss = sum(((net.embed(treal[c]).detach().mean(0) - net.embed(x_syn[c * ipc:(c + 1) * ipc]).mean(0)) ** 2).sum()
                       for c in range(K))
        else:
            loss = torch_datadam_loss(net, treal, x_syn, ipc, cfg)
        opt_img.zero_grad()
        loss.backward()
        opt_img.step()
        if kind in ("dc", "dsa") and sz.dc_loops[0] > 1:  # outer step 0 of outer_loop: train the net
            x_tr, y_tr = x_syn.detach(), torch.arange(K, device=dev).repeat_interleave(ipc)
            opt_net = torch.optim.SGD(net.parameters(), lr=cfg.lr_net)
            for _ in range(sz.dc_loops[1]):
                perm = torch.randperm(len(x_tr), device=dev)
                for i in range(0, len(x_tr), cfg.batch_train):
                    idx = perm[i:i + cfg.batch_train]
                    opt_net.zero_grad()
                    F.cross_entropy(net(x_tr[idx]), y_tr[idx]).backward()
                    opt_net.step()
        return x_syn, net

    # Compared: the new images. DC's inner-trained network is not: jaxdd keeps it in float32
    # (model.init's dtype) even under float64; the same training is checked by expert_epoch.
    jview = lambda st: [st.syn.x_syn_NHWC]
    tview = lambda out: [to_nhwc(out[0])]
    note = "DSA: jaxdd only (no PyTorch DiffAugment written)" if kind == "dsa" else ""
    return Stage(jstep, (state, x_real, k_step), jview, None if kind == "dsa" else tstep, tview,
                 family="dc" if kind in ("dc", "dsa") else "convnet", note=note,
                 trips=None if kind in ("dc", "dsa") else 1)


def torch_distance_wb(gr, gs):
    """DC eq. (10) as the reference's distance_wb: per output unit 1 - cos; 1-D tensors: 0."""
    if gr.dim() == 1:
        return torch.zeros((), dtype=gr.dtype, device=gr.device)
    a, b = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
    return torch.sum(1 - torch.sum(a * b, -1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6))


def torch_dc_loss(net, treal, x_syn, ipc):
    params = list(net.parameters())
    loss = 0.0
    for c in range(K):
        lab = torch.full((treal.shape[1],), c, device=treal.device)
        gw_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(treal[c]), lab), params)]
        lab_s = torch.full((ipc,), c, device=treal.device)
        gw_syn = torch.autograd.grad(F.cross_entropy(net(x_syn[c * ipc:(c + 1) * ipc]), lab_s), params,
                                     create_graph=True)
        loss = loss + sum(torch_distance_wb(r, s) for r, s in zip(gw_real, gw_syn))
    return loss


def torch_attention(f, power):
    return F.normalize(f.abs().pow(power).sum(1).flatten(1), dim=1)


def torch_datadam_loss(net, treal, x_syn, ipc, cfg):
    loss = 0.0
    for c in range(K):
        with torch.no_grad():
            br, er = net.blocks_embed(treal[c])
        bs, es = net.blocks_embed(x_syn[c * ipc:(c + 1) * ipc])
        att = sum(((torch_attention(r, cfg.power).mean(0) - torch_attention(s, cfg.power).mean(0)) ** 2).sum()
                  for r, s in zip(br[:-1], bs[:-1]))
        out = ((er.mean(0) - es.mean(0)) ** 2).sum()
        loss = loss + cfg.attention_weight * (att + cfg.task_balance * out)
    return loss


def epoch_order(state, n, bs):
    """jaxdd's minibatch indices of the state's next epoch (train_epochs' derivation)."""
    k_perm = jax.random.split(jax.random.fold_in(state.key, state.epoch))[0]
    perm = np.asarray(jax.random.permutation(k_perm, n))
    return [perm[i:i + bs] for i in range(0, n, bs)]


def torch_sgd_epoch(net, opt, x, y, order, sched=None):
    net.train()
    for idx in order:
        idx = torch.as_tensor(idx, device=x.device)
        opt.zero_grad()
        F.cross_entropy(net(x[idx]), y[idx]).backward()
        opt.step()
        if sched is not None:
            sched.step()


def train_stage(kind, sz, jdt, tdt, dev, seed=0):
    """expert_epoch / experts_K / teacher_epoch: one epoch of train_epochs from train_init."""
    resnet = kind == "teacher_epoch"
    model = get_model("resnet18", K, (sz.hw, sz.hw, sz.channels)) if resnet else convnet(sz)
    n, bs = sz.train_images, sz.batch_train
    # train_epochs pads a last partial batch with (masked) copies of image 0; they are out of
    # the loss but in BatchNorm's batch statistics, where torch's DataLoader has a smaller
    # batch: the check's batches divide the images (5000 / 256 does not: 136 padded images in
    # the last of 20 batches of the timed epoch, same cost as torch's within 1/20).
    if resnet:
        cfg = TrainConfig(epochs=200, batch_size=bs, lr=0.1, momentum=0.9, weight_decay=5e-4,
                          schedule="cosine", dsa="", image_chunks=1)
    else:
        cfg = TrainConfig(epochs=50, batch_size=bs, lr=0.01, momentum=0.0, weight_decay=0.0,
                          schedule="constant", dsa="")
    k_x, k_y, k_net = jax.random.split(jax.random.key(seed), 3)
    x = images(k_x, n, sz, jdt)
    y = jax.random.randint(k_y, (n,), 0, K)
    count = sz.experts if kind == "experts_K" else 1
    states = [cast(train_init(k, model, cfg, n), jdt) for k in jax.random.split(k_net, count)]
    orders = [epoch_order(s, n, bs) for s in states]
    if count == 1:
        jargs = (states[0], x, y)
        jstep = lambda s, x, y: train_epochs(s, model, cfg, x, y, 1).variables
    else:
        jargs = (stack_members(states), x, y)
        group = group_step(lambda s, x, y: train_epochs(s, model, cfg, x, y, 1),
                           make_mesh(devices=jax.devices()[:1]), sz.group_mode)
        jstep = lambda s, x, y: group(s, x, y).variables
    tx, ty = nchw(x, tdt, dev), torch.as_tensor(np.asarray(y), device=dev).long()
    total = cfg.epochs * steps_per_epoch(n, bs)

    def tstep():
        nets = []
        for s, order in zip(states, orders):
            if resnet:
                net = torch_resnet18(s.variables, model, sz.channels, tdt, dev)
                opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                      weight_decay=cfg.weight_decay)
                # jaxdd's schedule: cosine per step over all epochs (count = updates done)
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.5 * (1 + np.cos(np.pi * t / total)))
            else:
                net = TorchConvNetD3(s.variables["params"], sz.width, sz.hw, sz.channels, tdt, dev)
                opt, sched = torch.optim.SGD(net.parameters(), lr=cfg.lr), None
            torch_sgd_epoch(net, opt, tx, ty, order, sched)
            nets.append(net)
        return nets

    probe = images(jax.random.key(99), 4, sz, jdt)
    tprobe = nchw(probe, tdt, dev)
    if resnet:  # train-mode logits: independent of the running statistics (flax keeps the
        # biased variance there, torch the unbiased one)
        jview = lambda v: [model.apply_train(v, probe)[0]]
        tview = lambda nets: [nets[0].train()(tprobe).detach().cpu().numpy()]
    elif count == 1:
        jview = lambda v: [model.apply(v, probe)]
        tview = lambda nets: [nets[0](tprobe).detach().cpu().numpy()]
    else:
        jview = lambda v: [jax.vmap(lambda vi: model.apply(vi, probe))(v)]
        tview = lambda nets: [np.stack([n_(tprobe).detach().cpu().numpy() for n_ in nets])]
    return Stage(jstep, jargs, jview, tstep, tview, family="resnet" if resnet else "convnet",
                 trips=steps_per_epoch(n, bs))


def teacher_setup(sz, jdt, seed):
    model = get_model("resnet18", K, (sz.hw, sz.hw, sz.channels))
    k_t, k_bn = jax.random.split(jax.random.key(seed))
    variables = cast(model.init(k_t), jdt)
    # A trained teacher's BN statistics are not 0/1: draw them (positive variances).
    leaves, tdef = jax.tree.flatten(variables["batch_stats"])
    ks = jax.random.split(k_bn, len(leaves))
    stats = [0.1 * jax.random.normal(k, a.shape, jdt) if i % 2 == 0 else jnp.exp(0.3 * jax.random.normal(k, a.shape, jdt))
             for i, (k, a) in enumerate(zip(ks, leaves))]
    path_names = [str(p) for p, _ in jax.tree_util.tree_flatten_with_path(variables["batch_stats"])[0]]
    assert all(("mean" in n) == (i % 2 == 0) for i, n in enumerate(path_names)), path_names
    return model, {**variables, "batch_stats": jax.tree.unflatten(tdef, stats)}


def recover_stage(sz, jdt, tdt, dev, seed=0, jitter=(0, 4)):
    model, variables = teacher_setup(sz, jdt, seed)
    cfg = RecoverConfig(jitter=jitter, iterations=1000)
    dist = make_recover(cfg, model, variables)
    n = sz.recover_images
    y = jnp.arange(n, dtype=jnp.int32) % K
    state = dist.init(jax.random.key(seed + 1), jnp.zeros((n, sz.hw, sz.hw, sz.channels)), y)
    state = cast(state, jdt)
    key = jax.random.key(seed + 2)
    jstep = lambda st, key: dist.step(st, None, key)[0].syn.x_syn_NHWC
    teacher = torch_resnet18(variables, model, sz.channels, tdt, dev).eval()
    bns = [m for m in teacher.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    feats = []
    for m in bns:  # SRe2L's BNFeatureHook: statistics of every BN input
        m.register_forward_hook(lambda mod, inp, out: feats.append(
            (mod, inp[0].mean([0, 2, 3]), inp[0].permute(1, 0, 2, 3).reshape(inp[0].shape[1], -1).var(1, unbiased=False))))
    tx0, ty = nchw(state.syn.x_syn_NHWC, tdt, dev), torch.as_tensor(np.asarray(y), device=dev).long()

    def tstep():
        x = tx0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=cfg.lr, betas=(cfg.adam_b1, cfg.adam_b2), eps=cfg.adam_eps)
        dy, dx = (int(v) for v in torch.randint(jitter[0], jitter[1] + 1, (2,)))
        feats.clear()
        out = teacher(torch.roll(x, shifts=(dy, dx), dims=(2, 3)))
        r_bn = sum((cfg.first_bn_multiplier if i == 0 else 1.0)
                   * (torch.norm(m.running_var - v, 2) + torch.norm(m.running_mean - mu, 2))
                   for i, (m, mu, v) in enumerate(feats))
        loss = F.cross_entropy(out, ty) + cfg.r_bn * r_bn
        opt.zero_grad()
        loss.backward()
        opt.step()
        return x

    return Stage(jstep, (state, key), lambda x: [x], tstep, lambda x: [to_nhwc(x)], family="resnet")


def relabel_stage(sz, jdt, tdt, dev, seed=0):
    model, tvars = teacher_setup(sz, jdt, seed)
    n, bs = sz.recover_images, sz.relabel_batch
    rcfg = jrelabel.RelabelConfig(crop_min_scale=1.0, flip=False, cutmix_alpha=0.0, label_dtype="float32")
    cfg = TrainConfig(epochs=1, batch_size=bs, lr=1e-3, weight_decay=0.01, schedule="cosine",
                      optimizer="adamw", dsa="", image_chunks=1)
    x = images(jax.random.key(seed + 3), n, sz, jdt)
    key = jax.random.key(seed + 4)
    student_init = cast(model.init(jax.random.fold_in(key, 0)), jdt)
    teacher_fn = lambda xb: model.apply(tvars, xb)
    jstep = lambda x, key, v0: jrelabel.train_student(key, model, cfg, rcfg, x, teacher_fn=teacher_fn,
                                                      init_variables=v0)
    aug_key = jax.random.fold_in(key, 1)
    order = [np.asarray(jrelabel.aug_params(aug_key, 0, s, n, bs, (sz.hw, sz.hw), rcfg).idx_B)
             for s in range(steps_per_epoch(n, bs))]
    teacher = torch_resnet18(tvars, model, sz.channels, tdt, dev).eval()
    tx = nchw(x, tdt, dev)
    T = rcfg.temperature

    def tstep():
        student = torch_resnet18(student_init, model, sz.channels, tdt, dev).train()
        decay = [p for p in student.parameters() if p.dim() > 1]
        no_decay = [p for p in student.parameters() if p.dim() <= 1]
        opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
        for idx in order:
            xb = tx[torch.as_tensor(idx, device=dev)]
            with torch.no_grad():
                t = teacher(xb)
            s = student(xb)
            loss = F.kl_div(F.log_softmax(s / T, 1), F.softmax(t / T, 1), reduction="batchmean")
            opt.zero_grad()
            loss.backward()
            opt.step()
        return student

    probe = images(jax.random.key(99), 4, sz, jdt)
    tprobe = nchw(probe, tdt, dev)
    return Stage(jstep, (x, key, student_init), lambda v: [model.apply_train(v, probe)[0]], tstep,
                 lambda s: [s.train()(tprobe).detach().cpu().numpy()], family="resnet_adam",
                 trips=steps_per_epoch(n, bs))


def eval_stage(sz, jdt, tdt, dev, seed=0):
    model = convnet(sz)
    cfg = TrainConfig(epochs=sz.eval_epochs, batch_size=256, lr=0.01, momentum=0.9, weight_decay=5e-4,
                      schedule="step", dsa="")
    n = K * sz.ipc
    x = images(jax.random.key(seed), n, sz, jdt)
    y = hard_labels(K, sz.ipc)
    x_test = images(jax.random.key(seed + 1), sz.test_images, sz, jdt)
    y_test = jax.random.randint(jax.random.key(seed + 2), (sz.test_images,), 0, K)
    keys = jax.random.split(jax.random.key(seed + 3), sz.seeds)

    def one(k, x, y, x_test, y_test):  # = train_network, the initial state in the images' dtype
        s = cast(train_init(k, model, cfg, n), x.dtype)
        v = train_epochs(s, model, cfg, x, y, cfg.epochs).variables
        return v, accuracy(model, v, x_test, y_test)

    def jstep(keys, x, y, x_test, y_test):   # seed_mode "vmap" (and the FLOP count)
        return jax.vmap(one, in_axes=(0, None, None, None, None))(keys, x, y, x_test, y_test)

    def rounds():   # seed_mode "rounds" on one device: one seed's program, called per seed
        c = jax.jit(one).lower(keys[0], x, y, x_test, y_test).compile()
        return lambda keys, *data: jax.tree.map(lambda *o: jnp.stack(o),
                                                *[c(k, *data) for k in keys])

    inits = [cast(train_init(k, model, cfg, n).variables["params"], jdt) for k in keys]
    tx, ty = nchw(x, tdt, dev), torch.as_tensor(np.asarray(y), device=dev).long()
    txt, tyt = nchw(x_test, tdt, dev), torch.as_tensor(np.asarray(y_test), device=dev).long()
    spe = steps_per_epoch(n, cfg.batch_size)
    total = cfg.epochs * spe

    def tstep():  # evaluate_synset's loop, one seed after another
        nets, accs = [], []
        for p in inits:
            net = TorchConvNetD3(p, sz.width, sz.hw, sz.channels, tdt, dev)
            opt = torch.optim.SGD(net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
            # jaxdd's "step" schedule: x0.1 from update total // 2 on
            sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.1 if t >= total // 2 else 1.0)
            for _ in range(cfg.epochs):
                perm = torch.randperm(n, device=dev)
                torch_sgd_epoch(net, opt, tx, ty, [perm[i:i + cfg.batch_size] for i in range(0, n, cfg.batch_size)], sched)
            with torch.no_grad():
                accs.append(float((net(txt).argmax(1) == tyt).float().mean()))
            nets.append(net)
        return nets, accs

    probe = images(jax.random.key(99), 4, sz, jdt)
    tprobe = nchw(probe, tdt, dev)
    jview = lambda out: [jax.vmap(lambda v: model.apply(v, probe))(out[0]), out[1]]
    tview = lambda out: [np.stack([n_(tprobe).detach().cpu().numpy() for n_ in out[0]]), np.asarray(out[1])]
    def loop_part(keys, x, y, x_test, y_test):   # jstep without its test accuracy
        return jax.vmap(lambda k: train_epochs(cast(train_init(k, model, cfg, n), x.dtype), model,
                                               cfg, x, y, cfg.epochs).variables)(keys)

    def once(keys, x, y, x_test, y_test):        # the test forward passes, loop-free
        return jax.vmap(lambda k: model.apply(train_init(k, model, cfg, n).variables, x_test))(keys)

    return Stage(jstep, (keys, x, y, x_test, y_test), jview, tstep, tview,
                 note="one full batch per epoch (100 images < 256): the order does not matter",
                 trips=cfg.epochs * spe, loop_part=loop_part, once=once,
                 jcompile=rounds if sz.seed_mode == "rounds" else None)


def build(name, sz, jdt, tdt, dev, check=False):
    if name in ("dc", "dsa", "dm", "datadam"):
        return matcher_stage(name, sz, jdt, tdt, dev)
    if name in ("expert_epoch", "experts_K", "teacher_epoch"):
        return train_stage(name, sz, jdt, tdt, dev)
    if name == "recover":
        return recover_stage(sz, jdt, tdt, dev, jitter=(0, 0) if check else (0, 4))
    if name == "relabel_epoch":
        return relabel_stage(sz, jdt, tdt, dev)
    return eval_stage(sz, jdt, tdt, dev)


# ----------------------------------------------------------------------------------------------
# Check, time, report
# ----------------------------------------------------------------------------------------------


def check_float64(name, dev):
    """Both libraries in float64 on TINY shapes: outputs agree to TOL64[family]."""
    prev = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        st = build(name, TINY, jnp.float64, torch.float64, dev, check=True)
        if st.tstep is None:
            return {"skipped": st.note}
        jout = [np.asarray(a) for a in st.jview(compiled_step(st)(*st.jargs))]
        tout = st.tview(st.tstep())
    finally:
        jax.config.update("jax_enable_x64", prev)
    errs = [rel(a, b) for a, b in zip(jout, tout, strict=True)]
    tol = TOL64[st.family]
    res = {"max_rel_l2": max(errs), "tol": tol, "ok": max(errs) <= tol}
    if not res["ok"]:
        print(f"MISMATCH {name} in float64: rel errors {errs} > {tol}", file=sys.stderr)
        raise SystemExit(2)
    return res


def flops_of(compiled) -> float | None:
    ca = compiled.cost_analysis()
    if isinstance(ca, (list, tuple)):
        ca = ca[0] if ca else None
    f = (ca or {}).get("flops")
    return float(f) if f is not None and f > 0 else None


def cpu_peak(cores) -> dict:
    """cores x nominal clock x FLOPs/cycle (module docstring)."""
    mhz, flags = None, cpu_flags()
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("cpu MHz"):
                mhz = float(line.split(":")[1])
                break
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    peak = cores * mhz * 1e6 * per_cycle if mhz else None
    return {"peak_fp32_flops": peak, "cores": cores, "mhz": mhz, "flops_per_cycle": per_cycle,
            "formula": f"{cores} cores x {mhz} MHz x {per_cycle} FLOPs/cycle "
                       f"(2 FMA units x {per_cycle // 4} lanes x 2; upper bound, see docstring)"}


def block(out):
    return jax.block_until_ready(out)


def count_flops(st) -> dict:
    """XLA's FLOP count of a stage's math, as a loop-free program where the code allows it.

    XLA's cost analysis counts a loop body once, whatever its trip count, and does not count
    `lax.conv` on XLA:CPU. So for the count (not for the timing) the matchers map over the
    classes with vmap instead of a loop, the real branches run the im2col layout instead of
    the forward-only `lax.conv` one, and `loop_safe_conv` takes one block of images instead of
    a `lax.map`/`scan` over cache-sized blocks (`one_conv_block`); a training loop's
    count is then scaled by its trips (an estimate: the body dominates), and DC's, whose inner
    training loop does not dominate its step, is not reported (flops_xla is a lower bound)."""
    saved = matching.CLASS_LOOP, Model.forward_only
    matching.CLASS_LOOP, Model.forward_only = "vmap", (lambda self: self)
    try:
        with one_conv_block():
            flops_xla = flops_of(jax.jit(lambda *a: (st.loop_part or st.jstep)(*a))
                                 .lower(*st.jargs).compile())  # a fresh trace
            flops_once = (flops_of(jax.jit(st.once).lower(*st.jargs).compile()) or 0.0
                          if st.once is not None and flops_xla is not None else None)
    finally:
        matching.CLASS_LOOP, Model.forward_only = saved
    flops = (None if flops_xla is None or st.trips is None
             else flops_xla * st.trips + (flops_once or 0.0))
    note = ("XLA cost analysis" if st.trips == 1 else
            f"estimate: XLA's count (training-loop body once) x {st.trips} trips"
            + (" + the test accuracy's forward passes, counted loop-free" if st.once else "")
            if st.trips else "not reported: XLA counts the inner training loop once "
            "(flops_xla is a lower bound)")
    return {"flops": flops, "flops_xla": flops_xla, "flops_note": note}


def rates(row, peak) -> dict:
    """Achieved FLOP/s of both sides and their fractions of the fp32 peak, from row's
    flops and median seconds (the same FLOP count for PyTorch: the same math)."""
    f, j, t = row["flops"], row["jaxdd_s"], row["torch_s"]
    out = {"jaxdd_flops_per_s": None if f is None else f / j,
           "torch_flops_per_s": None if f is None or t is None else f / t}
    if peak and f:
        out["jaxdd_fraction_of_peak"] = round(f / j / peak, 4)
        if t:
            out["torch_fraction_of_peak"] = round(f / t / peak, 4)
    return out


def run_stage(name, sz, dev, args, peak):
    st = build(name, sz, jnp.float32, torch.float32, dev)
    t0 = time.perf_counter()
    compiled = compiled_step(st)
    compile_s = time.perf_counter() - t0
    flops = count_flops(st)
    times = {"jaxdd": [], "torch": []}
    for rep in range(args.warmup + args.repeats):
        t0 = time.perf_counter()
        block(compiled(*st.jargs))
        dt = time.perf_counter() - t0
        if rep >= args.warmup:
            times["jaxdd"].append(dt)
        if st.tstep is not None:
            t0 = time.perf_counter()
            st.tstep()
            if dev.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter() - t0
            if rep >= args.warmup:
                times["torch"].append(dt)
    j = statistics.median(times["jaxdd"])
    t = statistics.median(times["torch"]) if times["torch"] else None
    row = {"stage": name, "jaxdd_s": round(j, 5), "torch_s": None if t is None else round(t, 5),
           "ratio_jaxdd_over_torch": None if t is None else round(j / t, 3),
           "jaxdd_compile_s": round(compile_s, 2), **flops,
           "jaxdd_times_s": [round(v, 4) for v in times["jaxdd"]],
           "torch_times_s": [round(v, 4) for v in times["torch"]]}
    row.update(rates(row, peak))
    if st.note:
        row["note"] = st.note
    rate = row["jaxdd_flops_per_s"]
    print(f"# {name:14s} jaxdd {j:.4f}s torch {t if t is None else round(t, 4)}s "
          f"ratio {row['ratio_jaxdd_over_torch']} (compile {compile_s:.1f}s, "
          f"{'?' if rate is None else f'{rate / 1e9:.1f}'} GFLOP/s)", file=sys.stderr, flush=True)
    return row


def main(args):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    torch.set_num_threads(args.threads or cores)
    dev = torch.device(args.device)
    if args.device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        jax.config.update("jax_default_matmul_precision", "highest")
    sz = TINY if args.tiny else full_sizes(args)
    peak = cpu_peak(cores) if args.device == "cpu" else {"peak_fp32_flops": None}
    checks, rows = {}, []
    load0 = [round(v, 2) for v in os.getloadavg()]
    t_all = time.perf_counter()
    import torchvision

    def result(complete):
        return dict(
            benchmark="stages_vs_torch", tiny=args.tiny, device=args.device,
            device_name=device_name(args.device), environment=environment(),
            torch=torch.__version__, torchvision=torchvision.__version__,
            torch_threads=torch.get_num_threads(), peak=peak, sizes=dataclasses.asdict(sz),
            repeats=args.repeats, warmup=args.warmup, statistic="median",
            loadavg_1_5_15_start=load0,
            loadavg_1_5_15_end=[round(v, 2) for v in os.getloadavg()],
            total_s=round(time.perf_counter() - t_all, 1),
            complete=complete and not missing(), missing=missing(), results=rows)

    def missing():
        return [n for n in STAGES if n not in {r["stage"] for r in rows}]

    if args.resume and os.path.exists(args.out):
        kept = load_kept(args.out, sz, "--resume", "drop --resume")
        rows = [r for r in kept["results"] if r["stage"] in args.stage_list]
        load0 = kept.get("loadavg_1_5_15_start", load0)
    if args.recount:
        recount(args.out, sz)
        return
    done = {r["stage"] for r in rows}
    for i, name in enumerate(args.stage_list):
        if name in done:
            continue
        if args.check64:
            checks[name] = check_float64(name, dev)
            print(f"# {name:14s} float64 check {checks[name]}", file=sys.stderr, flush=True)
        row = run_stage(name, sz, dev, args, peak["peak_fp32_flops"])
        row["check_float64"] = checks.get(name)
        rows.append(row)
        if i + 1 < len(args.stage_list):   # finished stages survive an interrupted run
            _write_quiet(result(False), args.out)
    write("stages_vs_torch", result(True), args.out)


def load_kept(path, sz, flag, fix):
    """A kept result file, refused (one line, exit) when it was run with other sizes."""
    with open(path) as f:
        kept = json.load(f)
    # Files from before --group-mode (--seed-mode) ran experts_K (eval_seeds) vmapped.
    sizes = {"group_mode": "vmap", "seed_mode": "vmap", **kept.get("sizes", {})}
    if sizes != json.loads(json.dumps(dataclasses.asdict(sz))):
        raise SystemExit(f"{flag}: {path} was run with other sizes; {fix}")
    return kept


def recount(path, sz):
    """--recount: the FLOP counts of path's stages again (count_flops), its times kept."""
    kept = load_kept(path, sz, "--recount", "give the sizes it was run with")
    for row in kept["results"]:
        for k in ("jaxdd_fraction_of_peak", "torch_fraction_of_peak"):
            row.pop(k, None)
        row.update(count_flops(build(row["stage"], sz, jnp.float32, torch.float32,
                                     torch.device(kept["device"]))))
        row.update(rates(row, kept["peak"]["peak_fp32_flops"]))
        print(f"# {row['stage']:14s} {row['flops']} FLOPs ({row['flops_note']})",
              file=sys.stderr, flush=True)
    kept["recounted"] = environment()["date"]
    write("stages_vs_torch", kept, path)


def _write_quiet(result, path):
    with open(path, "w") as f:
        f.write(json.dumps(result, default=float) + "\n")


if __name__ == "__main__":
    main(ARGS)
