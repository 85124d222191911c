"""Cross-architecture Fashion-MNIST table (issue #14): distilled IPC-10 sets trained on the
references' architectures, next to a random real subset of the same size.

    python benchmarks/cross_arch_fmnist.py [--sets random,dm,mtt,mtt@0.01] [--ipc 10]
        [--seeds 3] [--models convnet,lenet,alexnet,vgg11,resnet18_ap] [--protocol cpu] [--redo]

Each set is made once with the CLI, as a user would (`jaxdd baseline random`, or
`jaxdd distill --config <the method's cpu preset> --no-eval`), in
benchmarks/runs/cross_arch/<set>/; its artefact (the images, ~0.4 MB) is then kept in
git under benchmarks/results/cross_arch/<set>/, and evaluated as

    jaxdd evaluate <artefact> --protocol cpu --seeds S --models convnet,lenet,alexnet,...

run here one model per command, so that a long run resumes model by model

(every network from the same seed keys, on the same set, at the set's learned lr if it has
one, as MTT's `--eval_mode M` does; `SET@LR`: the same set trained at LR instead,
`jaxdd evaluate --lr LR`, e.g. `mtt@0.01`, the protocol's lr, for the networks that the
learned lr, tuned on the ConvNet, makes diverge). The kept sets and each model's evaluation
(benchmarks/results/cross_arch/<set>.<protocol>.s<seeds>.<model>.json) are committed, so a
run resumes model by model in a later session on another machine, on the very same images;
--redo starts a set again. All kept results are collected
into benchmarks/results/cross_arch_fmnist.json (one JSON line) and a markdown table
(cross_arch_fmnist.md). Seconds are wall seconds of the CLI commands on this shared 2-core
machine (flagged when other jobs ran): upper bounds, not timings.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS, ROOT, RUNS, environment, run_cli, write  # noqa: E402

HERE = os.path.join(RUNS, "cross_arch")        # distillation runs (outside git)
KEPT = os.path.join(RESULTS, "cross_arch")     # the sets and per-model results (in git)
MODELS = "convnet,lenet,alexnet,vgg11,resnet18_ap"
# set -> the command that makes it (the method's reduced `cpu` preset; `random`: the baseline)
SETS = {
    "random": None,
    "dm": "configs/classic/dm_fashion_mnist_cpu.py",
    "mtt": "configs/mtt/fashion_mnist_cpu.py",
}


def _load_avg() -> float:
    return round(os.getloadavg()[0], 2)


def _split(name: str) -> tuple[str, str | None]:
    """'mtt@0.01' -> ('mtt', '0.01'); 'mtt' -> ('mtt', None)."""
    base, _, lr = name.partition("@")
    if lr:
        float(lr)   # a number, or a ValueError naming it
    return base, lr or None


def make_set(name: str, ipc: int, redo: bool) -> dict:
    """The set's artefact (made once); returns how it was made."""
    run = os.path.join(HERE, name)
    info_path = os.path.join(KEPT, f"{name}.made.json")
    if os.path.exists(info_path) and not redo:
        with open(info_path) as f:
            return json.load(f)
    if os.path.exists(run):
        shutil.rmtree(run)
    if SETS[name] is None:
        argv = ["baseline", "random", "--dataset", "fashion_mnist", "--ipc", str(ipc),
                "--seed", "0", "--out", os.path.join(run, "artefact"), "--quiet"]
    else:
        argv = ["distill", "--config", SETS[name], "--ipc", str(ipc), "--out", run,
                "--no-eval", "--quiet"]
    load0 = _load_avg()
    res, sec = run_cli(*argv)
    kept = os.path.join(KEPT, name)
    if os.path.exists(kept):
        shutil.rmtree(kept)
    shutil.copytree(os.path.join(run, "artefact"), kept)
    info = {"set": name, "command": "jaxdd " + " ".join(argv).replace(ROOT + "/", ""),
            "artefact": os.path.relpath(kept, ROOT),
            "distill_seconds": res.get("distill_seconds"), "wall_seconds": sec,
            "load_before": load0, "load_after": _load_avg()}
    os.makedirs(KEPT, exist_ok=True)
    with open(info_path, "w") as f:
        json.dump(info, f)
    return info


def evaluate_set(name: str, made: dict, models: str, protocol: str, seeds: int,
                 redo: bool, collect_only: bool = False) -> dict | None:
    """One `jaxdd evaluate --models M` per model (each kept in its own file, so a long run
    resumes model by model), merged into one table."""
    per_model = [evaluate_model(name, made, m, protocol, seeds, redo, collect_only)
                 for m in models.split(",")]
    per_model = [pm for pm in per_model if pm is not None]
    if not per_model:
        return None
    for pm in per_model:
        pm["table"].setdefault("lr_source", "learned" if pm["table"].get("lr") else None)
    table = dict(per_model[0]["table"], rows=[r for pm in per_model for r in pm["table"]["rows"]])
    return {"set": name, "models": models, "made": made,
            "commands": [pm["command"] for pm in per_model], "table": table,
            "wall_seconds": round(sum(pm["wall_seconds"] for pm in per_model), 1),
            "load": [[pm["load_before"], pm["load_after"]] for pm in per_model]}


