"""INFER (`configs/sre2l/infer_fashion_mnist_cpu.py`) on Fashion-MNIST IPC 10 at a REDUCED
budget, next to a random real subset of the same IPC relabelled with the SAME teachers,
static-label recipe, students, seeds and epochs.

    python benchmarks/infer_fmnist.py [--ipc 10] [--teacher-epochs 1] [--iterations 100]
                                      [--epochs 100] [--seeds 2]

Runs (or resumes) `jaxdd teacher`, `jaxdd recover`, `jaxdd baseline random` and
`jaxdd relabel` in benchmarks/runs/; prints one JSON line and writes
benchmarks/results/infer_fmnist.json (rows "infer" and "random+static-kd"), with the bytes
of base images, compensators and labels reported apart.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RUNS, environment, run_cli as jaxdd, write  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs/sre2l/infer_fashion_mnist_cpu.py")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--teacher-epochs", type=int, default=1)   # preset: 3
    ap.add_argument("--iterations", type=int, default=100)     # preset: 300, reference 1000
    ap.add_argument("--epochs", type=int, default=100)         # preset: 300, reference 400
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--tag", default="infer_fmnist")
    args = ap.parse_args()
    sets = ["--set", f"teacher.epochs={args.teacher_epochs}",
            "--set", f"infer.iterations={args.iterations}"]
    tdir = os.path.join(RUNS, f"{args.tag}-teacher")
    out = os.path.join(RUNS, f"{args.tag}-ipc{args.ipc}")
    rand = os.path.join(RUNS, f"{args.tag}-random-ipc{args.ipc}")

    teacher, teacher_wall = jaxdd("teacher", "--config", CONFIG, "--out", tdir, *sets)
    rec, rec_wall = jaxdd("recover", "--config", CONFIG, "--ipc", str(args.ipc), "--out", out,
                          "--teacher", tdir, *sets)
    # The same static-label recipe for both sets, spelled out (not read from the artefact).
    kd = ["--teacher", tdir, "--mode", "static", "--recipe", "infer", "--epochs",
          str(args.epochs), "--seeds", str(args.seeds), "--seed", "0", "--protocol", "cpu"]
    inf, inf_wall = jaxdd("relabel", out, *kd)
    base, base_wall = jaxdd("baseline", "random", "--dataset", "fashion_mnist", "--ipc",
                            str(args.ipc), "--out", rand, "--seed", "0", "--overwrite")
    rk, rk_wall = jaxdd("relabel", rand, *kd)

    def row(method, r, distill_seconds, instances):
        return {"method": method, "ipc": args.ipc, "accuracy_mean": r["accuracy_mean"],
                "accuracy_std": r["accuracy_std"], "accuracies": r["accuracies"],
                "seeds": r["seeds"], "instances": instances, "distill_seconds": distill_seconds,
                "eval_seconds": r["seconds"], "image_bytes": r["image_bytes"],
                "compensator_bytes": r.get("compensator_bytes", 0),
                "label_bytes": r["label_bytes"], "student": r["model"], "mode": r["mode"],
                "recipe": r["recipe"], "epochs": r["epochs"], "report": r["report"]}

    rows = [row("infer", inf, rec["distill_seconds"], rec["instances_per_class"] * 10),
            row("random+static-kd", rk, 0.0, args.ipc * 10)]
    with open(CONFIG) as f:
        config_sha = hashlib.sha256(f.read().encode()).hexdigest()[:12]
    write(args.tag, {
        "benchmark": "infer_fmnist", "config": os.path.relpath(CONFIG, ROOT),
        "budget": (f"REDUCED: {teacher['teachers']} teachers x {args.teacher_epochs} epoch(s) "
                   f"(preset 3), {args.iterations} iterations per compensator (preset 300, "
                   f"reference 1000), {args.epochs} student epochs (preset 300, reference "
                   f"400), {args.seeds} seeds; one run, timed under load (2 shared cores)"),
        "rows": rows,
        "gain_over_random_static_kd_points": round(
            100 * (inf["accuracy_mean"] - rk["accuracy_mean"]), 2),
        "infer": {k: rec[k] for k in ("base_sets", "compensators_per_base",
                                      "instances_per_class", "budget", "final_ce", "final_bn")},
        "teacher": {"model": teacher["model"], "test_accuracy": teacher["test_accuracy"],
                    "train_seconds": teacher["train_seconds"], "wall_seconds": teacher_wall},
        "times": {"recover_seconds": rec["distill_seconds"], "recover_wall_seconds": rec_wall,
                  "relabel_seconds": inf["seconds"], "relabel_wall_seconds": inf_wall,
                  "random_relabel_seconds": rk["seconds"], "random_wall_seconds": base_wall + rk_wall},
        "relabel": {k: inf[k] for k in ("recipe", "mode", "epochs", "batch_size", "optimizer",
                                        "lr", "weight_decay", "temperature", "t2_factor",
                                        "lr_per_epoch", "label_dtype", "ensemble_reduce",
                                        "augment", "report")},
        "config_sha": config_sha, "environment": environment()})


if __name__ == "__main__":
    main()
