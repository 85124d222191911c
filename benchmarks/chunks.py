#!/usr/bin/env python
"""What chunking the student's forward (`jaxdd.models.chunked`) buys, measured in one process.

For each case the same computation is compiled with different chunk counts (1 = the whole
batch) and timed alternately (--repeats rounds after one warm-up); medians, ratios to the
whole batch and compile times are reported, with the chunk count `auto_chunks` picks.
Cases (ConvNet-D3, instance norm, 28x28x1, 10 classes):
- mtt:   the exact MTT outer step (`matching_loss_and_grads`, remat, inner loop unrolled),
         WIDTHxSYN_STEPSxIMAGES;
- train: `train_network` for --epochs epochs (no augmentation), WIDTHxIMAGESxBATCH.
Before timing, each chunked result is checked against the whole-batch one: the MTT image
gradient in float64 (relative L2 error <= 1e-9; the same math), and every float32 result to
<= 2e-2 (the float32 second-order image gradient is ill-conditioned: at width 128 float32
results of jaxdd and PyTorch alike are up to ~1e-2 from float64, see tm_vs_torch.py); all
errors are recorded.

Usage:
  python benchmarks/chunks.py                       # the default cases below (~15 min on 2 cores)
  python benchmarks/chunks.py --mtt 32x10x100:1,2,4 --train ""
Prints one JSON line and writes it to --out (default benchmarks/results/chunks_cpu.json).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import RESULTS, environment, write  # noqa: E402

from jaxdd.methods.tm_grad import make_inner_schedule, matching_loss_and_grads  # noqa: E402
from jaxdd.models import auto_chunks, chunked, get_model  # noqa: E402
from jaxdd.train import TrainConfig, train_network  # noqa: E402

MTT_CASES = "32x10x100:1,2,4;32x10x10:1,2;128x10x100:1,4,8"
TRAIN_CASES = "32x100x256:1,2,4;32x1024x256:1,2,4,5;128x100x256:1,4,8"


def parse_cases(spec: str):
    out = []
    for case in filter(None, spec.split(";")):
        shape, chunks = case.split(":")
        out.append((tuple(int(v) for v in shape.lower().split("x")), [int(c) for c in chunks.split(",")]))
    return out


def rel(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def mtt_fns(width: int, syn_steps: int, images: int, chunk_list):
    model = get_model(f"convnet_d3_w{width}", 10, (28, 28, 1), conv_impl="auto")
    k = jax.random.split(jax.random.key(0), 4)
    theta_0 = model.init(k[0])["params"]
    theta_t = jax.tree.map(lambda p: p + 0.02 * jax.random.normal(k[1], p.shape), theta_0)
    x = jax.random.normal(k[2], (images, 28, 28, 1))
    y = jnp.arange(images, dtype=jnp.int32) % 10
    idx, keys = make_inner_schedule(k[3], images, syn_steps, None)
    args = (x, y, jnp.log(jnp.asarray(0.01)), theta_0, theta_t, idx, keys)

    def make(c):
        apply_fn = chunked(lambda p, xb: model.apply({"params": p}, xb), c)
        return jax.jit(lambda *a: matching_loss_and_grads("remat", apply_fn, *a, label_kind="hard",
                                                          unroll=True)[1].x_syn_NHWC)
    return model, images, {c: make(c) for c in chunk_list}, args


def train_fns(width: int, images: int, batch: int, chunk_list, epochs: int):
    model = get_model(f"convnet_d3_w{width}", 10, (28, 28, 1), conv_impl="auto")
    x = jax.random.normal(jax.random.key(0), (images, 28, 28, 1))
    y = jnp.arange(images) % 10

    def make(c):
        cfg = TrainConfig(epochs=epochs, batch_size=batch, dsa="", image_chunks=c)
        return jax.jit(lambda key: jnp.concatenate(
            [leaf.ravel() for leaf in jax.tree.leaves(train_network(key, model, cfg, x, y))]))
    return model, min(batch, images), {c: make(c) for c in chunk_list}, (jax.random.key(1),)


def check_float64(make_case):
    """Relative error of the largest chunk count against the whole batch, in float64."""
    jax.config.update("jax_enable_x64", True)
    try:
        _, _, fns, args = make_case()
        args = jax.tree.map(lambda a: a.astype(jnp.float64) if a.dtype == jnp.float32 else a, args)
        lo, hi = min(fns), max(fns)
        return rel(fns[hi](*args), fns[lo](*args))
    finally:
        jax.config.update("jax_enable_x64", False)


def run_case(kind, model, batch, fns, args, repeats):
    comp, outs = {}, {}
    for c, f in fns.items():
        t0 = time.perf_counter()
        f = fns[c] = f.lower(*args).compile()
        comp[c] = round(time.perf_counter() - t0, 2)
        outs[c] = jax.block_until_ready(f(*args))
    base = min(fns)
    errs = {c: rel(outs[c], outs[base]) for c in fns}
    if max(errs.values()) > 2e-2:
        raise SystemExit(f"{kind}: chunked result differs from the whole batch: {errs}")
    times = {c: [] for c in fns}
    for _ in range(repeats):
        for c, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(*args))
            times[c].append(time.perf_counter() - t0)
    med = {c: statistics.median(v) for c, v in times.items()}
    return {"auto_chunks": auto_chunks(model, batch),
            "by_chunks": {str(c): {"seconds": round(med[c], 4), "ratio_to_whole_batch": round(med[c] / med[base], 3),
                                   "compile_s": comp[c], "rel_err_vs_whole_batch": errs[c],
                                   "times_s": [round(t, 4) for t in times[c]]} for c in fns}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--mtt", default=MTT_CASES, help="WIDTHxSYN_STEPSxIMAGES:CHUNKS;... ('' = none)")
    p.add_argument("--train", default=TRAIN_CASES, help="WIDTHxIMAGESxBATCH:CHUNKS;... ('' = none)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default=os.path.join(RESULTS, f"chunks_{jax.default_backend()}.json"))
    args = p.parse_args(argv)
    results = []
    t_all = time.perf_counter()
    for (w, n, imgs), cl in parse_cases(args.mtt):
        e64 = check_float64(lambda: mtt_fns(w, n, imgs, [min(cl), max(cl)]))
        if e64 > 1e-9:
            raise SystemExit(f"mtt w={w} N={n} images={imgs}: chunked != whole batch in float64 ({e64:.1e})")
        r = run_case("mtt", *mtt_fns(w, n, imgs, cl), args.repeats)
        results.append({"case": "mtt_outer_step", "width": w, "syn_steps": n, "images": imgs,
                        "float64_rel_err_max_chunks_vs_whole_batch": e64, **r})
        print(f"# mtt w={w} N={n} images={imgs}: " + ", ".join(
            f"{c} chunks {v['ratio_to_whole_batch']} (compile {v['compile_s']} s)" for c, v in r["by_chunks"].items()),
            file=sys.stderr, flush=True)
    for (w, imgs, bs), cl in parse_cases(args.train):
        r = run_case("train", *train_fns(w, imgs, bs, cl, args.epochs), args.repeats)
        results.append({"case": "train_network", "width": w, "images": imgs, "batch": bs, "epochs": args.epochs, **r})
        print(f"# train w={w} images={imgs} batch={bs}: " + ", ".join(
            f"{c} chunks {v['ratio_to_whole_batch']} (compile {v['compile_s']} s)" for c, v in r["by_chunks"].items()),
            file=sys.stderr, flush=True)
    write("chunks", {"benchmark": "chunks", **environment(),
                     "statistic": f"median of {args.repeats}, chunk counts alternating",
                     "loadavg_1_5_15_end": [round(v, 2) for v in os.getloadavg()],
                     "total_s": round(time.perf_counter() - t_all, 1), "results": results}, args.out)


if __name__ == "__main__":
    main()
