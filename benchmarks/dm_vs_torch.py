#!/usr/bin/env python
"""jaxdd's DM against a PyTorch DM written as the reference, at the same budget and seeds.

Issue #14: the reference DM (VICO-UoE/DatasetCondensation `main_DM.py`) run at the budget of
`configs/classic/dm_fashion_mnist_cpu.py` gave sets scoring 79.5-80.2 % under jaxdd's `cpu`
protocol (two distillation seeds), jaxdd's DM 78.9 +- 0.6 % (one seed). This script runs both
on the same footing, per distillation seed S:

- jaxdd: `jaxdd distill --config configs/classic/dm_fashion_mnist_cpu.py --ipc 10
  --set seed=S --no-eval` (the preset as it is; `--iterations` overrides its budget).
- PyTorch (own code following the reference's operations): the same preprocessed training
  images (jaxdd's dataset for seed S: its validation split is held out, its fitted
  normalisation), the SAME initial real images (jaxdd's `init_images` for seed S, so both
  start from one draw), the preset's budget (iterations, batch_real, lr_img, momentum, DSA
  strategy, ConvNet-D3 of the preset's width); per iteration: a fresh `nn.Module` ConvNet
  with PyTorch's default init (GroupNorm(C, C) instance norm, first conv padded by 3 for one
  channel, 2x2 average pooling), `embed` = flattened features; per class: batch_real real
  images (`np.random.permutation(indices_class[c])[:n]`), one DSA draw shared by the real
  and the synthetic batch of the class and by every image of a batch (the reference's
  seeded `DiffAugment`: one family uniformly, `theta[:] = theta[0]`; scale/rotate through
  `affine_grid` + `grid_sample` with torch's defaults, crop = integer shift with zero fill,
  cutout = a clipped zero square), loss += ||mean emb(real_c) - mean emb(syn_c)||^2; one
  `torch.optim.SGD(lr, momentum)` step on the images. Its randomness comes from seeded
  generators (the reference seeds from the clock). The set is written as a jaxdd export
  npz (model-space images + the preprocessing), read back with `jaxdd import`.
- both sets: `jaxdd evaluate --protocol cpu --seeds 3 --seed 0` (identical evaluation keys).

Before distilling, the PyTorch DSA transforms are checked against jaxdd's (`jaxdd.augment.dsa`)
at the same parameters (max abs difference <= 1e-4, else exit 2), so both apply the same
augmentation family by family; only the random draws differ.

Usage (a Python with torch runs the script; the `jaxdd` commands run on --jaxdd-python):
  export JAXDD_PYTHON=.venv/bin/python
  PYTHONPATH=$PWD /work/venv-torch/bin/python benchmarks/dm_vs_torch.py            # full preset budget, seeds 0,1
  PYTHONPATH=$PWD /work/venv-torch/bin/python benchmarks/dm_vs_torch.py --iterations 5 --eval-epochs 2 \
      --seeds 0 --work /tmp/dmvt --out /tmp/dm_vs_torch_tiny.json                 # end-to-end check
Prints one JSON line and writes it to --out (default benchmarks/results/dm_vs_torch_cpu.json),
also after every finished (seed, side) with "complete": false.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time

PRESET = "configs/classic/dm_fashion_mnist_cpu.py"
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DSA_CHECK_TOL = 1e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="0,1", help="distillation seeds (comma list)")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=None, help="override the preset's budget (reduced)")
    p.add_argument("--dsa-strategy", default=None,
                   help="override the preset's DSA strategy on both sides (issue #14's runs: "
                        "color_crop_cutout_scale_rotate, the preset's value before the flip fix)")
    p.add_argument("--protocol", default="cpu")
    p.add_argument("--eval-seeds", type=int, default=3)
    p.add_argument("--eval-epochs", type=int, default=None, help="override the protocol's epochs (reduced)")
    p.add_argument("--sides", default="jaxdd,torch", help="which DMs to run")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: usable cores)")
    p.add_argument("--work", default=os.path.join(HERE, "runs", "dm_vs_torch"),
                   help="run directories (outside git; reused: finished sides are not rerun)")
    p.add_argument("--out", default=os.path.join(HERE, "results", "dm_vs_torch_cpu.json"))
    p.add_argument("--idle", action="store_true",
                   help="the machine ran nothing else (e.g. background jobs paused): the seconds are "
                        "timings; without it they are recorded as timed under load")
    p.add_argument("--collect-only", action="store_true",
                   help="write the JSON from the sides already finished in --work; run nothing")
    p.add_argument("--jaxdd-python", default=os.environ.get("JAXDD_PYTHON", sys.executable),
                   help="interpreter of the `jaxdd` commands (default $JAXDD_PYTHON, else this one): "
                        "the torch venv may lack jaxdd's own dependencies (tensorboardX)")
    return p.parse_args(argv)


PYTHON = sys.executable  # set from --jaxdd-python in main


def run_cli(*argv: str) -> dict:
    """One `jaxdd` command with --json; its JSON result."""
    cmd = [PYTHON, "-m", "jaxdd.cli", *argv, "--json"]
    print("$ jaxdd " + " ".join(argv), file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): jaxdd {' '.join(argv)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------------------------
# PyTorch DM (the reference's operations; own code)
# ----------------------------------------------------------------------------------------------


def torch_convnet(torch, channel, width, depth, num_classes, im_size):
    nn = torch.nn

    class ConvNet(nn.Module):
        def __init__(self):
            super().__init__()
            layers, c, hw = [], channel, 32 if im_size == 28 else im_size
            for d in range(depth):
                layers += [nn.Conv2d(c, width, 3, padding=3 if (channel == 1 and d == 0) else 1),
                           nn.GroupNorm(width, width, affine=True), nn.ReLU(inplace=True),
                           nn.AvgPool2d(2, 2)]
                c, hw = width, hw // 2
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(width * hw * hw, num_classes)

        def embed(self, x):
            return self.features(x).flatten(1)

    return ConvNet()


class TorchDSA:
    """The reference's seeded DiffAugment ('S' mode): one family per call, one parameter set
    for the whole batch. Calling with the same seed on two batches = siamese."""

    def __init__(self, torch, strategy):
        self.torch = torch
        self.F = torch.nn.functional
        self.families = [f for f in strategy.split("_") if f]

    def __call__(self, x, seed):
        torch = self.torch
        g = torch.Generator().manual_seed(int(seed))
        rand = lambda: float(torch.rand(1, generator=g)[0])  # noqa: E731
        randint = lambda lo, hi: int(torch.randint(lo, hi, (1,), generator=g)[0])  # noqa: E731
        fam = self.families[randint(0, len(self.families))]
        n, _, h, w = x.shape
        if fam == "color":
            return self.color(x, rand(), rand(), rand())
        if fam == "crop":
            sh, sw = int(h * 0.125 + 0.5), int(w * 0.125 + 0.5)
            return self.crop(x, randint(-sh, sh + 1), randint(-sw, sw + 1))
        if fam == "cutout":
            kh, kw = int(h * 0.5 + 0.5), int(w * 0.5 + 0.5)
            return self.cutout(x, randint(0, h + (1 - kh % 2)), randint(0, w + (1 - kw % 2)), kh, kw)
        if fam == "flip":
            return x.flip(3) if rand() < 0.5 else x
        if fam == "scale":
            r = 1.2
            sx = rand() * (r - 1.0 / r) + 1.0 / r
            sy = rand() * (r - 1.0 / r) + 1.0 / r
            return self.affine(x, [[sx, 0.0, 0.0], [0.0, sy, 0.0]])
        if fam == "rotate":
            a = (rand() - 0.5) * 2 * 15.0 / 180 * math.pi
            return self.affine(x, [[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0]])
        raise ValueError(fam)

    def color(self, x, ub, us, uc):
        x = x + (ub - 0.5) * 1.0
        m = x.mean(dim=1, keepdim=True)
        x = (x - m) * (us * 2.0) + m
        m = x.mean(dim=[1, 2, 3], keepdim=True)
        return (x - m) * (uc + 0.5) + m

    def crop(self, x, tx, ty):
        """out[i, j] = x[i + tx, j + ty], zero outside (the reference's padded gather)."""
        h, w = x.shape[2:]
        p = max(abs(tx), abs(ty))
        xp = self.F.pad(x, [p, p, p, p])
        return xp[:, :, p + tx:p + tx + h, p + ty:p + ty + w]

    def cutout(self, x, ox, oy, kh, kw):
        h, w = x.shape[2:]
        mask = self.torch.ones(h, w, dtype=x.dtype)
        mask[max(ox - kh // 2, 0):max(min(ox - kh // 2 + kh, h), 0),
             max(oy - kw // 2, 0):max(min(oy - kw // 2 + kw, w), 0)] = 0
        return x * mask

    def affine(self, x, theta23):
        theta = self.torch.tensor([theta23], dtype=x.dtype).expand(x.shape[0], 2, 3)
        grid = self.F.affine_grid(theta, list(x.shape), align_corners=False)
        return self.F.grid_sample(x, grid, align_corners=False)


def check_dsa(torch, np):
    """Each torch transform equals jaxdd's at the same parameters; returns the max errors."""
    import importlib

    import jax.numpy as jnp
    jdsa = importlib.import_module("jaxdd.augment.dsa")  # the module (the package exports a function `dsa`)
    aug = TorchDSA(torch, "color")
    rng = np.random.RandomState(0)
    x = rng.randn(3, 28, 28, 1).astype(np.float32)
    tx = torch.as_tensor(x.transpose(0, 3, 1, 2).copy())
    back = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    n = len(x)
    full = lambda v, dt=np.float32: jnp.full((n,), v, dt)  # noqa: E731
    errs = {}
    errs["color"] = np.abs(back(aug.color(tx, 0.3, 0.7, 0.9))
                           - np.asarray(jdsa.adjust_color(jnp.asarray(x), full(0.3), full(0.7), full(0.9)))).max()
    # jaxdd's translate moves content by +shift (out[i] = x[i - shift]); the torch crop reads x[i + t]
    errs["crop"] = np.abs(back(aug.crop(tx, 3, -2))
                          - np.asarray(jdsa.translate(jnp.asarray(x), full(-3, np.int32), full(2, np.int32)))).max()
    errs["cutout"] = max(
        np.abs(back(aug.cutout(tx, ox, oy, 14, 14))
               - np.asarray(jdsa.cutout(jnp.asarray(x), full(ox, np.int32), full(oy, np.int32), (14, 14)))).max()
        for ox, oy in ((0, 28), (5, 20), (27, 1)))
    errs["scale"] = np.abs(back(aug.affine(tx, [[1.13, 0, 0], [0, 0.88, 0]]))
                           - np.asarray(jdsa.scale(jnp.asarray(x), full(1.13), full(0.88)))).max()
    a = 0.21
    errs["rotate"] = np.abs(back(aug.affine(tx, [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0]]))
                            - np.asarray(jdsa.rotate(jnp.asarray(x), full(a)))).max()
    return {k: float(v) for k, v in errs.items()}


def torch_dm(torch, np, x_train_NHWC, y_train, x_init_NHWC, num_classes, ipc, dm_cfg, width,
             iterations, seed):
    """The reference main_DM.py loop (ConvNet branch) on jaxdd's data and initial images."""
    torch.manual_seed(seed)  # networks are drawn from torch's global generator, one per iteration
    rng = np.random.RandomState(seed)  # real batches (np.random.permutation, as get_images)
    images_all = torch.as_tensor(np.ascontiguousarray(x_train_NHWC.transpose(0, 3, 1, 2)))
    indices_class = [np.flatnonzero(y_train == c) for c in range(num_classes)]
    _, channel, h, w = images_all.shape
    image_syn = torch.as_tensor(np.ascontiguousarray(x_init_NHWC.transpose(0, 3, 1, 2))).clone()
    image_syn.requires_grad_(True)
    opt = torch.optim.SGD([image_syn], lr=dm_cfg["lr_img"], momentum=dm_cfg["momentum_img"])
    dsa = TorchDSA(torch, dm_cfg["dsa_strategy"]) if dm_cfg["dsa_strategy"] not in ("none", "None", "") else None
    losses = []
    t_loop = time.perf_counter()
    for it in range(iterations):
        net = torch_convnet(torch, channel, width, 3, num_classes, h)
        net.train()
        for p in net.parameters():
            p.requires_grad_(False)
        loss = torch.zeros(())
        for c in range(num_classes):
            img_real = images_all[rng.permutation(indices_class[c])[:dm_cfg["batch_real"]]]
            img_syn = image_syn[c * ipc:(c + 1) * ipc]
            if dsa is not None:
                s = int(rng.randint(0, 2**31 - 1))  # one seed per class, shared by both batches
                img_real, img_syn = dsa(img_real, s), dsa(img_syn, s)
            out_real = net.embed(img_real).detach()
            out_syn = net.embed(img_syn)
            loss = loss + torch.sum((out_real.mean(0) - out_syn.mean(0)) ** 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()) / num_classes)
        if it % 50 == 0 or it == iterations - 1:
            print(f"# torch DM seed {seed} it {it}: loss/class {losses[-1]:.4f}", file=sys.stderr, flush=True)
    steps_s = time.perf_counter() - t_loop
    return image_syn.detach().numpy().transpose(0, 2, 3, 1), losses, steps_s


# ----------------------------------------------------------------------------------------------
# Sides
# ----------------------------------------------------------------------------------------------


def dm_section(cfg):
    """The preset's DM options with the DMConfig defaults filled in (as the pipeline builds them)."""
    import dataclasses

    from jaxdd import registry
    return dataclasses.asdict(registry.get("dm").section_config(cfg))


def evaluate(art_dir, args):
    argv = ["evaluate", art_dir, "--protocol", args.protocol, "--seeds", str(args.eval_seeds), "--seed", "0"]
    if args.eval_epochs:
        argv += ["--epochs", str(args.eval_epochs)]
    r = run_cli(*argv)
    return {k: r[k] for k in ("accuracy_mean", "accuracy_std", "accuracies", "seeds") if k in r}


def set_args(args, seed):
    sets = ["--set", f"seed={seed}"]
    if args.iterations is not None:
        sets += ["--set", f"iterations={args.iterations}"]
    if args.dsa_strategy is not None:
        sets += ["--set", f"dm.dsa_strategy={args.dsa_strategy}"]
    return sets


def cpu_model():
    from _common import cpu_model as model
    return model()


def run_jaxdd(args, seed):
    out = os.path.join(args.work, f"jaxdd_seed{seed}")
    done = os.path.join(out, "artefact", "meta.json")
    t0 = time.time()
    reused = os.path.exists(done)  # a finished distillation in the work directory is kept
    if not reused:
        if os.path.exists(out):
            shutil.rmtree(out)
        res = run_cli("distill", "--config", PRESET, "--ipc", str(args.ipc), *set_args(args, seed), "--out",
                      out, "--no-eval", "--quiet")
        with open(os.path.join(out, "side_timing.json"), "w") as f:  # the driver's own split
            json.dump({k: res.get(k) for k in ("steps_seconds", "compile_seconds")}, f)
    distill_s = None if reused else round(time.time() - t0, 1)
    timing = os.path.join(out, "side_timing.json")
    split = json.load(open(timing)) if os.path.exists(timing) else {}
    t0 = time.time()
    ev = evaluate(os.path.join(out, "artefact"), args)
    return {"artefact": os.path.join(out, "artefact"), "distill_seconds": distill_s, **split,
            "cpu": cpu_model(),
            "reused_artefact": reused, "eval_seconds": round(time.time() - t0, 1), **ev}


def run_torch(args, seed):
    import numpy as np
    import torch

    import jax

    from jaxdd import data as jdata
    from jaxdd.configs import load_config
    from jaxdd.exchange import NPZ_NAME
    from jaxdd.pipelines.common import Context, init_images
    out = os.path.join(args.work, f"torch_seed{seed}")
    art = os.path.join(out, "artefact")
    info = {}
    t0 = time.time()
    if not os.path.exists(os.path.join(art, "meta.json")):
        cfg = load_config(PRESET, args.ipc, set_args(args, seed)[1::2])
        ctx = Context(cfg, out)
        x0, y0 = init_images(ctx, jax.random.fold_in(ctx.key, 0))  # exactly jaxdd's initial set
        x_train = np.asarray(jdata.apply(ctx.pre, ctx.ds.x_train), np.float32)
        model = cfg["model"]
        if not model.startswith("convnet_d3_w"):
            raise SystemExit(f"the PyTorch side builds ConvNet-D3; the preset's model is {model}")
        width = int(model.rsplit("_w", 1)[1])
        x_syn, losses, info["steps_seconds"] = torch_dm(torch, np, x_train, np.asarray(ctx.ds.y_train), np.asarray(x0),
                                 ctx.ds.num_classes, cfg["ipc"], dm_section(cfg), width, cfg["iterations"], seed)
        os.makedirs(out, exist_ok=True)
        npz = os.path.join(out, NPZ_NAME)
        pre = {f"pre_{k}": v for k, v in jdata.to_dict(ctx.pre).items()}
        # jaxdd's npz export layout: pixels in [0, 1] (x) + lossless model-space images + preprocessing
        np.savez(npz, x=jdata.invert(ctx.pre, x_syn, clip=True).astype(np.float32), y=np.asarray(y0),
                 x_model_NHWC=x_syn.astype(np.float32), **pre)
        with open(os.path.join(out, "losses.json"), "w") as f:
            json.dump(losses, f)
        info["final_loss_per_class"] = round(float(np.mean(losses[-50:])), 5)  # last 50 iterations
        info["steps_seconds"] = round(info["steps_seconds"], 1)  # the iteration loop alone
        if os.path.exists(art):
            shutil.rmtree(art)
        run_cli("import", npz, "--format", "npz", "--dataset", cfg["dataset"], "--seed", str(seed),
                "--out", art, "--quiet")
    distill_s = round(time.time() - t0, 1)
    t0 = time.time()
    ev = evaluate(art, args)
    return {"artefact": art, "distill_seconds": distill_s, "eval_seconds": round(time.time() - t0, 1),
            "cpu": cpu_model(),
            **info, **ev}


def cached_side(args, side, seed):
    """A side's result, reused from its run directory when it ran with the same settings (so
    the sides can run as separate processes, e.g. `--sides torch` beside `--sides jaxdd`,
    and one last call collects them)."""
    settings = {"ipc": args.ipc, "iterations": args.iterations, "dsa_strategy": args.dsa_strategy,
                "protocol": args.protocol,
                "eval_seeds": args.eval_seeds, "eval_epochs": args.eval_epochs}
    path = os.path.join(args.work, f"{side}_seed{seed}", "side.json")
    if os.path.exists(path):
        with open(path) as f:
            rec = json.load(f)
        if rec.get("settings") == settings:
            r = rec["result"]
            if side == "jaxdd" and "final_loss_per_class" not in r:
                r["final_loss_per_class"] = jaxdd_final_loss(os.path.dirname(r["artefact"]))
            return r
    if args.collect_only:
        return None
    r = (run_jaxdd if side == "jaxdd" else run_torch)(args, seed)
    if side == "jaxdd":
        r["final_loss_per_class"] = jaxdd_final_loss(os.path.dirname(r["artefact"]))
    with open(path, "w") as f:
        json.dump({"settings": settings, "result": r}, f, default=float)
    return r


def jaxdd_final_loss(run_dir):
    """Mean DM loss per class over the last 50 iterations (jaxdd logs every 10th)."""
    rows = []
    with open(os.path.join(run_dir, "run", "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "loss_per_class" in rec:
                rows.append((rec["iteration"], rec["loss_per_class"]))
    last = max(i for i, _ in rows)
    vals = [v for i, v in rows if i > last - 50]
    return round(sum(vals) / len(vals), 5)


def summarise(runs):
    import numpy as np
    out = {}
    for side in ("jaxdd", "torch"):
        accs = [r[side]["accuracy_mean"] for r in runs.values() if side in r]
        if accs:
            out[side] = {"mean_over_seeds": float(np.mean(accs)), "per_seed": accs,
                         "std_over_seeds": float(np.std(accs)) if len(accs) > 1 else None}
    paired = [r["jaxdd"]["accuracy_mean"] - r["torch"]["accuracy_mean"]
              for r in runs.values() if "jaxdd" in r and "torch" in r]
    if paired:
        out["jaxdd_minus_torch_per_seed"] = paired
        out["jaxdd_minus_torch_mean"] = float(np.mean(paired))
        # noise of one paired difference: the eval std of both sides over sqrt(eval seeds)
        se = [math.sqrt((r["jaxdd"]["accuracy_std"] ** 2 + r["torch"]["accuracy_std"] ** 2)
                        / max(r["jaxdd"]["seeds"], 1)) for r in runs.values() if "jaxdd" in r and "torch" in r]
        out["eval_noise_se_of_difference"] = float(np.mean(se))
    for key in ("distill_seconds", "steps_seconds"):  # jaxdd / torch time, seed by seed,
        # only where both sides ran on the same CPU (sides can be run in different sessions)
        ratios = [r["jaxdd"][key] / r["torch"][key] for r in runs.values()
                  if "jaxdd" in r and "torch" in r and r["jaxdd"].get(key) and r["torch"].get(key)
                  and r["jaxdd"].get("cpu") and r["jaxdd"].get("cpu") == r["torch"].get("cpu")]
        if ratios:
            out[f"{key}_ratio_jaxdd_over_torch"] = [round(v, 3) for v in ratios]
    return out


def main(args):
    global PYTHON
    PYTHON = args.jaxdd_python
    import numpy as np
    import torch

    from _common import environment, write
    threads = args.threads or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    torch.set_num_threads(threads)
    errs = check_dsa(torch, np)
    print(f"# DSA torch vs jaxdd at equal parameters, max abs diff: {errs}", file=sys.stderr, flush=True)
    if max(errs.values()) > DSA_CHECK_TOL:
        print(f"MISMATCH: the PyTorch DSA differs from jaxdd's: {errs}", file=sys.stderr)
        raise SystemExit(2)
    os.makedirs(args.work, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    sides = [s for s in args.sides.split(",") if s]
    from jaxdd.configs import load_config
    cfg = load_config(PRESET, args.ipc, set_args(args, 0)[1::2])
    reduced = []
    if args.iterations is not None:
        reduced.append(f"iterations {args.iterations} (preset {load_config(PRESET, args.ipc)['iterations']})")
    if args.eval_epochs:
        reduced.append(f"eval epochs {args.eval_epochs}")
    if args.dsa_strategy is not None:
        reduced.append(f"dsa_strategy {args.dsa_strategy} on both sides (preset: "
                       f"{dm_section(load_config(PRESET, args.ipc))['dsa_strategy']})")
    result = {
        "benchmark": "dm_vs_torch", "preset": PRESET, "ipc": args.ipc,
        "budget": {**{k: v for k, v in dm_section(cfg).items() if k != "iterations"},  # DMConfig.iterations is not the run's
                   "iterations": cfg["iterations"], "model": cfg["model"]},
        "overrides": "; ".join(reduced) or None, "protocol": args.protocol, "eval_seeds": args.eval_seeds,
        "eval_seed": 0, "distill_seeds": seeds, "dsa_check_max_abs_diff": errs,
        "torch": torch.__version__, "torch_threads": threads,
        "note": "same initial real images (jaxdd's init_images for the seed) and training data on both "
                "sides; random streams (networks, real batches, DSA draws) differ by library",
        "timed_under_load": not args.idle, "loadavg_start": [round(v, 2) for v in os.getloadavg()],
        "environment": environment(), "runs": {}, "complete": False,
    }
    for seed in seeds:
        for side in sides:
            r = cached_side(args, side, seed)
            if r is None:  # --collect-only and not finished
                result.setdefault("missing", []).append(f"{side} seed {seed}")
                continue
            result["runs"].setdefault(str(seed), {})[side] = r
            print(f"# seed {seed} {side}: {100 * r['accuracy_mean']:.2f} +- {100 * r['accuracy_std']:.2f} %",
                  file=sys.stderr, flush=True)
            result["summary"] = summarise(result["runs"])
            with open(args.out, "w") as f:  # partial result after every side
                f.write(json.dumps(result, default=float) + "\n")
    result["complete"] = "missing" not in result
    result["loadavg_end"] = [round(v, 2) for v in os.getloadavg()]
    write("dm_vs_torch_cpu", result, args.out)


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main(parse_args())
