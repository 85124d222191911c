#!/usr/bin/env python
"""K experts as one compiled program per epoch (`ExpertConfig.experts_per_program = K`) against
K experts one at a time, measured through `build_buffer` (checkpoints included), one process.

Problem: ConvNet-D3-W32 (instance norm) on the first --images Fashion-MNIST training images
(normalised), --epochs epochs per expert, batch 256, DSA, plain SGD (MTT's expert recipe).
For each K in --sizes: one warm-up build of every variant (compiles), then --repeats rounds
alternating sequential / grouped ("unroll" and "vmap" group modes); medians and the ratio
grouped / sequential (goal <= 0.9 on the CPU) and grouped / one expert (sequential / K;
goal on a GPU: 8 experts <= 2x one).
Each grouped buffer's checkpoints are compared with the sequential one's (max |diff|; 0 =
bit-identical). Load average is recorded: the 2-core machine may be shared with other jobs.

Usage:
  python benchmarks/experts_batch.py                # K = 2, 4, 8 (7.2 min on 2 busy cores)
  python benchmarks/experts_batch.py --sizes 8 --images 5000       # on a GPU
Prints one JSON line and writes it to --out (default:
benchmarks/results/experts_batch_<backend>.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import environment, write  # noqa: E402

from jaxdd import data as jdata  # noqa: E402
from jaxdd.population import experts as ex  # noqa: E402

MODEL = "convnet_d3_w32"
MODES = ("unroll", "vmap")


def final_params(out_dir: str, k: int, epochs: int) -> list:
    return [ex.load_expert_epoch(out_dir, e, epochs) for e in range(k)]


def max_diff(a, b) -> float:
    return max(float(np.abs(u - v).max()) for u, v in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="2,4,8", help="group sizes K")
    ap.add_argument("--images", type=int, default=2048, help="training images")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per expert")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds per K")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    t_start = time.perf_counter()
    load_start = os.getloadavg()

    ds = jdata.load_dataset("fashion_mnist", val_per_class=0)
    data = (ds.x_train[:args.images], ds.y_train[:args.images])
    base = ex.ExpertConfig(epochs=args.epochs, batch_size=256)

    def build(out_dir: str, k: int, size: int, mode: str) -> float:
        cfg = dataclasses.replace(base, num_experts=k, experts_per_program=size, group_mode=mode)
        t0 = time.perf_counter()
        ex.build_buffer(out_dir, data, MODEL, cfg, 0, preprocess="normalize")
        return time.perf_counter() - t0

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for k in [int(s) for s in args.sizes.split(",")]:
            variants = {"sequential": (1, "unroll"), **{m: (k, m) for m in MODES}}
            first = {name: build(f"{tmp}/w{k}{name}", k, *v) for name, v in variants.items()}
            ref = final_params(f"{tmp}/w{k}sequential", k, args.epochs)
            diffs = {m: max_diff(final_params(f"{tmp}/w{k}{m}", k, args.epochs), ref)
                     for m in MODES}
            times = {name: [] for name in variants}
            for r in range(args.repeats):
                for name, v in variants.items():
                    times[name].append(build(f"{tmp}/r{k}{name}{r}", k, *v))
            med = {name: statistics.median(t) for name, t in times.items()}
            results.append({
                "experts": k, "seconds_median": {n: round(s, 3) for n, s in med.items()},
                "ratio_to_sequential": {m: round(med[m] / med["sequential"], 3) for m in MODES},
                # the GPU goal: K = 8 grouped <= 2x one expert (one = sequential / K)
                "ratio_to_one_expert": {m: round(med[m] * k / med["sequential"], 3)
                                        for m in MODES},
                "times_s": {n: [round(s, 3) for s in t] for n, t in times.items()},
                "first_build_s_incl_compile": {n: round(s, 2) for n, s in first.items()},
                "final_params_max_abs_diff_vs_sequential": diffs})
            print(results[-1], file=sys.stderr, flush=True)

    env = environment()
    write(f"experts_batch_{env['backend']}", {
        "benchmark": "experts_batch", **env,
        "problem": {"model": MODEL, "dataset": "fashion_mnist", "images": args.images,
                    "epochs": args.epochs, "batch_size": base.batch_size, "dsa": base.dsa,
                    "optimizer": base.optimizer},
        "statistic": f"median of {args.repeats} build_buffer runs after one warm-up, variants "
                     "alternating; checkpoint writes included",
        "loadavg_1_5_15_start": [round(v, 2) for v in load_start],
        "loadavg_1_5_15_end": [round(v, 2) for v in os.getloadavg()],
        "total_s": round(time.perf_counter() - t_start, 1), "results": results},
        args.out)


if __name__ == "__main__":
    main()
