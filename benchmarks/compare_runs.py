"""Are two runs' distilled sets the same? Bitwise comparison of their artefacts' arrays,
next to the accuracies each run recorded (OUT/result.json, if evaluated).

    python benchmarks/compare_runs.py RUN_A RUN_B --tag NAME [--note TEXT]

Used to check that a refactoring changed no result: run the same preset with the old and
the new code (e.g. the old code from a `git worktree` at the old commit, on PYTHONPATH) and
compare. Prints one JSON line; writes benchmarks/results/<NAME>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import environment, write  # noqa: E402


def _run_summary(run: str) -> dict:
    path = os.path.join(run, "result.json")
    if not os.path.exists(path):
        return {"evaluated": False}
    with open(path) as f:
        res = json.load(f)
    return {"evaluated": True, "distill_seconds": res.get("distill_seconds"),
            **{name: {"accuracy_mean": r["accuracy_mean"], "accuracy_std": r["accuracy_std"],
                      "accuracies": r["accuracies"]}
               for name, r in res.get("evaluations", {}).items()}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_a")
    ap.add_argument("run_b")
    ap.add_argument("--tag", required=True)
    ap.add_argument("--note", default="")
    args = ap.parse_args()
    a = np.load(os.path.join(args.run_a, "artefact", "arrays.npz"))
    b = np.load(os.path.join(args.run_b, "artefact", "arrays.npz"))
    arrays = {}
    for k in sorted(set(a.files) | set(b.files)):
        if k not in a.files or k not in b.files:
            arrays[k] = {"in_both": False}
            continue
        same = a[k].shape == b[k].shape and np.array_equal(a[k], b[k])
        numeric = np.issubdtype(a[k].dtype, np.number) and a[k].shape == b[k].shape
        diff = (float(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)).max())
                if numeric and a[k].size else None)
        arrays[k] = {"bit_identical": bool(same), "max_abs_diff": diff}
    write(args.tag, {"benchmark": "compare_runs", "run_a": args.run_a, "run_b": args.run_b,
                     "note": args.note,
                     "identical": all(v.get("bit_identical", False) for v in arrays.values()),
                     "arrays": arrays, "a": _run_summary(args.run_a),
                     "b": _run_summary(args.run_b), "environment": environment()})


if __name__ == "__main__":
    main()
