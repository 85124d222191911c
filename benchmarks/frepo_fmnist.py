"""The FRePo `cpu` preset on Fashion-MNIST, next to a random real subset evaluated with the
same protocol and seeds.

    python benchmarks/frepo_fmnist.py [--ipc 10] [--set iterations=750] [--tag frepo_cpu_ipc10]

Runs (or resumes) `jaxdd distill` in benchmarks/runs/<tag>/ and prints one JSON line;
writes benchmarks/results/<tag>.json (accuracies, times, the overrides, the load average).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/frepo/fashion_mnist_cpu.py"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--tag", default="frepo_cpu_ipc10")
    ap.add_argument("--note", default="", help="what changed since the last recorded run")
    args = ap.parse_args()
    out = os.path.join(ROOT, "benchmarks", "runs", args.tag)
    cmd = [sys.executable, "-m", "jaxdd.cli", "distill", "--config", args.config,
           "--ipc", str(args.ipc), "--out", out, "--json"] + sum((["--set", s] for s in args.set), [])
    t0, load0 = time.time(), os.getloadavg()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"distill failed (exit {proc.returncode})")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ev = res["evaluations"]
    row = {name: {"accuracy_mean": r["accuracy_mean"], "accuracy_std": r["accuracy_std"],
                  "accuracies": r["accuracies"], "val_accuracy_mean": r.get("val_accuracy_mean"),
                  "seeds": r["seeds"], "protocol": r["protocol"], "loss": r.get("loss"),
                  "eval_seconds": r["seconds"]} for name, r in ev.items()}
    with open(args.config) as f:
        config_sha = hashlib.sha256(f.read().encode()).hexdigest()[:12]
    write(args.tag, {"benchmark": "frepo_fmnist", "method": "frepo", "ipc": args.ipc,
                     "config": os.path.relpath(args.config, ROOT), "overrides": args.set,
                     "accuracy_mean": ev["artefact"]["accuracy_mean"],
                     "accuracy_std": ev["artefact"]["accuracy_std"],
                     "random_accuracy_mean": ev["random"]["accuracy_mean"],
                     "gain_over_random_points": round(
                         100 * (ev["artefact"]["accuracy_mean"] - ev["random"]["accuracy_mean"]), 2),
                     "evaluations": row, "distill_seconds": res["distill_seconds"],
                     "compile_seconds": res.get("compile_seconds"),
                     "steps_seconds": res.get("steps_seconds"),
                     "wall_seconds": round(time.time() - t0, 1),
                     "loadavg_start": [round(x, 2) for x in load0],
                     "loadavg_end": [round(x, 2) for x in os.getloadavg()],
                     "config_sha": config_sha, "note": args.note, "environment": environment()})


if __name__ == "__main__":
    main()
