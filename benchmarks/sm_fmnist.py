"""Statistics matching (SRe2L `cpu` preset) on Fashion-MNIST IPC 10, next to a random real
subset relabelled with the SAME teacher and KD recipe (same students, seeds, epochs).

    python benchmarks/sm_fmnist.py [--ipc 10] [--mode stored] [--set recover.iterations=300]

Runs (or resumes) `jaxdd teacher`, `jaxdd recover`, `jaxdd relabel` and `jaxdd baseline
random --relabel` (the random subset + soft labels baseline) in benchmarks/runs/; prints one JSON line and writes
benchmarks/results/sm_fmnist.json (rows for benchmarks/table.py: "sre2l" and "random+kd").
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RUNS, environment, run_cli as jaxdd, write  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/sre2l/fashion_mnist_cpu.py"))
    ap.add_argument("--mode", default="stored", choices=["online", "stored"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--tag", default="sm_fmnist")
    args = ap.parse_args()
    sets = sum((["--set", s] for s in args.set), [])
    tdir = os.path.join(RUNS, f"{args.tag}-teacher")
    out = os.path.join(RUNS, f"{args.tag}-ipc{args.ipc}")
    rand = os.path.join(RUNS, f"{args.tag}-random-ipc{args.ipc}")

    teacher, teacher_wall = jaxdd("teacher", "--config", args.config, "--out", tdir, *sets)
    rec, rec_wall = jaxdd("recover", "--config", args.config, "--ipc", str(args.ipc), "--out", out,
                          "--teacher", tdir, *sets)
    # The same KD recipe for both sets, spelled out so neither depends on stored defaults.
    kd = dict(mode=args.mode, recipe="sre2l", epochs=300, seeds=args.seeds, seed=0,
              protocol="cpu")
    sm, sm_wall = jaxdd("relabel", out, "--teacher", tdir,
                        *sum(([f"--{k}", str(v)] for k, v in kd.items()), []))
    rk, rk_wall = jaxdd("baseline", "random", "--dataset", "fashion_mnist", "--ipc",
                        str(args.ipc), "--out", rand, "--seed", "0", "--overwrite",
                        "--relabel", tdir,
                        *sum((["--relabel-set", f"{k}={v!r}"] for k, v in kd.items()), []))

    def row(method, r, distill_seconds):
        return {"method": method, "ipc": args.ipc, "accuracy_mean": r["accuracy_mean"],
                "accuracy_std": r["accuracy_std"], "accuracies": r["accuracies"],
                "seeds": r["seeds"], "distill_seconds": distill_seconds,
                "eval_seconds": r["seconds"], "label_bytes": r["label_bytes"],
                "label_bytes_if_stored": r["label_bytes_if_stored"],
                "image_bytes": r["image_bytes"], "student": r["model"], "mode": r["mode"],
                "recipe": r["recipe"], "report": r["report"]}

    rows = [row("sre2l", sm, rec["distill_seconds"]), row("random+kd", rk, 0.0)]
    with open(args.config) as f:
        config_sha = hashlib.sha256(f.read().encode()).hexdigest()[:12]
    write(args.tag, {
        "benchmark": "sm_fmnist", "config": os.path.relpath(args.config, ROOT),
        "overrides": args.set, "rows": rows,
        "gain_over_random_kd_points": round(100 * (sm["accuracy_mean"] - rk["accuracy_mean"]), 2),
        "teacher": {"model": teacher["model"], "test_accuracy": teacher["test_accuracy"],
                    "train_seconds": teacher["train_seconds"], "wall_seconds": teacher_wall},
        "times": {"teacher_seconds": sum(teacher["train_seconds"]),
                  "recover_seconds": rec["distill_seconds"], "recover_wall_seconds": rec_wall,
                  "relabel_seconds": sm["seconds"], "relabel_wall_seconds": sm_wall,
                  "random_relabel_seconds": rk["seconds"]},
        "label_bytes": sm["label_bytes"], "image_bytes": sm["image_bytes"],
        "relabel": {k: sm[k] for k in ("recipe", "mode", "epochs", "batch_size", "optimizer",
                                       "lr", "weight_decay", "temperature", "t2_factor",
                                       "lr_per_epoch", "top_k", "label_dtype", "report")},
        "config_sha": config_sha, "environment": environment()})


if __name__ == "__main__":
    main()
