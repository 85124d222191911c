"""Memory and time of the MTT outer step for each gradient mode as syn_steps grows.

    python benchmarks/tm_memory.py [--steps 10 20 40 80] [--width 32] [--ipc 10]

Fixed config: ConvNet-D3 (instance norm) on 28x28x1, 10 classes, IPC x 10 images, all
images every inner step, no augmentation, rolled `lax.scan` (unroll=1: full unrolling
lets XLA keep every step's activations and defeats remat). Memory is XLA's compiled
memory analysis (temporaries + arguments + outputs) of one outer step; time is the median
of `--repeats` runs after compilation. Prints one JSON line; writes
benchmarks/results/tm_memory.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write  # noqa: E402

from jaxdd.methods.tm_grad import GRAD_MODES, make_inner_schedule, matching_loss_and_grads  # noqa: E402
from jaxdd.models import get_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, nargs="+", default=[10, 20, 40, 80])
    ap.add_argument("--modes", nargs="+", default=list(GRAD_MODES))
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    model = get_model(f"convnet_d3_w{args.width}", 10, (28, 28, 1))
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    n = 10 * args.ipc
    k = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(k[0], (n, 28, 28, 1))
    y = jnp.arange(n) % 10
    theta_0 = model.init(k[1])["params"]
    theta_t = jax.tree.map(lambda a, b: a + 0.01 * b, theta_0, model.init(k[2])["params"])
    log_lr = jnp.log(jnp.float32(0.01))
    rows = []
    for steps in args.steps:
        idx, keys = make_inner_schedule(k[3], n, steps, None)
        for mode in args.modes:
            f = jax.jit(lambda x, lr, m=mode: matching_loss_and_grads(
                m, apply_fn, x, y, lr, theta_0, theta_t, idx, keys, unroll=1))
            t0 = time.time()
            compiled = f.lower(x, log_lr).compile()
            t_compile = time.time() - t0
            mem = compiled.memory_analysis()
            temp = int(mem.temp_size_in_bytes)
            total = temp + int(mem.argument_size_in_bytes) + int(mem.output_size_in_bytes)
            times = []  # compiled ahead of time: no warm-up call needed
            for _ in range(args.repeats):
                t0 = time.time()
                jax.block_until_ready(compiled(x, log_lr))
                times.append(time.time() - t0)
            rows.append({"mode": mode, "syn_steps": steps, "temp_bytes": temp, "total_bytes": total,
                         "step_seconds": round(statistics.median(times), 4),
                         "compile_seconds": round(t_compile, 2)})
            print(rows[-1], file=sys.stderr, flush=True)

    def temp(mode, s):
        return next(r["temp_bytes"] for r in rows if r["mode"] == mode and r["syn_steps"] == s)

    lo, hi = min(args.steps), max(args.steps)
    summary = {f"{m}_growth_{lo}_to_{hi}": round(temp(m, hi) / temp(m, lo), 3) for m in args.modes}
    if "remat" in args.modes and "tesla" in args.modes:
        summary["remat_over_tesla_at_max"] = round(temp("remat", hi) / temp("tesla", hi), 3)
        summary["goal_met"] = bool(summary[f"remat_growth_{lo}_to_{hi}"] <= 1.10
                                   and summary["remat_over_tesla_at_max"] <= 1.2)
    write("tm_memory", {"benchmark": "tm_memory", "width": args.width, "images": n,
                        "unroll": 1, "rows": rows, "summary": summary,
                        "environment": environment()})


if __name__ == "__main__":
    main()
