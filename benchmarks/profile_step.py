"""Where a training step's time goes on XLA:CPU (issue #15): one profiled step, its ops
grouped by kind.

    python benchmarks/profile_step.py [--model resnet18] [--batch 256] [--hw 32]
        [--channels 3] [--repeats 3] [--out PATH]

The step is what a teacher epoch runs (`jaxdd.train.loop.train_epochs`, SGD 0.1, momentum
0.9, wd 5e-4, cosine, no augmentation) on `--batch` random images, one step as the body of
the training loop's scan, jitted. After a warm-up and `--repeats` timed calls (median), one
call runs under `jax.profiler.trace`; the XLA:CPU thread-pool events of that call are
summed per op and grouped by the kind their fusion is named after (the name XLA gives a
fusion starts with its root ops, e.g. `bitcast_slice_fusion`):

  matmul     the dots (`ynn_fusion*`, `dot*`, `custom-call*`): every convolution of
             `loop_safe_conv` (patches @ kernel, kernel gradient) and the classifier;
  patches    slice / concatenate / stack / pad / dynamic-(update-)slice fusions: building
             the convolutions' patch matrices and padded inputs (what a direct convolution,
             e.g. oneDNN's, does not write to memory);
  copies     copy / transpose fusions (layout changes);
  loops      while / conditional bookkeeping;
  elementwise  the rest: normalisation, ReLU, the optimiser, reductions.

Times are summed over the pool's threads (thread-seconds: with 2 cores up to 2x the wall
time). `matmul_flops_per_thread_s` divides the step's FLOPs (XLA's cost analysis of the same
step with one block of images per convolution, as `stages_vs_torch.count_flops`) by the
matmul thread-seconds: the dots' own rate, apart from everything around them. Prints one
JSON line and writes benchmarks/results/profile_step_<model>_b<batch>_cpu.json (records the
load average: fractions of a profile taken under load still say where time goes; absolute
times do not).
"""

from __future__ import annotations

import argparse
import collections
import glob
import os
import re
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, environment, one_conv_block, write  # noqa: E402

KINDS = (("matmul", r"^(ynn_fusion|dot|custom-call|convolution)"),
         ("patches", r"(slice|concatenate|stack|pad)"),
         ("copies", r"(copy|transpose)"),
         ("loops", r"^(while|conditional|call)"),
         ("elementwise", r""))
# thread-pool bookkeeping events that enclose the ops (not ops themselves)
_ENCLOSING = ("ThunkExecutor", "SlinkyThreadPool")


def kind_of(op: str) -> str:
    for kind, pattern in KINDS:
        if re.search(pattern, op):
            return kind
    return "elementwise"


def op_thread_seconds(xplane_path: str) -> dict[str, float]:
    """Seconds per op name, summed over the XLA:CPU pool threads of the profile."""
    import jax
    data = jax.profiler.ProfileData.from_file(xplane_path)
    out: dict[str, float] = collections.Counter()
    for plane in data.planes:
        for line in plane.lines:
            if "XLAEigen" not in line.name:
                continue
            for ev in line.events:
                if not ev.name.startswith(_ENCLOSING):
                    out[ev.name] += ev.duration_ns / 1e9
    return dict(out)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--hw", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    import jax
    from jaxdd.models import get_model
    from jaxdd.train.loop import TrainConfig, train_epochs, train_init

    load0 = [round(v, 2) for v in os.getloadavg()]
    model = get_model(args.model, 10, (args.hw, args.hw, args.channels))
    cfg = TrainConfig(epochs=200, batch_size=args.batch, lr=0.1, momentum=0.9,
                      weight_decay=5e-4, schedule="cosine", dsa="", image_chunks=1)
    x = jax.random.normal(jax.random.key(0), (args.batch, args.hw, args.hw, args.channels))
    y = jax.random.randint(jax.random.key(1), (args.batch,), 0, 10)
    state = train_init(jax.random.key(2), model, cfg, args.batch)
    step = jax.jit(lambda s, x, y: train_epochs(s, model, cfg, x, y, 1).variables)
    t0 = time.perf_counter()
    compiled = step.lower(state, x, y).compile()
    compile_s = time.perf_counter() - t0
    with one_conv_block():            # the FLOP count: nothing hidden in a map body
        ca = jax.jit(lambda s, x, y: train_epochs(s, model, cfg, x, y, 1).variables).lower(
            state, x, y).compile().cost_analysis()
    ca = ca[0] if isinstance(ca, (list, tuple)) else ca
    flops = float((ca or {}).get("flops", 0.0)) or None
    jax.block_until_ready(compiled(state, x, y))
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(state, x, y))
        times.append(time.perf_counter() - t0)
    with tempfile.TemporaryDirectory() as d:
        with jax.profiler.trace(d):
            t0 = time.perf_counter()
            jax.block_until_ready(compiled(state, x, y))
            profiled_s = time.perf_counter() - t0
        (pb,) = glob.glob(os.path.join(d, "**", "*.xplane.pb"), recursive=True)
        ops = op_thread_seconds(pb)
    by_kind = collections.Counter()
    for op, sec in ops.items():
        by_kind[kind_of(op)] += sec
    busy = sum(by_kind.values())
    top = sorted(ops.items(), key=lambda kv: -kv[1])[:15]
    result = {
        "benchmark": "profile_step", "environment": environment(),
        "step": {"model": args.model, "batch": args.batch, "hw": args.hw,
                 "channels": args.channels, "optimizer": "sgd 0.1 m0.9 wd5e-4 cosine",
                 "in": "train_epochs scan body (1 step)"},
        "loadavg_1_5_15_start": load0,
        "loadavg_1_5_15_end": [round(v, 2) for v in os.getloadavg()],
        "compile_s": round(compile_s, 2),
        "step_s_median": round(statistics.median(times), 4),
        "step_s_all": [round(t, 4) for t in times], "profiled_step_s": round(profiled_s, 4),
        "flops": flops, "flops_per_s": None if not flops else flops / statistics.median(times),
        "thread_s_by_kind": {k: round(v, 4) for k, v in by_kind.most_common()},
        "fraction_by_kind": {k: round(v / busy, 4) for k, v in by_kind.most_common()},
        "thread_s_busy": round(busy, 4),
        "matmul_flops_per_thread_s": (None if not flops or not by_kind["matmul"]
                                      else flops / by_kind["matmul"]),
        "top_ops_thread_s": [[op, round(s, 4)] for op, s in top],
        "kinds": {k: pat or "(anything else)" for k, pat in KINDS},
    }
    out = args.out or os.path.join(RESULTS, f"profile_step_{args.model}_b{args.batch}_cpu.json")
    write("profile_step", result, out)


if __name__ == "__main__":
    main()