def evaluate_model(name: str, made: dict, model: str, protocol: str, seeds: int,
                   redo: bool, collect_only: bool = False) -> dict | None:
    """The kept result of (set, model), made first if missing (collect_only: None)."""
    base, lr = _split(name)
    tag = "" if lr is None else f".lr{lr}"
    out = os.path.join(KEPT, f"{base}.{protocol}.s{seeds}{tag}.{model}.json")
    if os.path.exists(out) and not redo:
        with open(out) as f:
            return json.load(f)
    if collect_only:
        return None
    argv = ["evaluate", os.path.join(ROOT, made["artefact"]), "--protocol", protocol,
            "--seeds", str(seeds), "--models", model, "--quiet"]
    if lr is not None:
        argv += ["--lr", lr]
    load0 = _load_avg()
    res, sec = run_cli(*argv)
    result = {"command": "jaxdd " + " ".join(argv).replace(ROOT + "/", ""), "table": res,
              "wall_seconds": sec, "load_before": load0, "load_after": _load_avg()}
    with open(out, "w") as f:
        json.dump(result, f)
    return result


def markdown(results: list[dict], models: list[str]) -> str:
    head = results[0]["table"]
    lines = [f"# Cross-architecture Fashion-MNIST, IPC {head.get('ipc')}, protocol "
             f"{head.get('protocol')}, {head.get('seeds')} seeds (final-epoch test accuracy, %)",
             "", "| set | " + " | ".join(models) + " |", "|---|" + "---|" * len(models)]
    for r in results:
        by = {row["model"]: row for row in r["table"]["rows"]}
        cells = [f"{100 * by[m]['accuracy_mean']:.1f} ± {100 * by[m]['accuracy_std']:.1f}"
                 if m in by else "-" for m in models]
        lr = r["table"].get("lr")
        how = "" if lr is None else f" (lr {lr:.4g}, {r['table'].get('lr_source')})"
        lines.append(f"| {_split(r['set'])[0]}{how} | " + " | ".join(cells) + " |")
    params = {row["model"]: row["params"] for r in results for row in r["table"]["rows"]}
    lines += ["", "Parameters: " + ", ".join(f"{m} {params[m]:,}" for m in models if m in params),
              "", "Sets: " + "; ".join(f"{r['set']}: `{r['made']['command']}`" for r in results
                                     if "@" not in r["set"]),
              "", "lr: learned = the set's own (MTT's learned lr, as `--eval_mode M` trains "
                  "every network); --lr = `jaxdd evaluate --lr`; none: the protocol's 0.01."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sets", default=",".join(SETS))
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--models", default=MODELS)
    p.add_argument("--protocol", default="cpu")
    p.add_argument("--redo", action="store_true")
    p.add_argument("--collect-only", action="store_true",
                   help="train nothing: the table from the kept results (missing cells '-')")
    a = p.parse_args(argv)
    names = [s for s in a.sets.split(",") if s]
    unknown = sorted({_split(n)[0] for n in names} - set(SETS))
    if unknown:
        raise SystemExit(f"cross_arch_fmnist: error: unknown set(s) {unknown}; use {sorted(SETS)}"
                         f", each optionally @LR")
    models = a.models.split(",")
    if a.collect_only:
        made = {n: m for n in names if (m := _made(n)) is not None}
        collect(names, made, models, a, models)
        return 0
    made = {name: make_set(_split(name)[0], a.ipc, a.redo) for name in names}
    for i, model in enumerate(models):  # model by model over every set: cheap nets first
        for name in names:
            evaluate_model(name, made[name], model, a.protocol, a.seeds, a.redo)
        collect(names, made, models, a, models[:i + 1])
    return 0


def _made(name: str) -> dict | None:
    path = os.path.join(KEPT, f"{_split(name)[0]}.made.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def collect(names: list[str], made: dict, models: list[str], a, done: list[str]) -> None:
    """cross_arch_fmnist.{md,json} from the kept results of `done` models (missing: '-')."""
    results = [evaluate_set(n, made[n], ",".join(done), a.protocol, a.seeds, False, True)
               for n in names if n in made]
    results = [r for r in results if r is not None]
    have = {(r["set"], row["model"]) for r in results for row in r["table"]["rows"]}
    missing = [f"{n}:{m}" for n in names for m in models if (n, m) not in have]
    with open(os.path.join(RESULTS, "cross_arch_fmnist.md"), "w") as f:
        f.write(markdown(results, models))
    write("cross_arch_fmnist", {"benchmark": "cross_arch_fmnist", "ipc": a.ipc,
                                 "protocol": a.protocol, "seeds": a.seeds,
                                 "models": models, "sets": results,
                                 "complete": not missing, "missing": missing,
                                 "timing": "wall seconds on a shared 2-core CPU "
                                           "(load before/after recorded)",
                                 "env": environment()})


if __name__ == "__main__":
    sys.exit(main())
