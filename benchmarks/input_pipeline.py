#!/usr/bin/env python
"""Throughput, memory and training-step cost of the streamed input pipeline (jaxdd.data.stream).

Data: --images variable-size JPEGs (128-256 px a side, smooth random content, 10 classes)
generated once under --data (default /tmp/jaxdd_bench_stream, never in git) and read as a
`folder:` source (files listed, decoded lazily in the pipeline).
Measured:
- images/s of the train pipeline (decode + random-resized-crop 224 + flip, host batches of
  --batch) for each worker count in --workers, over --steps batches after one warm-up batch;
- peak RSS of this process (and of its worker processes) over one full epoch (0 workers);
- step time of a small jitted CNN train step at --train-size px fed by the pipeline
  (workers = the last of --workers) vs fed by batches already in device memory; the ratio
  is > 1 when the pipeline cannot keep up with the step.
Timings on a shared 2-core machine are indicative only.

Usage:
  python benchmarks/input_pipeline.py                  # 20k images, ~5 min on 2 cores
  python benchmarks/input_pipeline.py --images 2000 --steps 5
Prints one JSON line and writes it to --out (default benchmarks/results/input_pipeline_cpu.json).
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from _common import RESULTS, environment, write  # noqa: E402

from jaxdd.data import stream  # noqa: E402

CLASSES = 10


def make_folder(root: str, n: int) -> str:
    """n JPEGs of 128-256 px, smooth random images (upsampled noise), 10 class folders."""
    from PIL import Image
    done = os.path.join(root, f"done-{n}")
    if os.path.exists(done):
        return root
    rng = np.random.default_rng(0)
    for i in range(n):
        c = i % CLASSES
        os.makedirs(os.path.join(root, "train", f"c{c}"), exist_ok=True)
        w, h = (int(v) for v in rng.integers(128, 257, 2))
        small = rng.integers(0, 256, (h // 16 + 1, w // 16 + 1, 3), dtype=np.uint8)
        im = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        im.save(os.path.join(root, "train", f"c{c}", f"{i:06d}.jpg"), quality=90)
    os.makedirs(os.path.join(root, "test", "c0"), exist_ok=True)
    open(done, "w").close()
    return root


def peak_rss_mib() -> tuple[float, float]:
    """(peak RSS of this process, of its largest finished child) in MiB (Linux: KiB units)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, kids


def throughput(src, batch: int, steps: int, workers: int) -> float:
    loader = stream.make_loader(src, batch_size=batch, seed=0, image_size=224,
                                worker_count=workers)
    it = loader.host_batches()
    next(it)  # warm-up: worker start, first batch
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    dt = time.perf_counter() - t
    it.close()
    return steps * batch / dt


def cnn_step():
    """A small CNN (2 conv + dense) SGD step, jitted; params and batch as pytrees."""
    def init(key, size, c):
        k1, k2, k3 = jax.random.split(key, 3)
        return {"c1": jax.random.normal(k1, (3, 3, c, 16)) * 0.1,
                "c2": jax.random.normal(k2, (3, 3, 16, 32)) * 0.05,
                "d": jax.random.normal(k3, (32, CLASSES)) * 0.05}

    def loss(p, x_NHWC, y_N):
        x = x_NHWC.astype(jnp.float32) / 255.0
        for k in ("c1", "c2"):
            x = jax.lax.conv_general_dilated(x, p[k], (2, 2), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x)
        logits = x.mean(axis=(1, 2)) @ p["d"]
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y_N)), y_N])

    @jax.jit
    def step(p, x, y):
        l, g = jax.value_and_grad(loss)(p, x, y)
        return jax.tree.map(lambda a, b: a - 0.01 * b, p, g), l

    return init, step


def step_times(src, batch: int, steps: int, size: int, workers: int) -> dict:
    init, step = cnn_step()
    params = init(jax.random.key(0), size, 3)
    loader = stream.make_loader(src, batch_size=batch, seed=0, image_size=size,
                                worker_count=workers)
    it = iter(loader)
    first = next(it)
    params, l = step(params, first["image"], first["label"])
    l.block_until_ready()  # compiled
    cached = [first] + [next(it) for _ in range(3)]
    t = time.perf_counter()
    for _ in range(steps):
        b = next(it)
        params, l = step(params, b["image"], b["label"])
    l.block_until_ready()
    fed = (time.perf_counter() - t) / steps
    t = time.perf_counter()
    for i in range(steps):
        b = cached[i % len(cached)]
        params, l = step(params, b["image"], b["label"])
    l.block_until_ready()
    mem = (time.perf_counter() - t) / steps
    return {"pipeline_step_s": fed, "in_memory_step_s": mem, "ratio": fed / mem}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=20000)
    ap.add_argument("--data", default="/tmp/jaxdd_bench_stream")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--workers", default="0,1,2")
    ap.add_argument("--train-size", type=int, default=112)
    ap.add_argument("--out", default=os.path.join(RESULTS, "input_pipeline_cpu.json"))
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]

    t = time.perf_counter()
    root = make_folder(os.path.join(args.data, f"n{args.images}"), args.images)
    gen_s = time.perf_counter() - t
    src = stream.open_source(f"folder:{root}")
    disk_mib = sum(os.path.getsize(p) for p in src.paths) / 2**20
    rss_start = peak_rss_mib()[0]
    ips = {str(w): throughput(src, args.batch, args.steps, w) for w in workers}

    # one full epoch, 0 workers: peak memory stays bounded by the batches in flight
    t = time.perf_counter()
    loader = stream.make_loader(src, batch_size=args.batch, seed=0, image_size=224,
                                num_epochs=1)
    n = sum(len(b["index"]) for b in loader.host_batches())
    epoch_s = time.perf_counter() - t
    rss_epoch, rss_workers = peak_rss_mib()

    steps = step_times(src, args.batch // 2, args.steps, args.train_size, workers[-1])
    write("input_pipeline_cpu", {
        "benchmark": "input_pipeline", "images": args.images, "image_px": "128-256 jpeg",
        "dataset_mib_on_disk": round(disk_mib, 1), "generate_s": round(gen_s, 1),
        "batch": args.batch, "timed_steps": args.steps, "crop": 224,
        "images_per_s_by_workers": {k: round(v, 1) for k, v in ips.items()},
        "epoch_images": n, "epoch_s_0_workers": round(epoch_s, 1),
        "peak_rss_mib_before": round(rss_start, 1),
        "peak_rss_mib_after_epoch": round(rss_epoch, 1),
        "peak_rss_mib_worker_process": round(rss_workers, 1),
        "train_step": {"size": args.train_size, "batch": args.batch // 2,
                       "workers": workers[-1], **{k: round(v, 4) for k, v in steps.items()}},
        "note": "shared 2-core machine: timings indicative",
        "env": environment()}, args.out)


if __name__ == "__main__":
    main()
