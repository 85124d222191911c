"""The Fashion-MNIST table at the references' budgets (issue #17): a resumable queue of
cells (method, IPC, protocol) and the markdown table made from their JSON files.

    python benchmarks/fmnist_table.py [--methods dm dc ...] [--ipcs 1 10 50]
        [--protocols cpu mtt] [--results-dir DIR] [--set [METHOD:]KEY=VALUE ...]
    python benchmarks/fmnist_table.py --collect-only      # the table from benchmarks/results/

A cell distils once per (method, IPC) with the method's `configs/*/..fashion_mnist.py`
preset into DIR/runs/<method>-ipc<N> (resumable: `jaxdd distill` resumes from its
checkpoints), then evaluates that artefact under each protocol with `jaxdd evaluate
--protocol P --checkpoint-dir` (RDED: `jaxdd relabel --protocol P --checkpoint-dir`, its KD
students; FRePo: its own protocols, `frepo` for `mtt` and `frepo_cpu` for `cpu`, on its
learned labels; both resumable: a killed evaluation continues from its students' last
save in the run directory), and writes
DIR/fmnist_<method>_ipc<N>_<protocol>.json at once. A cell whose JSON exists is skipped,
so the queue fills the table over several sessions; a second protocol reuses the artefact.
Cells run cheapest first: IPC 1 of every method under `cpu`, then under `mtt`, then IPC 10
and 50; within them in `--methods` order (default QUEUE_ORDER, by estimated cost).
`--set` overrides are recorded in the cell and label it "reduced" in the table.

The table (DIR/fashion_mnist.md) holds every cell with its budget, seconds, seeds and
protocol, the older reduced `cpu`-preset rows (benchmarks/table.py's collect), and the
issue's goals next to the rows. Work files (experts, teachers, runs) go under DIR;
per-cell logs under DIR/logs.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import RESULTS  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IPCS = (1, 10, 50)
PROTOCOLS = ("cpu", "mtt")
SEEDS = {"mtt": 5, "cpu": 3, "frepo": 5, "frepo_cpu": 3, "smoke": 2}   # full: the references' 5
CELL_PREFIX = "fmnist_"

# method -> (preset, artefact inside the run directory, how it is evaluated)
METHODS = {
    "dc": ("configs/classic/dc_fashion_mnist.py", "artefact", "evaluate"),
    "dsa": ("configs/classic/dsa_fashion_mnist.py", "artefact", "evaluate"),
    "dm": ("configs/classic/dm_fashion_mnist.py", "artefact", "evaluate"),
    "datadam": ("configs/classic/datadam_fashion_mnist.py", "artefact", "evaluate"),
    "mtt": ("configs/mtt/fashion_mnist.py", "artefact", "evaluate"),
    "datm": ("configs/mtt/datm_fashion_mnist.py", "artefact", "evaluate"),
    "ftd": ("configs/mtt/ftd_fashion_mnist.py", "artefact_ema", "evaluate"),  # FTD's EMA set
    "rded": ("configs/sre2l/rded_fashion_mnist.py", "artefact", "relabel"),
    # its learned regression targets, evaluated as FRePo's script/eval.py does (MSE, Adam)
    "frepo": ("configs/frepo/fashion_mnist.py", "artefact", "evaluate"),
    # the reference row: a class-balanced random real subset (`jaxdd baseline random`, seed 0)
    "random": (None, "artefact", "baseline"),
}
ORDER = ("random", "dc", "dsa", "dm", "datadam", "mtt", "datm", "ftd", "rded", "frepo")  # rows
# The queue's order within an IPC and protocol: estimated cost at IPC 1 (the presets'
# docstrings), cheapest first; MTT, FTD and DATM first build their experts (~2 h each buffer).
QUEUE_ORDER = ("random", "dsa", "dm", "datadam", "dc", "rded", "frepo", "mtt", "ftd", "datm")
# A method whose labels need their own evaluation: FRePo's learned labels are regression targets
# (MSE), which a CE protocol would softmax flat; its cells take FRePo's own protocols, `frepo`
# (width 128, 1000 epochs, 5 seeds: the full one, in place of `mtt`) and `frepo_cpu` (for `cpu`).
OWN_PROTOCOL = {"frepo": {"mtt": "frepo", "cpu": "frepo_cpu"}}
FULL_PROTOCOLS = ("mtt", "frepo")   # not reduced: the goals count their cells

# ../shared/reference-numbers.md, Fashion-MNIST, ConvNet-D3 (published; each paper's protocol).
PUBLISHED = {
    "dc": (70.5, 82.3, 83.6),
    "dsa": (70.6, 84.6, 88.7),
    "frepo": (75.6, 86.2, 89.6),   # FRePo's own protocol (its paper's Table; `frepo` here)
}
SHOWN_PUBLISHED = {**PUBLISHED, "random": (51.4, 73.8, 82.5)}   # beside the rows (no goal)
BEST_PUBLISHED = {"KIP": (73.5, 86.8, 88.0), "FRePo": (75.6, 86.2, 89.6),
                  "RCIG": (79.8, 88.5, 90.2)}
GOAL = (80.0, 88.0, 90.5)   # issue #17: the best jaxdd row, `mtt` protocol, final epoch


# ---------------------------------------------------------------- cells: names and files

def cell_path(results_dir: str, method: str, ipc: int, protocol: str) -> str:
    return os.path.join(results_dir, f"{CELL_PREFIX}{method}_ipc{ipc}_{protocol}.json")


def own_protocol(method: str, protocol: str) -> str:
    """The protocol `method`'s cells use in place of `protocol` (OWN_PROTOCOL; else itself)."""
    return OWN_PROTOCOL.get(method, {}).get(protocol, protocol)


