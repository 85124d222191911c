"""The MTT `cpu` preset on Fashion-MNIST at IPC 1 and 10, next to a random real subset
evaluated with the same protocol and seeds.

    python benchmarks/tm_fmnist.py [--ipcs 1 10] [--config configs/mtt/fashion_mnist_cpu.py]

Runs (or resumes) `jaxdd distill` for each IPC in benchmarks/runs/ and prints one JSON
line; writes benchmarks/results/tm_fmnist.json.
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--ipcs", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--config", default=os.path.join(ROOT, "configs/mtt/fashion_mnist_cpu.py"))
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument("--tag", default="tm_fmnist")
    args = ap.parse_args()
    rows = []
    for ipc in args.ipcs:
        out = os.path.join(ROOT, "benchmarks", "runs", f"{args.tag}-ipc{ipc}")
        cmd = [sys.executable, "-m", "jaxdd.cli", "distill", "--config", args.config,
               "--ipc", str(ipc), "--out", out, "--json"] + sum((["--set", s] for s in args.set), [])
        t0 = time.time()
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"distill failed for IPC {ipc} (exit {proc.returncode})")
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        ev = res["evaluations"]
        row = {"ipc": ipc, "wall_seconds": round(time.time() - t0, 1),
               "distill_seconds": res["distill_seconds"]}
        for name, r in ev.items():
            row[name] = {"accuracy_mean": r["accuracy_mean"], "accuracy_std": r["accuracy_std"],
                         "accuracies": r["accuracies"], "seeds": r["seeds"], "lr": r.get("lr"),
                         "eval_seconds": r["seconds"]}
        row["gain_over_random_points"] = round(
            100 * (ev["artefact"]["accuracy_mean"] - ev["random"]["accuracy_mean"]), 2)
        rows.append(row)
        print(row, file=sys.stderr, flush=True)
    with open(args.config) as f:
        config_text = f.read()
    goals = {1: 15.0, 10: 6.0}
    write(args.tag, {"benchmark": "tm_fmnist", "config": os.path.relpath(args.config, ROOT),
                     "overrides": args.set, "rows": rows,
                     "goals_met": {r["ipc"]: r["gain_over_random_points"] >= goals.get(r["ipc"], 0)
                                   for r in rows},
                     "config_sha": __import__("hashlib").sha256(config_text.encode()).hexdigest()[:12],
                     "environment": environment()})


if __name__ == "__main__":
    main()
