"""Label-light soft labels (HeLlO projector) vs stored fp16 teacher labels on Fashion-MNIST.

    python benchmarks/hello_fmnist.py [--ipc 10] [--epochs 100] [--seeds 2] [--rank 4]

The same synthetic set (a random real subset, IPC 10, seed 0), the same teacher (the SRe2L
`cpu` preset's ConvNet-D3-W32-BN, `--teacher-epochs` epochs) and the same KD student recipe
(`sre2l`, `cpu` protocol's ConvNet-D3-W32, the same seeds and augmentations) with:

    stored             `relabel --mode stored`: the teacher's fp16 logits of every
                       (epoch, step), i.e. epochs x N x K values
    projector/teacher  `relabel --labels projector --extractor teacher`: a rank-R head on
                       the teacher's penultimate features (needs the teacher's body)
    projector/random   `--extractor random`: the same on the teacher's architecture freshly
                       initialised from the seed (0 bytes for the extractor)
    projector/random+lora  the same plus LoRA rank `--body-rank` on every extractor kernel

Runs (or resumes) `jaxdd teacher`, `jaxdd baseline random` and the `jaxdd relabel` runs in
benchmarks/runs/; prints one JSON line per finished row and writes
benchmarks/results/hello_cpu.json after each (`complete` once all four rows are in;
`--resume --rows a,b` reruns rows a, b and keeps the others).
Reduced budgets (say so in any table): students `--epochs` (SRe2L: 300), `--seeds`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, environment, write  # noqa: E402
from sm_fmnist import RUNS, ROOT, jaxdd  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=100, help="student epochs (SRe2L: 300)")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--teacher-epochs", type=int, default=1, help="the preset trains 3")
    ap.add_argument("--rank", type=int, default=4)
    ap.add_argument("--body-rank", type=int, default=2)
    ap.add_argument("--fit-epochs", type=int, default=300)
    ap.add_argument("--rows", default="stored,teacher,random,random_lora")
    ap.add_argument("--tag", default="hello_cpu")
    ap.add_argument("--collect", action="store_true",
                    help="run no relabel: take each row's latest result recorded in the "
                         "artefact's evaluations.json (a run cut short by a time limit)")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of an earlier result file that --rows does not name")
    args = ap.parse_args()
    config = os.path.join(ROOT, "configs/sre2l/fashion_mnist_cpu.py")
    sets = ["--set", f"teacher.epochs={args.teacher_epochs}"]
    tdir = os.path.join(RUNS, f"{args.tag}-teacher")
    rand = os.path.join(RUNS, f"{args.tag}-random-ipc{args.ipc}")

    teacher, teacher_wall = jaxdd("teacher", "--config", config, "--out", tdir, *sets)
    if not args.collect:
        jaxdd("baseline", "random", "--dataset", "fashion_mnist", "--ipc", str(args.ipc),
              "--out", rand, "--seed", "0", "--overwrite")
    kd = ["--teacher", tdir, "--recipe", "sre2l", "--epochs", str(args.epochs),
          "--seeds", str(args.seeds), "--seed", "0", "--protocol", "cpu"]
    proj = ["--labels", "projector", "--rank", str(args.rank),
            "--fit-epochs", str(args.fit_epochs)]
    runs = {"stored": ["--mode", "stored"],
            "teacher": proj + ["--extractor", "teacher"],
            "random": proj + ["--extractor", "random"],
            "random_lora": proj + ["--extractor", "random", "--body-rank", str(args.body_rank)]}
    todo = args.rows.split(",")
    path = os.path.join(RESULTS, f"{args.tag}.json")
    rows = []
    if args.resume and os.path.exists(path):  # keep the finished rows of an earlier run
        with open(path) as f:
            rows = [r for r in json.load(f)["rows"] if r["row"] not in todo]
    for name in todo:
        if args.collect:  # the relabel results the artefact recorded (evaluations.json)
            r, wall = recorded(rand, name, args), None
        else:
            r, wall = jaxdd("relabel", rand, *kd, *runs[name])
        p = r.get("projector") or {}
        rows.append({
            "labels": "stored fp16 teacher logits" if name == "stored" else
                      f"projector rank {args.rank}, extractor {p['extractor']}"
                      + (f", LoRA rank {p['body_rank']} on its kernels" if p.get("body_rank") else ""),
            "row": name, "accuracy_mean": r["accuracy_mean"], "accuracy_std": r["accuracy_std"],
            "accuracies": r["accuracies"], "label_bytes": r["label_bytes"],
            "labels_file_bytes": r["labels_file_bytes"],
            "label_bytes_if_stored": r["label_bytes_if_stored"], "image_bytes": r["image_bytes"],
            "extractor_bytes_extra": p.get("extractor_bytes_extra", 0),
            "extractor_needs": p.get("extractor_needs", "the stored labels only"),
            "top1_agreement_first_epoch": p.get("top1_agreement"),
            "kl_first_epoch": p.get("kl"), "fit_loss_first": p.get("fit_loss_first"),
            "fit_loss_last": p.get("fit_loss_last"), "fit_seconds": p.get("fit_seconds"),
            "seconds": r["seconds"], "wall_seconds": wall})
        report(args, teacher, teacher_wall, rows, done={r["row"] for r in rows} >= set(runs))


def recorded(art: str, name: str, args) -> dict:
    """The latest `relabel` result of row `name` (same epochs, seeds, rank) in the artefact's
    evaluations.json: what a run cut short by a time limit had finished."""
    with open(os.path.join(art, "evaluations.json")) as f:
        evs = json.load(f)

    def match(e):
        p = e.get("projector") or {}
        if e.get("epochs") != args.epochs or e.get("seeds") != args.seeds:
            return False
        if name == "stored":
            return e.get("labels", "teacher") == "teacher" and e.get("mode") == "stored"
        want = ("teacher" if name == "teacher" else "random",
                args.body_rank if name == "random_lora" else 0, args.rank, args.fit_epochs)
        return (e.get("labels") == "projector"
                and (p["extractor"], p["body_rank"], p["rank"], p["fit_epochs"]) == want)

    found = [e for e in evs if match(e)]
    if not found:
        raise SystemExit(f"no recorded relabel result for row {name!r} in {art}")
    return found[-1]


def report(args, teacher: dict, teacher_wall: float, rows: list, done: bool) -> None:
    """Write the result (after every row: a cut-short run keeps its finished rows)."""
    write(args.tag, {
        "benchmark": "hello_fmnist", "dataset": "fashion_mnist", "ipc": args.ipc,
        "synthetic_set": "random real subset (jaxdd baseline random, seed 0)",
        "budget": f"reduced: teacher {args.teacher_epochs} epoch(s) (preset 3), students "
                  f"{args.epochs} epochs (SRe2L 300), {args.seeds} seeds; timed under load",
        "student": {"recipe": "sre2l", "protocol": "cpu", "epochs": args.epochs,
                    "seeds": args.seeds, "temperature": 20.0},
        "projector": {"rank": args.rank, "fit_epochs": args.fit_epochs,
                      "body_rank": args.body_rank, "fit_loss": "kd (KL at T=20)",
                      "dtype": "float16"},
        "teacher": {"model": teacher["model"], "test_accuracy": teacher["test_accuracy"],
                    "epochs": args.teacher_epochs, "wall_seconds": teacher_wall},
        "rows": rows, "complete": done, "collected_from_evaluations": args.collect,
        "environment": environment()})


if __name__ == "__main__":
    main()