def queue(methods, ipcs, protocols, per_method: bool = False) -> list[tuple[str, int, str]]:
    """Cheapest first: per IPC (ascending), per protocol (cpu before mtt), every method (FRePo
    under its own protocols, OWN_PROTOCOL). `per_method`: per IPC, each method's every
    protocol before the next method (a finished distillation is evaluated at once)."""
    own = own_protocol
    if per_method:
        return [(m, i, own(m, p)) for i in sorted(ipcs) for m in methods for p in protocols]
    return [(m, i, own(m, p)) for i in sorted(ipcs) for p in protocols for m in methods]



def load_cell(path: str) -> dict | None:
    try:
        with open(path) as f:
            c = json.load(f)
    except (OSError, ValueError):
        return None
    need = ("method", "ipc", "protocol", "accuracy_mean", "accuracy_std", "seeds")
    return c if isinstance(c, dict) and all(k in c for k in need) else None


def _write_json(path: str, obj: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1, default=float)
        f.write("\n")
    os.replace(tmp, path)   # a cell file is complete or absent


# ---------------------------------------------------------------- running a cell

class LoadSampler:
    """1-minute load averages sampled every `every` s while a stage runs (timed under load?)."""

    def __init__(self, every: float = 30.0):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._every = every
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while True:
            self.samples.append(round(os.getloadavg()[0], 2))
            if self._stop.wait(self._every):
                return

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    def summary(self) -> dict:
        s = self.samples or [os.getloadavg()[0]]
        cores = os.cpu_count() or 1
        # our own job accounts for up to `cores` of the load; more means others shared the CPU
        return {"load_max": max(s), "load_mean": round(sum(s) / len(s), 2), "cores": cores,
                "under_load": max(s) > cores + 0.5}


def _run(cmd: list[str], log: str, cwd: str) -> tuple[int, str, float, dict]:
    """Run a jaxdd command (last stdout line: JSON); stderr and stdout go to `log` too."""
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.time()
    with LoadSampler() as ls, open(log, "a") as lf:
        lf.write(f"\n$ {' '.join(cmd)}   # {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC\n")
        lf.flush()
        proc = subprocess.run(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=lf, text=True)
        lf.write(proc.stdout)
    return proc.returncode, proc.stdout, round(time.time() - t0, 1), ls.summary()


def _last_json(stdout: str) -> dict:
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {}


