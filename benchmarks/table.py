"""The Fashion-MNIST results table: every method under the `cpu` protocol, next to the
published numbers (other protocol, labelled as such).

    python benchmarks/table.py [--methods dm dc dsa datadam] [--ipcs 1 10 50] [--collect-only]

Runs (or resumes) the classic matchers' reduced `cpu` presets, collects the latest results
of benchmarks/baselines.py, tm_fmnist.py and sm_fmnist.py from benchmarks/results/ and
prints one JSON line (also fashion_mnist.json). The markdown table,
benchmarks/results/fashion_mnist.md, is written by benchmarks/fmnist_table.py (the
reference-budget cells of issue #17), which shows these rows as its "reduced" section.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, environment, write  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# ../shared/reference-numbers.md, Fashion-MNIST, ConvNet-D3 (published; other protocol);
# shown beside these rows by fmnist_table.py.
PUBLISHED = {
    "random": ("51.4 ± 3.8", "73.8 ± 0.7", "82.5 ± 0.7"),
    "herding": ("67.0 ± 1.9", "71.1 ± 0.7", "71.9 ± 0.8"),
    "kcenter": ("66.9 ± 1.8", "54.7 ± 1.5", "68.3 ± 0.8"),
    "dc": ("70.5 ± 0.6", "82.3 ± 0.4", "83.6 ± 0.4"),
    "dsa": ("70.6 ± 0.6", "84.6 ± 0.3", "88.7 ± 0.2"),
    "full": ("93.5 ± 0.1", "", ""),
}
IPCS = (1, 10, 50)


def run_classic(method: str, ipc: int) -> dict | None:
    cfg = os.path.join(ROOT, "configs", "classic", f"{method}_fashion_mnist_cpu.py")
    out = os.path.join(ROOT, "benchmarks", "runs", f"{method}-ipc{ipc}")
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "jaxdd.cli", "distill", "--config", cfg,
                           "--ipc", str(ipc), "--out", out, "--json"], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        print(f"{method} IPC {ipc} failed (exit {proc.returncode})", file=sys.stderr)
        return None
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    ev = res["evaluations"]
    row = {"method": method, "ipc": ipc, "accuracy_mean": ev["artefact"]["accuracy_mean"],
           "accuracy_std": ev["artefact"]["accuracy_std"], "seeds": ev["artefact"]["seeds"],
           "random_accuracy_mean": ev["random"]["accuracy_mean"],
           "distill_seconds": res["distill_seconds"], "eval_seconds": ev["artefact"]["seconds"],
           "wall_seconds": round(time.time() - t0, 1), "config": os.path.relpath(cfg, ROOT)}
    with open(os.path.join(RESULTS, f"classic_{method}_ipc{ipc}.json"), "w") as f:
        json.dump(row, f)
    return row


def _load(path):
    try:
        with open(path) as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except (FileNotFoundError, json.JSONDecodeError, IndexError):
        return None


def collect() -> dict[tuple[str, int], dict]:
    cells: dict[tuple[str, int], dict] = {}
    base = _load(os.path.join(RESULTS, "baselines_cpu.json"))
    if base:
        for r in base["rows"]:
            cells[(r["method"], r["ipc"])] = {**r, "distill_seconds": r["select_seconds"]}
        if "full" in base:
            cells[("full", 0)] = {"accuracy_mean": base["full"]["accuracy"], "accuracy_std": 0.0,
                                  "eval_seconds": base["full"]["seconds"], "distill_seconds": 0,
                                  "note": f"{base['full']['epochs']} epochs, 1 seed"}
    tm = _load(os.path.join(RESULTS, "tm_fmnist.json"))
    if tm:
        for r in tm["rows"]:
            for name, label in (("artefact", "mtt"), ("artefact_ema", "mtt (EMA)")):
                if name in r:
                    cells[(label, r["ipc"])] = {**r[name], "distill_seconds": r["distill_seconds"],
                                                "eval_seconds": r[name]["eval_seconds"]}
    sm = _load(os.path.join(RESULTS, "sm_fmnist.json"))
    if sm:
        for r in sm.get("rows", []):
            cells[(r["method"], r["ipc"])] = r
    for path in glob.glob(os.path.join(RESULTS, "classic_*_ipc*.json")):
        r = _load(path)
        if r:
            cells[(r["method"], r["ipc"])] = r
    return cells


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", nargs="+", default=["dm", "dc", "dsa", "datadam"])
    ap.add_argument("--ipcs", type=int, nargs="+", default=list(IPCS))
    ap.add_argument("--collect-only", action="store_true")
    args = ap.parse_args()
    if not args.collect_only:
        for ipc in args.ipcs:
            for m in args.methods:
                print(run_classic(m, ipc), file=sys.stderr, flush=True)
    cells = collect()
    import fmnist_table
    fmnist_table.write_table()    # benchmarks/results/fashion_mnist.md: new cells + these rows
    write("fashion_mnist", {"benchmark": "table", "cells": {f"{m}@{i}": c for (m, i), c in cells.items()},
                            "environment": environment()})


if __name__ == "__main__":
    main()
