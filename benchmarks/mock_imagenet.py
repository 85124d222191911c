"""jaxdd end to end at ImageNet's class count on a MOCKED imagenet2012
(`tfds.testing.mock_data`: 1000 classes, variable-size random images, streamed at
`--image-size` px), through the CLI: what each stored format holds at K = 1000.

    python benchmarks/mock_imagenet.py [--num-examples 1000] [--image-size 16]
                                       [--epochs 4] [--seeds 1]

Rows (every command is `jaxdd ...` run in a subprocess inside the mock):
    infer                 `recover --config configs/sre2l/infer_imagenet1k.py --ipc 2` (one
                          base set + one compensator per teacher, 2 iterations) ->
                          `relabel` (static labels: one fp16 label per instance)
    sre2l: fp16           `recover --config configs/sre2l/sre2l_imagenet1k.py --ipc 1`
                          (2 iterations from noise) -> `relabel --mode stored` (fp16 labels
                          of every epoch's augmentations)
    top10-uniform, int8, int4, prune (--label-epochs 1), projector (HeLlO, rank 4, the
                          teacher's body): the same recovered set, other label formats
The teacher is a ConvNet-D3-W16-BN trained 1 epoch on the mock (`jaxdd teacher`), the
students ConvNet-D3-W16 (`--epochs` epochs, `--seeds` seeds).

THE ACCURACIES ARE CHANCE (about 0.1 %): the mock's pixels and labels are random. The rows
show that the whole pipeline runs at 1000 classes and the bytes each format stores at
ImageNet's K (images and compensators at `--image-size` px: scale by (224 / size)^2 for
224 px; label bytes do not depend on the image size). The mock's labels are random, so a
class may have no record; the runner gives record i the class i mod 1000 in
`labels()` (the per-class index INFER draws its base images from), as
tests/test_infer.py's mock-ImageNet test does.

Prints one JSON line; writes benchmarks/results/<tag>.json and <tag>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, ROOT, RUNS, environment, write  # noqa: E402

TEACHER_MODEL = "convnet_d3_w16_bn"
STUDENT = "convnet_d3_w16"
SRE2L = os.path.join(ROOT, "configs/sre2l/sre2l_imagenet1k.py")
INFER = os.path.join(ROOT, "configs/sre2l/infer_imagenet1k.py")
# name -> extra `jaxdd relabel` flags on the SRe2L IPC 1 set (stored labels unless projector)
GRID = {
    "fp16": [],
    "top10-uniform": ["--top-k", "10"],
    "int8": ["--label-dtype", "int8"],
    "int4": ["--label-dtype", "int4"],
    "prune": ["--label-epochs", "1"],
    "projector": ["--labels", "projector", "--rank", "4", "--extractor", "teacher",
                  "--fit-epochs", "2"],
}


def _in_mock(num_examples: int, argv: list[str]) -> int:
    """`jaxdd ARGV` inside tfds.testing.mock_data (this process: the benchmark's child)."""
    import numpy as np
    import tensorflow_datasets as tfds

    from jaxdd import cli
    from jaxdd.data import stream

    # Random mock labels leave classes empty; record i of a split is class i mod K.
    stream.TfdsSource.labels = lambda self: (np.arange(len(self), dtype=np.int64)
                                             % len(self.class_names))
    with tfds.testing.mock_data(num_examples=num_examples):
        return cli.main(argv)


def jaxdd(num_examples: int, tfds_dir: str, *argv: str) -> tuple[dict, float]:
    """Run `jaxdd ARGV --json` in the mock; (its JSON result, wall seconds)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--in-mock", str(num_examples), "--",
           *argv, "--json", "--quiet"]
    print("$ jaxdd " + " ".join(argv), file=sys.stderr, flush=True)
    t0 = time.time()
    env = dict(os.environ, TFDS_DATA_DIR=tfds_dir)
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): jaxdd {' '.join(argv)}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), round(time.time() - t0, 1)


def _row(name: str, method: str, r: dict, wall: float) -> dict:
    proj = r.get("projector") or {}
    return {"name": name, "method": method, "ipc": r["ipc"], "labels": r["labels"],
            "mode": r["mode"], "top_k": r["top_k"], "top_k_rest": r["top_k_rest"],
            "label_dtype": r["label_dtype"], "stored_label_epochs": r["stored_label_epochs"],
            "image_bytes": r["image_bytes"], "compensator_bytes": r.get("compensator_bytes", 0),
            "label_bytes": 0 if proj else r["label_bytes"],
            "projector_bytes": proj.get("bytes", 0), "labels_file_bytes": r["labels_file_bytes"],
            "accuracy_mean": r["accuracy_mean"], "accuracy_std": r["accuracy_std"],
            "accuracies": r["accuracies"], "student": r["model"], "epochs": r["epochs"],
            "batch_size": r["batch_size"], "relabel_seconds": r["seconds"],
            "wall_seconds": wall,
            **({"projector": {k: proj[k] for k in ("rank", "extractor", "extractor_needs",
                                                   "fit_epochs", "top1_agreement")}}
               if proj else {})}


def table(rows: list[dict]) -> str:
    lines = ["| row | set | labels | image bytes | compensator bytes | label bytes | "
             "projector bytes | accuracy % (chance) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["labels"] == "projector":
            how = f"projector (rank {r['projector']['rank']}, {r['projector']['extractor']} body)"
        else:
            how = f"{r['mode']} {r['label_dtype']}"
            how += f", top-{r['top_k']} ({r['top_k_rest']})" if r["top_k"] else ""
            how += (f", {r['stored_label_epochs']} of {r['epochs']} epochs"
                    if r["mode"] == "stored" else "")
        lines.append(f"| {r['name']} | {r['method']} IPC {r['ipc']} | {how} | "
                     f"{r['image_bytes']:,d} | {r['compensator_bytes']:,d} | "
                     f"{r['label_bytes']:,d} | {r['projector_bytes']:,d} | "
                     f"{100 * r['accuracy_mean']:.2f} |")
    return "\n".join(lines)


def markdown(result: dict, epochs: int) -> str:
    size = result["image_size"]
    return (f"# jaxdd on a mocked ImageNet (1000 classes, {size} px)\n\n{result['note']}.\n\n"
            f"Budget: {result['budget']}. Bytes: images and compensators float32 at {size} px "
            f"(x {(224 / size) ** 2:g} at 224 px); labels as stored, independent of the image "
            f"size: the stored (per-epoch) rows grow with the student epochs (here {epochs}; "
            f"SRe2L's 300 is x {300 / epochs:g}), INFER's static labels and the projector do "
            f"not. Generated by benchmarks/mock_imagenet.py.\n\n{result['table']}\n")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--num-examples", type=int, default=1000, help="records per mock split")
    ap.add_argument("--image-size", type=int, default=16)
    ap.add_argument("--epochs", type=int, default=4, help="student epochs (SRe2L: 300)")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--iterations", type=int, default=2, help="recover / INFER iterations")
    ap.add_argument("--rows", nargs="+", default=["infer", *GRID],
                    choices=["infer", *GRID])
    ap.add_argument("--tag", default="mock_imagenet_cpu")
    args = ap.parse_args()
    n, size = args.num_examples, args.image_size
    tfds_dir = os.path.join(RUNS, f"{args.tag}-tfds")
    tdir = os.path.join(RUNS, f"{args.tag}-teacher")
    run = lambda *a: jaxdd(n, tfds_dir, *a)  # noqa: E731
    tsets = ["--set", f"image_size={size}", "--set", f"teacher.model={TEACHER_MODEL!r}",
             "--set", "teacher.train_if_missing=True", "--set", "teacher.epochs=1",
             "--set", "teacher.batch_size=16", "--set", "teacher.lr=0.01"]
    teacher, teacher_wall = run("teacher", "--config", SRE2L, "--out", tdir, *tsets)
    student = ["--model", STUDENT, "--epochs", str(args.epochs), "--seeds", str(args.seeds),
               "--seed", "0", "--batch-size", "200"]
    rows, times = [], {"teacher_wall_seconds": teacher_wall}
    if "infer" in args.rows:
        out = os.path.join(RUNS, f"{args.tag}-infer-ipc2")
        rec, times["infer_recover_wall_seconds"] = run(
            "recover", "--config", INFER, "--ipc", "2", "--out", out, "--teacher", tdir, *tsets,
            "--set", "teacher.num_teachers=1", "--set", f"infer.iterations={args.iterations}")
        r, wall = run("relabel", out, "--teacher", tdir, "--mode", "static", *student)
        rows.append({**_row("infer", "infer", r, wall),
                     "base_sets": rec["base_sets"],
                     "instances_per_class": rec["instances_per_class"]})
        print(rows[-1], file=sys.stderr, flush=True)
    grid = [g for g in GRID if g in args.rows]
    if grid:
        out = os.path.join(RUNS, f"{args.tag}-sre2l-ipc1")
        _, times["sre2l_recover_wall_seconds"] = run(
            "recover", "--config", SRE2L, "--ipc", "1", "--out", out, "--teacher", tdir, *tsets,
            "--set", f"recover.iterations={args.iterations}", "--set", "recover.batch_size=500")
        for name in grid:
            mode = [] if name == "projector" else ["--mode", "stored"]
            r, wall = run("relabel", out, "--teacher", tdir, "--recipe", "sre2l", *mode,
                          *student, *GRID[name])
            rows.append(_row(name, "sre2l", r, wall))
            print(rows[-1], file=sys.stderr, flush=True)
    result = {
        "benchmark": "mock_imagenet", "dataset": "imagenet2012 (tfds.testing.mock_data)",
        "num_classes": 1000, "num_examples_per_split": n, "image_size": size,
        "note": ("MOCKED data: random pixels and random labels, so every accuracy is chance "
                 "(~0.1 %); the rows show the pipeline running at 1000 classes and the bytes "
                 "each format stores at K = 1000, not an accuracy"),
        "budget": (f"tiny: teacher {TEACHER_MODEL} 1 epoch on {n} mock records at {size} px, "
                   f"{args.iterations} recover/INFER iterations (SRe2L 4000, INFER 2000), "
                   f"students {STUDENT} {args.epochs} epochs of batch 200 (SRe2L 300), "
                   f"{args.seeds} seed(s); INFER IPC 2 = 1 base set x 1 teacher (preset IPC "
                   f"10, 3 teachers); timed under load on the 2-core machine"),
        "teacher": {"model": teacher["model"], "dir": os.path.relpath(tdir, ROOT)},
        "rows": rows, "table": table(rows), "times": times, "environment": environment()}
    with open(os.path.join(RESULTS, f"{args.tag}.md"), "w") as f:
        f.write(markdown(result, args.epochs))
    write(args.tag, result)


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--in-mock":
        sys.exit(_in_mock(int(sys.argv[2]), sys.argv[4:]))
    main()