def method_sets(sets: list[str], method: str) -> list[str]:
    """`--set` values for this method: `KEY=VALUE` for all, `METHOD:KEY=VALUE` for one."""
    out = []
    for s in sets:
        head, sep, rest = s.partition(":")
        if sep and "=" not in head:
            if head == method:
                out.append(rest)
        else:
            out.append(s)
    return out


def budget_of(cfg: dict, method: str) -> dict:
    """The distillation budget of a resolved config (what the table prints)."""
    if "selection" in cfg:
        return {"selection": cfg["selection"], "seed": cfg["seed"]}
    b = {"model": cfg.get("model"), "iterations": cfg.get("iterations")}
    if method in ("dc", "dsa"):
        s = cfg.get(method, {})
        b.update(batch_real=s.get("batch_real"), outer_loop=s.get("outer_loop"),
                 inner_loop=s.get("inner_loop"))
    elif method in ("dm", "datadam", "frepo"):
        b.update(batch_real=cfg.get(method, {}).get("batch_real"))
        if method == "frepo":
            b.update(pool_size=cfg["frepo"].get("pool_size"), lr_syn=cfg["frepo"].get("lr_syn"))
    elif method in ("mtt", "datm", "ftd"):
        e, m = cfg.get("experts", {}), cfg.get("mtt", {})
        b.update(experts=e.get("num_experts"), expert_epochs_trained=e.get("epochs"),
                 syn_steps=m.get("syn_steps"), expert_epochs=m.get("expert_epochs"),
                 max_start=m.get("max_start"), batch_syn=m.get("batch_syn"))
    elif method == "rded":
        t, r, rl = cfg.get("teacher", {}), cfg.get("rded", {}), cfg.get("relabel", {})
        b = {"model": t.get("model"), "teacher_epochs": t.get("epochs"), "mipc": r.get("mipc"),
             "num_crop": r.get("num_crop"), "student_epochs": rl.get("epochs", 300)}
    return {k: v for k, v in b.items() if v is not None}


def budget_text(b: dict) -> str:
    if "selection" in b:
        return f"{b['selection']} real subset, seed {b['seed']}"
    if "teacher_epochs" in b:
        return (f"teacher {b['model']} {b['teacher_epochs']} ep, {b.get('mipc')}x"
                f"{b.get('num_crop')} crops, KD {b.get('student_epochs')} ep")
    parts = [f"{b['iterations']} it" if b.get("iterations") else "", b.get("model", "")]
    if "experts" in b:
        parts.append(f"{b['experts']}x{b['expert_epochs_trained']} ep experts, N={b.get('syn_steps')}")
    elif "pool_size" in b:   # FRePo: one real batch of all classes, a pool of online models
        parts.append(f"real batch {b.get('batch_real')}, pool {b['pool_size']}"
                     + (f", lr_syn {b['lr_syn']:g}" if "lr_syn" in b else ""))
    elif "batch_real" in b:
        parts.append(f"real {b['batch_real']}/class")
    return ", ".join(p for p in parts if p)


def _attempt(cmd: list[str], log: str, results_dir: str, att_path: str, ckpt_root: str):
    """Run a resumable command once more. Earlier attempts (a queue stopped mid-run; the
    command resumes from its checkpoints under `ckpt_root`) keep their wall time in
    `att_path`. Returns (rc, stdout, every attempt, whether checkpoints existed that no
    recorded attempt explains: the queue was killed before it could record one)."""
    attempts = (load_json(att_path) or {}).get("attempts", [])
    resumed = bool(glob.glob(os.path.join(ckpt_root, "**", "checkpoints", "*"), recursive=True))
    rc, out, wall, load = _run(cmd, log, results_dir)
    attempts.append({"rc": rc, "wall_seconds": wall, "load": load, "resumed": resumed})
    os.makedirs(os.path.dirname(att_path), exist_ok=True)
    _write_json(att_path, {"attempts": attempts})
    return rc, out, attempts, resumed


def _loads(attempts: list[dict]) -> dict:
    """The last attempt's load summary, under load and load_max over every attempt."""
    return {**attempts[-1]["load"],
            "under_load": any(a["load"]["under_load"] for a in attempts),
            "load_max": max(a["load"]["load_max"] for a in attempts)}


