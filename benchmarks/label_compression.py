"""Soft-label compression on Fashion-MNIST: label bytes next to student accuracy for a
random real subset relabelled by the SRe2L `cpu` teacher (the `random+kd` row of
benchmarks/sm_fmnist.py, same teacher and KD recipe), one row per way of storing the labels.

    python benchmarks/label_compression.py [--ipc 10] [--epochs 40] [--batch-size 20]
                                           [--seeds 2] [--rows ...]

Runs (or reuses) `jaxdd teacher`, then `jaxdd baseline random --relabel TEACHER` (row
fp16: every class, every epoch its own augmentations, float16) and `jaxdd relabel RAND
--mode stored ...` for the other rows: top-k with the rest of the probability spread
uniformly (k = 1, 2, 4; and k = 2 "drop" for contrast), int8 / int4 per-row codes, label
pruning (M = epochs / 2, / 4, / 10 stored epochs replayed cyclically) and one combination.
Prints one JSON line; writes benchmarks/results/<tag>.json and <tag>.md (bytes | accuracy)
after every row ("partial": true until the grid is done).
The default budget is reduced (40 student epochs of batch 20 = 200 steps, 2 seeds; the
sm_fmnist rows use 300 epochs of batch 100 and 3 seeds): the rows compare storage formats
with each other, not with published numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, environment, write  # noqa: E402
from sm_fmnist import RUNS, ROOT, jaxdd  # noqa: E402

# name -> relabel options (beyond the shared recipe); "M/x" = epochs // x stored epochs.
GRID = {   # in the order they run (the first ones matter most when a run is cut short)
    "fp16": {},
    "top2-uniform": {"top_k": 2},
    "top2-drop": {"top_k": 2, "top_k_rest": "drop"},
    "int8": {"label_dtype": "int8"},
    "prune-x4": {"label_epochs": "M/4"},
    "prune-x10": {"label_epochs": "M/10"},
    "top1-uniform": {"top_k": 1},
    "int4": {"label_dtype": "int4"},
    "top2-uniform+int8+prune-x4": {"top_k": 2, "label_dtype": "int8", "label_epochs": "M/4"},
    "prune-x2": {"label_epochs": "M/2"},
    "top4-uniform": {"top_k": 4},
}
FLAGS = {"top_k": "--top-k", "top_k_rest": "--top-k-rest", "label_dtype": "--label-dtype",
         "label_epochs": "--label-epochs"}


def resolve(opts: dict, epochs: int) -> dict:
    return {k: max(1, epochs // int(v[2:])) if isinstance(v, str) and v.startswith("M/") else v
            for k, v in opts.items()}


def table(rows: list[dict], full_bytes: int) -> str:
    lines = ["| labels | top-k (rest) | values | stored epochs | label bytes | x smaller | "
             "accuracy % |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        topk = f"{r['top_k']} ({r['top_k_rest']})" if r["top_k"] else "all"
        lines.append(f"| {r['name']} | {topk} | {r['label_dtype']} | {r['stored_label_epochs']} "
                     f"| {r['label_bytes']:,d} | {full_bytes / r['label_bytes']:.1f} | "
                     f"{100 * r['accuracy_mean']:.1f} ± {100 * r['accuracy_std']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/sre2l/fashion_mnist_cpu.py"))
    ap.add_argument("--rows", nargs="+", default=list(GRID), choices=list(GRID))
    ap.add_argument("--tag", default="label_compression_cpu")
    args = ap.parse_args()
    if "fp16" not in args.rows:
        raise SystemExit("the fp16 row is the reference of the byte ratios: keep it in --rows")
    tdir = os.path.join(RUNS, "label_compression-teacher")
    rand = os.path.join(RUNS, f"label_compression-random-ipc{args.ipc}")
    teacher, _ = jaxdd("teacher", "--config", args.config, "--out", tdir)
    # The KD recipe spelled out (as sm_fmnist.py) and stored labels, so bytes are measured.
    shared = {"recipe": "sre2l", "epochs": args.epochs, "seeds": args.seeds, "seed": 0,
              "protocol": "cpu", "mode": "stored", "batch_size": args.batch_size}
    rows = []
    for name in ["fp16"] + [r for r in args.rows if r != "fp16"]:
        opts = resolve(GRID[name], args.epochs)
        if name == "fp16":   # the baseline command: subset + soft labels in one
            sets = sum((["--relabel-set", f"{k}={v!r}"] for k, v in shared.items()), [])
            r, wall = jaxdd("baseline", "random", "--dataset", "fashion_mnist", "--ipc",
                            str(args.ipc), "--out", rand, "--seed", "0", "--overwrite",
                            "--relabel", tdir, *sets)
        else:
            flags = sum(([FLAGS[k], str(v)] for k, v in opts.items()), [])
            r, wall = jaxdd("relabel", rand, "--teacher", tdir, "--mode", "stored",
                            "--epochs", str(args.epochs), "--seeds", str(args.seeds),
                            "--batch-size", str(args.batch_size),
                            "--recipe", "sre2l", "--protocol", "cpu", "--seed", "0", *flags)
        rows.append({"name": name, "options": opts, "accuracy_mean": r["accuracy_mean"],
                     "accuracy_std": r["accuracy_std"], "accuracies": r["accuracies"],
                     "label_bytes": r["label_bytes"], "labels_file_bytes": r["labels_file_bytes"],
                     "label_bytes_if_stored": r["label_bytes_if_stored"],
                     "top_k": r["top_k"], "top_k_rest": r["top_k_rest"],
                     "label_dtype": r["label_dtype"], "label_epochs": r["label_epochs"],
                     "stored_label_epochs": r["stored_label_epochs"],
                     "relabel_seconds": r["seconds"], "wall_seconds": wall})
        print(rows[-1], file=sys.stderr, flush=True)
        full = rows[0]["label_bytes"]
        result = {
            "benchmark": "label_compression", "dataset": "fashion_mnist", "ipc": args.ipc,
            "set": "random real subset (seed 0) + the teacher's soft labels",
            "budget": f"reduced: {args.epochs} student epochs of batch {args.batch_size} "
                      f"({r['epochs'] * -(-10 * args.ipc // args.batch_size)} steps), "
                      f"{args.seeds} seeds (sm_fmnist: 300 epochs of batch 100, 3 seeds); "
                      f"timed under load on the 2-core machine",
            "partial": len(rows) < len(args.rows),
            "student": r["model"], "recipe": "sre2l", "batch_size": r["batch_size"],
            "temperature": r["temperature"], "image_bytes": r["image_bytes"],
            "teacher": {"dir": os.path.relpath(tdir, ROOT), "model": teacher["model"],
                        "test_accuracy": teacher["test_accuracy"]},
            "rows": rows, "table": table(rows, full), "environment": environment()}
        # keep what is measured while the grid goes on
        with open(os.path.join(RESULTS, f"{args.tag}.md"), "w") as f:
            f.write(f"# Soft-label compression, Fashion-MNIST IPC {args.ipc} (random subset + "
                    f"soft labels)\n\n{result['budget']}. Student {result['student']}, recipe "
                    f"sre2l (T {result['temperature']:g}), labels stored; images "
                    f"{result['image_bytes']:,d} B. Generated by "
                    f"benchmarks/label_compression.py"
                    f"{' (partial: the grid was cut short)' if result['partial'] else ''}."
                    f"\n\n{result['table']}\n")
        if result["partial"]:
            with open(os.path.join(RESULTS, f"{args.tag}.json"), "w") as f:
                json.dump(result, f)
                f.write("\n")
    write(args.tag, result)


if __name__ == "__main__":
    main()
