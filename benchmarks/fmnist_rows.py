"""Fashion-MNIST rows for methods that had none (#18): RS2, Dataset Quantization, model soups,
weight selection and AST, each through the `jaxdd` CLI under the `cpu` protocol.

    python benchmarks/fmnist_rows.py [--rows rs2,dq,soups,ws,ast] [--seeds 3] [--redo]

Every row is run once and kept in benchmarks/runs/fmnist_rows/<row>.json, so an interrupted
run resumes (a kept row is skipped unless --redo) and rows can run in separate processes.
After every row all kept rows are collected into benchmarks/results/fmnist_rows_cpu.json
(one JSON line printed). The budgets are reduced to fit a shared 2-core CPU and are written
into each row; times are wall seconds of the CLI command, timed under load (other jobs on
the same 2 cores), so they only bound the cost from above.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, ROOT, RUNS, environment, run_cli, write  # noqa: E402

ROWS = ("rs2", "dq", "soups", "ws", "ast")
HERE = os.path.join(RUNS, "fmnist_rows")
LOAD = "timed under load (shared 2-core CPU)"
RS2_RATIO, RS2_EPOCHS = 0.1, 20             # 20 RS2 epochs of 10 % = 2 full epochs of steps
EVAL_EPOCHS = 60                            # student epochs (the cpu protocol's 300, reduced)
TEACHER, TEACHER_EPOCHS, STUDENT = "convnet_d3_w64_bn", 1, "convnet_d3_w32_bn"
AST_SET = ["iterations=30", "experts.num_experts=1", "experts.epochs=3", "mtt.max_start=1",
           "eval.seeds=2"]                  # preset: 200 iterations, 2 experts of 4 epochs
REDUCED_EVAL = (f"the cpu protocol with {EVAL_EPOCHS} student epochs instead of 300 (reduced; "
                f"lr x0.1 at half, as the protocol's schedule)")


def _acc(r: dict) -> dict:
    return {"accuracy_mean": r["accuracy_mean"], "accuracy_std": r["accuracy_std"],
            "accuracies": r["accuracies"], "seeds": r["seeds"]}


def _fresh(name: str) -> str:
    """An empty run directory for one command (a crashed attempt's leftovers removed)."""
    path = os.path.join(HERE, name)
    if os.path.exists(path):
        shutil.rmtree(path)
    return path


def _cmd(argv: list[str]) -> str:
    return "jaxdd " + " ".join(a if " " not in a else repr(a) for a in argv)


def row_rs2(seeds: int) -> dict:
    out = os.path.join(HERE, "rs2_result.json")
    argv = ["rs2", "--dataset", "fashion_mnist", "--ratio", str(RS2_RATIO), "--epochs",
            str(RS2_EPOCHS), "--protocol", "cpu", "--seeds", str(seeds), "--out", out,
            "--overwrite", "--quiet"]
    if os.path.exists(out):   # finished by an earlier, interrupted invocation: reuse it
        with open(out) as f:
            res, sec = json.load(f), None
    else:
        res, sec = run_cli(*argv)
    part = {k: {"accuracy_mean": res[k]["accuracy_mean"], "accuracy_std": res[k]["accuracy_std"],
                "time_to_accuracy": res[k]["time_to_accuracy"],
                **{f: res[k][f] for f in ("accuracies", "epochs", "steps", "examples_per_epoch",
                                          "train_seconds", "curve") if f in res[k]}}
            for k in ("rs2", "full")}
    return {"row": "rs2", "command": _cmd(argv), "protocol": "cpu (full-data recipe)",
            "seeds": seeds, "budget": f"ratio {RS2_RATIO}, {RS2_EPOCHS} RS2 epochs (the steps of "
            f"{RS2_EPOCHS * RS2_RATIO:g} full epochs; the preset default would be 50); full data "
            "at the same steps. Reduced.",
            "target_accuracy": res["target_accuracy"], **part, "seconds": sec, "timing": LOAD}


def row_dq(seeds: int) -> dict:
    out = _fresh("dq10")
    sargv = ["baseline", "dq", "--dataset", "fashion_mnist", "--ipc", "10", "--bins", "10",
             "--out", out, "--quiet"]
    _, ssec = run_cli(*sargv)
    argv = _eval_argv(out, seeds)
    res, sec = run_cli(*argv)
    _, plain, _, _ = _random10(seeds)
    ref = os.path.join(os.path.dirname(HERE), "..", "results", "baselines_cpu.json")
    with open(ref) as f:
        base = {r["method"]: r for r in json.load(f)["rows"] if r["ipc"] == 10}
    return {"row": "dq", "select_command": _cmd(sargv), "select_seconds": ssec,
            "command": _cmd(argv), "protocol": "cpu", "seeds": seeds, "ipc": 10,
            "budget": REDUCED_EVAL + "; DQ on preprocessed pixels, 10 bins",
            **_acc(res), "seconds": sec, "timing": LOAD,
            "random_same_budget": _acc(plain),
            "full_protocol_rows": {m: {"accuracy_mean": base[m]["accuracy_mean"],
                                       "accuracy_std": base[m]["accuracy_std"]}
                                   for m in ("random", "herding", "kcenter") if m in base},
            "full_protocol_source": "benchmarks/results/baselines_cpu.json (300 epochs, 3 seeds;"
                                    " not the same budget)"}


def _eval_argv(art: str, seeds: int, *extra: str) -> list[str]:
    return ["evaluate", art, "--protocol", "cpu", "--seeds", str(seeds), "--epochs",
            str(EVAL_EPOCHS), *extra, "--quiet"]


def _random10(seeds: int) -> tuple[str, dict, float, list[str]]:
    """The cheap artefact of the soups and weight-selection rows: a random IPC 10 subset,
    evaluated plainly (cpu protocol) once."""
    out = os.path.join(HERE, "random10")
    done = os.path.join(HERE, "random10_plain.json")
    sargv = ["baseline", "random", "--dataset", "fashion_mnist", "--ipc", "10", "--out", out,
             "--quiet"]
    argv = _eval_argv(out, seeds)
    if os.path.exists(done):
        with open(done) as f:
            d = json.load(f)
        if d["res"]["seeds"] == seeds:
            return out, d["res"], d["seconds"], argv
    if not os.path.exists(os.path.join(out, "arrays.npz")):
        _fresh("random10")
        run_cli(*sargv)
    res, sec = run_cli(*argv)
    with open(done, "w") as f:
        json.dump({"res": res, "seconds": sec}, f)
    return out, res, sec, argv


def row_soups(seeds: int) -> dict:
    art, plain, plain_sec, base_argv = _random10(seeds)
    row = {"row": "soups", "artefact": "random IPC 10 subset (jaxdd baseline random, seed 0)",
           "protocol": "cpu", "seeds": seeds,
           "budget": REDUCED_EVAL,
           "plain": {"command": _cmd(base_argv), **_acc(plain), "seconds": plain_sec}}
    for kind in ("uniform", "greedy"):
        argv = _eval_argv(art, seeds, "--soup", kind)
        res, sec = run_cli(*argv)
        s = res["soup"]
        row[kind] = {"command": _cmd(argv), "soup_accuracy": s["accuracy"],
                     "soup_val_accuracy": s.get("val_accuracy"), "members": s["members"],
                     "students_shared_init": _acc(res), "seconds": sec}
    row["timing"] = LOAD
    return row


def row_ws(seeds: int) -> dict:
    art, _, _, base_argv = _random10(seeds)
    tdir = os.path.join(HERE, "teacher_w64")
    targv = ["teacher", "--dataset", "fashion_mnist", "--model", TEACHER, "--epochs",
             str(TEACHER_EPOCHS), "--out", tdir, "--quiet"]
    tdone = os.path.join(HERE, "teacher_w64.json")
    if os.path.exists(tdone):
        with open(tdone) as f:
            t = json.load(f)
        tres, tsec = t["res"], t["seconds"]
    else:
        _fresh("teacher_w64")
        tres, tsec = run_cli(*targv)
        with open(tdone, "w") as f:
            json.dump({"res": tres, "seconds": tsec}, f)
    row = {"row": "ws", "artefact": "random IPC 10 subset (jaxdd baseline random, seed 0)",
           "artefact_command": _cmd(base_argv), "protocol": f"cpu with student {STUDENT}",
           "seeds": seeds, "budget": f"teacher {TEACHER} trained {TEACHER_EPOCHS} epochs "
           "(reduced; the README example uses width 128, 10 epochs); " + REDUCED_EVAL,
           "teacher": {"command": _cmd(targv), "model": TEACHER,
                       "test_accuracy": tres.get("test_accuracy"), "seconds": tsec}}
    for name, extra in (("plain", []), ("weight_selection", ["--init",
                                                             f"weight-selection:{tdir}"])):
        argv = _eval_argv(art, seeds, "--model", STUDENT, *extra)
        res, sec = run_cli(*argv)
        row[name] = {"command": _cmd(argv), **_acc(res), "seconds": sec,
                     **({"init_selection": res["init_selection"]}
                        if "init_selection" in res else {})}
    row["timing"] = LOAD
    return row


def row_ast(seeds: int) -> dict:
    out = _fresh("ast_ipc1")
    argv = ["distill", "--config", "configs/mtt/ast_fashion_mnist_cpu.py", "--ipc", "1",
            "--out", out, "--quiet", *sum((["--set", s] for s in AST_SET), [])]
    res, sec = run_cli(*argv)
    ev = res["evaluations"]
    ref_path = os.path.join(os.path.dirname(HERE), "..", "results", "tm_fmnist.json")
    with open(ref_path) as f:
        ref = next(r for r in json.load(f)["rows"] if r["ipc"] == 1)
    return {"row": "ast", "command": _cmd(argv), "ipc": 1, "protocol": "cpu",
            "seeds": ev["artefact"]["seeds"],
            "budget": "configs/mtt/ast_fashion_mnist_cpu.py reduced by " + ", ".join(AST_SET) +
            " (preset: 200 iterations, 2 experts of 4 epochs, max_start 2, 3 seeds); its expert "
            "buffer trained first; the final evaluation is the full cpu protocol (300 epochs)",
            "artefact": _acc(ev["artefact"]),
            **({"random": _acc(ev["random"])} if "random" in ev else {}),
            "distill_seconds": res.get("distill_seconds"), "seconds": sec, "timing": LOAD,
            "next_to": {"mtt_cpu_ipc1": {"accuracy_mean": ref["artefact"]["accuracy_mean"],
                                         "accuracy_std": ref["artefact"]["accuracy_std"],
                                         "budget": "configs/mtt/fashion_mnist_cpu.py, 200 "
                                                   "iterations (full preset)"},
                        "source": "benchmarks/results/tm_fmnist.json"}}


def committed() -> dict:
    """Rows already in benchmarks/results/fmnist_rows_cpu.json (a fresh checkout has no
    benchmarks/runs/, and its committed rows must survive a run of the missing ones)."""
    path = os.path.join(RESULTS, "fmnist_rows_cpu.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        return json.load(f).get("rows", {})


def collect() -> dict:
    rows = committed()
    for name in ROWS:
        path = os.path.join(HERE, f"{name}.json")
        if os.path.exists(path):
            with open(path) as f:   # commands with repository-relative paths
                rows[name] = json.loads(f.read().replace(ROOT + "/", ""))
    return {"benchmark": "fmnist_rows", "dataset": "fashion_mnist", "protocol": "cpu",
            "rows": rows, "missing": [r for r in ROWS if r not in rows],
            "note": "reduced budgets (see each row); " + LOAD, "environment": environment()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default=",".join(ROWS))
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--redo", action="store_true", help="run kept rows again")
    args = ap.parse_args()
    names = [r.strip() for r in args.rows.split(",") if r.strip()]
    bad = [r for r in names if r not in ROWS]
    if bad:
        raise SystemExit(f"unknown rows {bad}; choose from {','.join(ROWS)}")
    os.makedirs(HERE, exist_ok=True)
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    fns = {"rs2": row_rs2, "dq": row_dq, "soups": row_soups, "ws": row_ws, "ast": row_ast}
    for name in names:
        path = os.path.join(HERE, f"{name}.json")
        if (os.path.exists(path) or name in committed()) and not args.redo:
            print(f"{name}: kept", file=sys.stderr, flush=True)
            continue
        row = fns[name](args.seeds if name != "rs2" else min(args.seeds, 2))
        with open(path, "w") as f:
            json.dump(row, f, default=float)
        print(json.dumps(row, default=float), file=sys.stderr, flush=True)
        write("fmnist_rows_cpu", collect())
    write("fmnist_rows_cpu", collect())   # the committed rows plus every kept one


if __name__ == "__main__":
    main()