def distill(method: str, ipc: int, results_dir: str, sets: list[str], log: str) -> dict | None:
    """The artefact of (method, IPC): made once, reused by every protocol. Returns its record."""
    preset, _, how = METHODS[method]
    run_dir = os.path.join(results_dir, "runs", f"{method}-ipc{ipc}")
    rec_path = os.path.join(run_dir, "fmnist_distill.json")
    rec = load_json(rec_path)
    if rec is not None:
        return rec
    if how == "baseline":   # no preset: the random subset the distilled rows start from
        import ast
        given = dict(x.split("=", 1) for x in sets)
        if set(given) - {"dataset"}:
            raise SystemExit(f"fmnist_table: error: {method} has no preset; only --set dataset=... "
                             f"applies to it (use METHOD:KEY=VALUE for the others)")
        dataset = ast.literal_eval(given["dataset"]) if "dataset" in given else "fashion_mnist"
        cfg = {"selection": method, "seed": 0, "dataset": dataset}
        cmd = [sys.executable, "-m", "jaxdd.cli", "baseline", method, "--dataset", dataset,
               "--ipc", str(ipc), "--seed", "0", "--out", os.path.join(run_dir, "artefact"),
               "--json", "--quiet"]
    else:
        from jaxdd.configs import load_config
        cfg = load_config(os.path.join(ROOT, preset), ipc, sets)
        cmd = [sys.executable, "-m", "jaxdd.cli", "recover" if how == "relabel" else "distill",
               "--config", os.path.join(ROOT, preset), "--ipc", str(ipc), "--out", run_dir,
               "--json", "--quiet"] + [a for s in sets for a in ("--set", s)]
        if how != "relabel":
            cmd.append("--no-eval")
    rc, out, attempts, resumed = _attempt(cmd, log, results_dir, run_dir + ".attempts.json",
                                          run_dir)
    res = _last_json(out) if rc == 0 else {}
    if how == "baseline" and rc == 0:   # the selection's own seconds, kept in the artefact
        meta = load_json(os.path.join(run_dir, "artefact", "meta.json")) or {}
        res = {"distill_seconds": meta.get("distill_seconds")}
    if rc != 0 or res.get("stopped_early"):
        print(f"[fmnist] {method} IPC {ipc}: distill failed (exit {rc}); see {log}", file=sys.stderr)
        return None
    rec = {"method": method, "ipc": ipc, "preset": preset, "overrides": list(sets),
           "budget": budget_of(cfg, method), "distill_seconds": res.get("distill_seconds"),
           "distill_wall_seconds": round(sum(a["wall_seconds"] for a in attempts), 1),
           "distill_attempts": len(attempts), "compile_seconds": res.get("compile_seconds"),
           # True: some earlier attempt's seconds may be missing from the sums
           "distill_resumed_unrecorded": bool(resumed and len(attempts) == 1),
           "distill_load": _loads(attempts),
           "run_dir": run_dir,
           "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_json(rec_path, rec)
    return rec


def evaluate(method: str, ipc: int, protocol: str, rec: dict, results_dir: str, log: str,
             seeds: int | None = None) -> dict | None:
    """Evaluate the artefact under `protocol`; write and return the cell."""
    _, art_name, how = METHODS[method]
    seeds = seeds or SEEDS.get(protocol, 3)
    run_dir = rec["run_dir"]
    ck_dir = os.path.join(run_dir, f"eval-{protocol}-s{seeds}")   # students' checkpoints
    # resumable: the students' training is checkpointed in the run directory
    if how == "relabel":   # RDED's students learn from the teacher (KD), on P's student model
        cmd = [sys.executable, "-m", "jaxdd.cli", "relabel", run_dir, "--protocol", protocol]
    else:
        cmd = [sys.executable, "-m", "jaxdd.cli", "evaluate", os.path.join(run_dir, art_name),
               "--protocol", protocol]
    cmd += ["--seeds", str(seeds), "--json", "--quiet", "--checkpoint-dir", ck_dir]
    rc, out, attempts, resumed = _attempt(cmd, log, results_dir,
                                          os.path.join(run_dir, f"eval-{protocol}.attempts.json"),
                                          ck_dir)
    wall = round(sum(a["wall_seconds"] for a in attempts), 1)   # every attempt's
    load = _loads(attempts)
    if rc != 0:
        print(f"[fmnist] {method} IPC {ipc} {protocol}: evaluation failed (exit {rc}); see {log}",
              file=sys.stderr)
        return None
    r = _last_json(out)
    from jaxdd.evaluate import get_protocol
    p = get_protocol(protocol)
    cell = {
        "benchmark": "fmnist_table", "method": method, "ipc": ipc, "protocol": protocol,
        "protocol_reduced": p.reduced, "protocol_description": p.description,
        "evaluated_with": ("relabel: KD students (recipe %s) on the protocol's model" % r.get("recipe")
                           if how == "relabel" else f"evaluate {art_name}, hard/stored labels"),
        "eval_model": r.get("model"), "accuracy_mean": r["accuracy_mean"],
        "accuracy_std": r["accuracy_std"], "accuracies": r.get("accuracies"),
        "seeds": r.get("seeds", seeds), "report": r.get("report", "final epoch"),
        # resumed: every attempt's wall seconds (the command reports its last attempt's only)
        "eval_seconds": r.get("seconds", wall) if len(attempts) == 1 else wall,
        "eval_wall_seconds": wall, "eval_attempts": len(attempts),
        "eval_resumed_unrecorded": bool(resumed and len(attempts) == 1),
        "eval_load": load,
        "preset": rec["preset"], "overrides": rec["overrides"], "budget": rec["budget"],
        "distill_seconds": (rec["distill_seconds"] if rec.get("distill_attempts", 1) == 1
                            else rec["distill_wall_seconds"]),   # resumed: all attempts' wall
        "distill_wall_seconds": rec["distill_wall_seconds"],
        "distill_attempts": rec.get("distill_attempts", 1),
        "distill_resumed_unrecorded": rec.get("distill_resumed_unrecorded", False),
        "distill_load": rec["distill_load"],
        "timed_under_load": bool(rec["distill_load"]["under_load"] or load["under_load"]),
        "reduced": bool(rec["overrides"]) or p.reduced,
        "commit": code_commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    _write_json(cell_path(results_dir, method, ipc, protocol), cell)
    return cell


def code_commit() -> str | None:
    """The jaxdd commit the cells were made with (a `git archive` copy carries a COMMIT file)."""
    try:
        with open(os.path.join(ROOT, "COMMIT")) as f:
            return f.read().strip()
    except OSError:
        pass
    try:
        return subprocess.run(["git", "-C", ROOT, "rev-parse", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def load_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run_queue(cells, results_dir: str, sets: list[str], seeds: int | None = None) -> list[str]:
    """Run every unfinished cell in order; returns the cells this call finished."""
    os.makedirs(os.path.join(results_dir, "logs"), exist_ok=True)
    done = []
    for method, ipc, protocol in cells:
        path = cell_path(results_dir, method, ipc, protocol)
        if load_cell(path) is not None:
            continue
        log = os.path.join(results_dir, "logs", f"{method}_ipc{ipc}.log")
        print(f"[fmnist] {time.strftime('%H:%M:%S', time.gmtime())} UTC: {method} IPC {ipc} "
              f"{protocol}", file=sys.stderr, flush=True)
        rec = distill(method, ipc, results_dir, method_sets(sets, method), log)
        if rec is None:
            continue
        cell = evaluate(method, ipc, protocol, rec, results_dir, log, seeds)
        if cell is not None:
            done.append(os.path.basename(path))
            print(json.dumps({k: cell[k] for k in ("method", "ipc", "protocol", "accuracy_mean",
                                                   "accuracy_std", "seeds", "distill_seconds",
                                                   "eval_seconds")}), flush=True)
    return done


class QueueLock:
    """One queue per results directory: DIR/.queue.pid names the running one."""

    def __init__(self, results_dir: str):
        self.path = os.path.join(results_dir, ".queue.pid")

    def __enter__(self):
        try:
            with open(self.path) as f:
                pid = int(f.read().strip())
            os.kill(pid, 0)
        except (OSError, ValueError):
            pid = None
        if pid is not None and pid != os.getpid():
            raise SystemExit(f"fmnist_table: error: a queue (pid {pid}) already runs in "
                             f"{os.path.dirname(self.path)}; wait for it or use another --results-dir")
        with open(self.path, "w") as f:
            f.write(str(os.getpid()))
        return self

    def __exit__(self, *exc):
        try:
            os.remove(self.path)
        except OSError:
            pass


# ---------------------------------------------------------------- the table

def collect_cells(results_dir: str) -> dict[tuple[str, int, str], dict]:
    cells = {}
    for path in sorted(glob.glob(os.path.join(results_dir, f"{CELL_PREFIX}*_ipc*_*.json"))):
        c = load_cell(path)
        if c is not None:
            cells[(c["method"], int(c["ipc"]), c["protocol"])] = c
    return cells


def _acc(c: dict) -> str:
    return f"{100 * c['accuracy_mean']:.1f} ± {100 * c['accuracy_std']:.1f}"


def _secs(x) -> str:
    return "?" if x is None else f"{float(x):.0f}"


def preset_budget(method: str, ipc: int) -> dict | None:
    """The budget `method`'s preset gives at `ipc` today (None: no preset)."""
    preset, _, how = METHODS[method]
    if how == "baseline":
        return None
    from jaxdd.configs import load_config
    return budget_of(load_config(os.path.join(ROOT, preset), ipc, []), method)


def format_cell(c: dict | None) -> str:
    if c is None:
        return "–"
    flags = []
    if c.get("overrides"):
        flags.append("reduced: " + " ".join(c["overrides"]))
    else:
        now = preset_budget(c["method"], int(c["ipc"]))
        if now is not None and now != c.get("budget"):
            flags.append(f"the preset's earlier budget; now {budget_text(now)}")
    if c.get("timed_under_load"):
        flags.append("timed under load")
    if c.get("distill_attempts", 1) > 1:
        flags.append(f"distilled in {c['distill_attempts']} attempts: wall seconds summed")
    if c.get("distill_resumed_unrecorded"):
        flags.append("resumed from an unrecorded attempt: distill seconds incomplete")
    if c.get("eval_attempts", 1) > 1:
        flags.append(f"evaluated in {c['eval_attempts']} attempts: wall seconds summed")
    if c.get("eval_resumed_unrecorded"):
        flags.append("evaluation resumed from an unrecorded attempt: eval seconds incomplete")
    return (f"**{_acc(c)}**<br>{c['seeds']} seeds, {c['protocol']}<br>"
            f"{budget_text(c.get('budget', {}))}<br>distill {_secs(c.get('distill_seconds'))} s "
            f"(wall {_secs(c.get('distill_wall_seconds'))} s), eval {_secs(c.get('eval_seconds'))} s"
            + "".join(f"<br>({f})" for f in flags))


def goals(cells) -> list[str]:
    """The issue's goals against the best full-protocol row (`mtt`, or `frepo` for FRePo;
    preset budgets only) per IPC."""
    out = []
    for j, ipc in enumerate(IPCS):
        best = max((c for (m, i, p), c in cells.items()
                    if i == ipc and p in FULL_PROTOCOLS and not c.get("overrides")
                    and m != "random"),
                   key=lambda c: c["accuracy_mean"], default=None)
        if best is None:
            out.append(f"IPC {ipc}: goal ≥ {GOAL[j]:.1f}: no `mtt` cell yet")
            continue
        a = 100 * best["accuracy_mean"]
        out.append(f"IPC {ipc}: goal ≥ {GOAL[j]:.1f}: best `{best['protocol']}` row "
                   f"{best['method']} {a:.1f} "
                   f"({'met' if a >= GOAL[j] else f'missed by {GOAL[j] - a:.1f}'})")
    for m, pub in PUBLISHED.items():
        full = own_protocol(m, "mtt")
        for j, ipc in enumerate(IPCS):
            c = cells.get((m, ipc, full))
            if c is not None and not c.get("overrides"):
                a = 100 * c["accuracy_mean"]
                out.append(f"{m} IPC {ipc}: published {pub[j]:.1f}, jaxdd `{full}` {a:.1f} "
                           f"({'met' if a >= pub[j] else f'missed by {pub[j] - a:.1f}'})")
    return out


def markdown(cells, old_cells: dict | None = None, old_md=None,
             old_published: dict | None = None) -> str:
    lines = [
        "# Fashion-MNIST results (jaxdd)", "",
        "Generated by `python benchmarks/fmnist_table.py --collect-only` from the "
        "`fmnist_*.json` cells beside this file (one per method, IPC and protocol). Each cell: "
        "test accuracy (%, mean ± std over seeds, final epoch), the seeds and evaluation "
        "protocol, the distillation budget of its preset (`configs/*/…fashion_mnist.py`), and "
        "distillation / evaluation seconds on the shared 2-core CPU (wall: the whole `jaxdd "
        "distill` or `recover` command, with data loading, compilation and, for the first "
        "cell of a buffer or teacher, training the experts or the teacher; \"timed under load\": "
        "other jobs shared the cores, so the seconds are upper bounds). Protocol `mtt`: "
        "ConvNet-D3 width 128, SGD 1000 epochs, DSA, 5 seeds (the trajectory-matching papers' "
        "evaluation); `cpu`: ConvNet-D3 width 32, 300 epochs, 3 seeds (reduced, for this "
        "machine). RDED cells are KD students (`jaxdd relabel`, RDED's recipe) on the "
        "protocol's model; FTD cells are its EMA set; FRePo cells train on its learned "
        "regression targets with its own protocols (`frepo`: ConvNet-D3 width 128 without norm, "
        "Adam, MSE, 1000 epochs, 5 seeds, in place of `mtt`; `frepo_cpu`: width 32, 300 epochs, "
        "3 seeds, in place of `cpu`). A cell marked \"reduced: …\" ran with "
        "`--set` overrides below its preset's budget; one marked \"the preset's earlier budget\" "
        "ran the budget its preset had then (printed in the cell), and names the preset's budget "
        "now.", "",
        "| method | protocol | IPC 1 | IPC 10 | IPC 50 | published IPC 1 / 10 / 50 |",
        "|---|---|---|---|---|---|"]
    methods = [m for m in ORDER if any(k[0] == m for k in cells)]
    methods += sorted({k[0] for k in cells} - set(methods))
    protocols = [p for p in PROTOCOLS if any(k[2] == p for k in cells)]
    protocols += sorted({k[2] for k in cells} - set(protocols))
    for m in methods:
        for p in protocols:
            if not any((m, i, p) in cells for i in IPCS):
                continue
            pub = (" / ".join(f"{x:.1f}" for x in SHOWN_PUBLISHED[m]) if m in SHOWN_PUBLISHED
                   else "–")
            lines.append(f"| {m} | {p} | " + " | ".join(format_cell(cells.get((m, i, p)))
                                                       for i in IPCS) + f" | {pub} |")
    lines.append(f"| **goal** (issue #17) | mtt | ≥ {GOAL[0]:.1f} | ≥ {GOAL[1]:.1f} | "
                 f"≥ {GOAL[2]:.1f} | best published: "
                 + "; ".join(f"{k} {' / '.join(f'{x:.1f}' for x in v)}"
                             for k, v in BEST_PUBLISHED.items()) + " |")
    lines += ["", "## Goals", "",
              "Every jaxdd method at or above its own published Fashion-MNIST number (DC, DSA, "
              "and FRePo under its own `frepo` protocol; reference-numbers.md has none for DM, "
              "DataDAM, MTT, DATM, FTD or RDED on Fashion-MNIST), and the best jaxdd row ≥ 80 / "
              "88 / 90.5 at IPC 1 / 10 / 50 under a full protocol (`mtt`, or `frepo` for FRePo; "
              "final epoch), above every published number.", ""]
    lines += [f"- {g}" for g in goals(cells)]
    if old_cells:
        lines += ["", "## Older rows: reduced `cpu` presets (1-2 % of the references' budgets)", "",
                  "The `*_fashion_mnist_cpu.py` presets (ConvNet-D3 width 32, 200-500 "
                  "iterations; MTT 2 experts x 3 epochs), `cpu` protocol, 3 seeds. Reduced: "
                  "lower bounds of what the methods reach; read the notes below.", "",
                  "| method (reduced preset) | IPC 1 | IPC 10 | IPC 50 | distill s (1/10/50) "
                  "| eval s (1/10/50) | published IPC 1 / 10 / 50 |",
                  "|---|---|---|---|---|---|---|"]
        order = ["random", "herding", "kcenter", "dc", "dsa", "dm", "datadam", "mtt", "mtt (EMA)"]
        order += sorted({m for m, _ in old_cells} - set(order) - {"full"})
        for m in order:
            if not any((m, i) in old_cells for i in IPCS):
                continue
            row = [old_cells.get((m, i)) for i in IPCS]
            acc = [_acc(c) if c else "–" for c in row]
            dt = [_secs(c.get("distill_seconds", 0)) if c else "–" for c in row]
            et = [_secs(c.get("eval_seconds", 0)) if c else "–" for c in row]
            label = m if m in ("random", "herding", "kcenter") else f"{m} (reduced)"
            pub = " / ".join(x or "–" for x in (old_published or {}).get(m, ("–",) * 3))
            lines.append(f"| {label} | {' | '.join(acc)} | {' / '.join(dt)} | {' / '.join(et)} "
                         f"| {pub} |")
        if ("full", 0) in old_cells:
            c = old_cells[("full", 0)]
            lines.append(f"| full training set | {100 * c['accuracy_mean']:.1f} ({c['note']}) | | | "
                         f"| {_secs(c['eval_seconds'])} | 93.5 ± 0.1 |")
    if old_md:
        lines += ["", old_md.strip()]
    return "\n".join(lines) + "\n"


def write_table(results_dir: str = RESULTS) -> str:
    """DIR/fashion_mnist.md from DIR's cells and the older rows in benchmarks/results/."""
    import table as old
    notes = os.path.join(RESULTS, "fashion_mnist_notes.md")
    md = markdown(collect_cells(results_dir), old.collect(),
                  open(notes).read() if os.path.exists(notes) else None, old.PUBLISHED)
    path = os.path.join(results_dir, "fashion_mnist.md")
    with open(path, "w") as f:
        f.write(md)
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", nargs="+", default=list(QUEUE_ORDER), choices=list(METHODS),
                    help="run in this order within each IPC and protocol")
    ap.add_argument("--ipcs", type=int, nargs="+", default=list(IPCS), choices=list(IPCS))
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS))
    ap.add_argument("--results-dir", default=RESULTS,
                    help="cells, runs and logs (default benchmarks/results; e.g. a directory "
                         "outside git for long runs)")
    ap.add_argument("--set", action="append", default=[], metavar="[METHOD:]KEY=VALUE",
                    help="config override for every preset (or one method's); marks the cells reduced")
    ap.add_argument("--seeds", type=int, default=None, help="evaluation seeds (default: per protocol)")
    ap.add_argument("--per-method", action="store_true",
                    help="per IPC, finish each method under every protocol before the next")
    ap.add_argument("--collect-only", action="store_true", help="only regenerate the table")
    args = ap.parse_args(argv)
    from jaxdd.evaluate.protocols import PROTOCOLS as KNOWN
    bad = [p for p in args.protocols if p not in KNOWN]
    if bad:
        ap.error(f"unknown protocol {bad[0]!r}; use one of {', '.join(KNOWN)}")
    rd = os.path.abspath(args.results_dir)
    if not args.collect_only:
        os.makedirs(rd, exist_ok=True)
        with QueueLock(rd):
            run_queue(queue(args.methods, args.ipcs, args.protocols, args.per_method), rd,
                      args.set, args.seeds)
    print(f"wrote {write_table(rd)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
