"""Every stage on 1 vs N devices, and the MTT outer step on meshes of 1, 2, 4, 8 devices.

    python benchmarks/scaling.py [--devices 1 2 4 8] [--repeats 10]   # forced CPU devices
    python benchmarks/scaling.py --device gpu                         # the real accelerators
    python benchmarks/scaling.py --stages dm teacher                  # only these stages
    python benchmarks/scaling.py --quick --stages all                 # smoke: 1 repeat

Two parts, one JSON (the MTT `rows` as before, plus `stages`):

`rows` -- MTT outer step on meshes of 1, 2, 4, 8 devices (the fixed problem below).

Fixed problem: ConvNet-D3 width 32 on 28x28x1, 10 classes, 100 synthetic images sharded
over the mesh's `data` axis, syn_steps 10, fully unrolled inner loop, no augmentation; the
jitted step is exactly the driver's (`driver.make_step`, `mesh.state_shardings`, donated
state). Time is the median of --repeats steps after 2 warm-up steps.

CPU: one subprocess per device count, with XLA_FLAGS=--xla_force_host_platform_device_count=N.
The forced devices share the same physical cores, so this cannot speed up; it measures
the overhead of the SPMD partitioning + collectives relative to 1 device. GPU/TPU: one
process, sub-meshes over the first N real devices (N = 1, 2, 4, ... up to all).

`stages` -- every stage on a 1-device mesh and on the N-device mesh (N = the largest of
--devices; CPU: one subprocess with N forced devices, sub-meshes over its first 1 and all
N, as tests/sharding_check.py does; GPU/TPU: the first 1 and N real devices), the same
fixed global problem on both (STAGE_PROBLEMS): distill steps of MTT, DM and recover (a BN
teacher) through `driver.run`; an expert buffer of K = N experts one at a time vs
`experts_per_program = K` (the group split over the devices); the streamed teacher
(`train_teachers` on a StreamedDataset, data-parallel, BN statistics over the mesh); the
relabel student (`train_student`, batches split over the devices); evaluation (seeds split
over the mesh). Per stage: the max difference of the results (relative where
tests/test_sharding.py compares relatively) against that test's tolerance; the partition
spec of the main array on N devices and whether it really spans them (`split`); the median
seconds per unit on 1 and on N devices after a warm-up unit, compile seconds apart
(ahead-of-time where the stage allows it, else the first unit's excess over the median);
`overhead_vs_1` on CPU (N-device / 1-device time) or `speedup_vs_1` on real devices.

--stages NAME.. (or `all`) runs only those stages and keeps the MTT rows and the other
stages of the results file it rewrites; `--stages none` runs only the MTT rows and keeps
the stages; without --stages: the MTT rows and every stage. --quick: 1 repeat
everywhere, written to scaling_<cpu|gpu>_quick.json (git-ignored), a smoke check only.
Prints one JSON line; writes benchmarks/results/scaling_<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

PROBLEM = {"model": "convnet_d3_w32", "image_shape": [28, 28, 1], "classes": 10, "images": 100,
           "syn_steps": 10, "expert_epochs": 1, "unroll": True, "augment": None}


def measure(devices: list, repeats: int) -> dict:
    """Median outer-step seconds of the MTT step on a mesh over `devices`."""
    import jax
    import jax.numpy as jnp

    from jaxdd.methods.mtt import ExpertSegment, MTTConfig, make_mtt
    from jaxdd.models import get_model
    from jaxdd.run import driver
    from jaxdd.run import mesh as jmesh

    model = get_model(PROBLEM["model"], PROBLEM["classes"], tuple(PROBLEM["image_shape"]))
    apply_fn = lambda p, x: model.apply({"params": p}, x)
    k = jax.random.split(jax.random.key(0), 4)
    theta_0 = model.init(k[0])["params"]
    theta_t = jax.tree.map(lambda a, b: a + 0.01 * b, theta_0, model.init(k[1])["params"])
    n = PROBLEM["images"]
    d = make_mtt(MTTConfig(syn_steps=PROBLEM["syn_steps"], expert_epochs=PROBLEM["expert_epochs"],
                           max_start=1, lr_img=100.0, unroll=PROBLEM["unroll"]), apply_fn)
    x_NHWC = jax.random.normal(k[2], (n, *PROBLEM["image_shape"]))
    state = d.init(k[3], x_NHWC, jnp.arange(n) % PROBLEM["classes"])

    mesh = jmesh.make_mesh(devices=devices)
    state_sh = jmesh.state_shardings(state, mesh)
    repl = jmesh.replicated(mesh)
    state = jmesh.put(state, state_sh)
    consts = jmesh.put((theta_0, theta_t), jax.tree.map(lambda _: repl, (theta_0, theta_t)))
    key = jmesh.put(jax.random.key(5), repl)
    step = jax.jit(driver.make_step(d, lambda c, kk, t: ExpertSegment(*c)), donate_argnums=(0,),
                   in_shardings=(state_sh, repl, repl, repl), out_shardings=(state_sh, repl))
    t0 = time.perf_counter()
    compiled = step.lower(state, consts, key, jnp.int32(1)).compile()
    compile_s = time.perf_counter() - t0
    times = []
    for t in range(1, repeats + 3):
        t0 = time.perf_counter()
        state, metrics = compiled(state, consts, key, jnp.int32(t))
        jax.block_until_ready((state, metrics))
        if t > 2:
            times.append(time.perf_counter() - t0)
    spec = str(state.syn.x_syn_NHWC.sharding.spec)
    return {"devices": len(devices), "spec": spec, "sharded": spec != "P()",  # 100 % 8 != 0: replicated
            "step_seconds": round(statistics.median(times), 4),
            "step_seconds_min": round(min(times), 4), "compile_seconds": round(compile_s, 2),
            "loss": float(metrics["loss"])}


def _worker(n: int, repeats: int) -> None:
    import jax
    assert jax.device_count() == n, jax.devices()
    print(json.dumps(measure(jax.devices(), repeats)), flush=True)


def _cpu_rows(counts: list[int], repeats: int) -> list[dict]:
    rows = []
    for n in counts:
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
        p = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker", str(n),
                            "--repeats", str(repeats)], env=env, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(f"{n}-device worker failed:\n{p.stderr[-3000:]}")
        rows.append(json.loads(p.stdout.strip().splitlines()[-1]))
        print(rows[-1], file=sys.stderr, flush=True)
    return rows


# ---------------------------------------------------------------------------------------
# The `stages` part: every stage on a 1-device mesh vs the N-device mesh

STAGES = ("mtt", "dm", "recover", "experts", "teacher", "relabel", "evaluate")

# Each stage's fixed global problem: small, the same on 1 and on N devices. "N": the count
# of devices of the large mesh.
STAGE_PROBLEMS = {
    "mtt": {"model": "convnet_d2_w16", "image_shape": [16, 16, 1], "classes": 4, "images": 16,
            "syn_steps": 5, "expert_epochs": 1, "unroll": True, "unit": "outer step"},
    "dm": {"model": "convnet_d2_w16", "image_shape": [16, 16, 1], "classes": 4, "images": 16,
           "batch_real": 8, "dsa": "crop", "unit": "step"},
    "recover": {"model": "convnet_d2_w16_bn", "image_shape": [16, 16, 1], "classes": 4,
                "images": 16, "init": "real", "unit": "iteration"},
    "experts": {"model": "convnet_d2_w8", "image_shape": [8, 8, 1], "classes": 3,
                "train_images": 64, "experts": "N", "epochs": 2, "batch_size": 16, "dsa": "crop",
                "group_mode": "unroll", "unit": "expert (2 epochs, checkpoints written)"},
    "teacher": {"model": "convnet_d2_w16_bn", "image_shape": [16, 16, 1], "classes": 4,
                "train_images": 128, "batch_size": 32, "lr": 0.05, "dsa": "crop_flip",
                "data": "StreamedDataset(ArraySource)", "unit": "epoch (4 steps)"},
    "relabel": {"model": "convnet_d2_w16_bn", "image_shape": [16, 16, 1], "classes": 4,
                "images": 32, "epochs": 2, "batch_size": 16, "optimizer": "sgd",
                "cutmix_alpha": 1.0, "unit": "student training (2 epochs x 2 steps)"},
    "evaluate": {"model": "convnet_d2_w8", "image_shape": [16, 16, 1], "classes": 4,
                 "images": 16, "test_images": 64, "seeds": 8, "batch_size": 16,
                 "unit": "epoch of all seeds"},
}

# Equality: tests/test_sharding.py's tolerances; relative = per variable, to its largest value.
STAGE_CHECKS = {"mtt": ("synthetic images", 1e-5, False), "dm": ("synthetic images", 1e-5, False),
                "recover": ("synthetic images", 1e-5, False),
                "experts": ("every trajectory checkpoint", 0.0, False),
                "teacher": ("teacher variables", 1e-5, True),
                "relabel": ("student variables", 1e-5, True),
                "evaluate": ("test accuracies", 1e-6, False)}


def _maxdiff(a, b, relative: bool) -> float:
    """Max |a - b| over all leaves; `relative`: each leaf's relative to its largest |a|."""
    import jax
    import numpy as np
    out = 0.0
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        u, v = np.asarray(u, np.float64), np.asarray(v, np.float64)
        d = float(np.abs(u - v).max()) if u.size else 0.0
        out = max(out, d / (float(np.abs(u).max()) + 1e-12) if relative else d)
    return out


def _where(a) -> tuple[str, int]:
    """(partition spec, device count) of a placed array."""
    return str(a.sharding.spec), len(a.sharding.device_set)


def _per_unit(start: float, ends: list[float], per: int = 1) -> tuple[list[float], float]:
    """From the end time of every unit: (seconds of every unit after the first, excess of
    the first over their median: compile + warm-up, an estimate)."""
    spans = [(b - a) / per for a, b in zip([start, *ends], ends)]
    rest = spans[1:] or spans
    return rest, max(0.0, spans[0] - statistics.median(rest))


class _StepTimer:
    """A driver.run hook: the end time of every step (it blocks on the state it is handed)."""

    def __init__(self):
        self.ends: list[float] = []

    def start(self, step: int) -> None:
        self.ends = []

    def __call__(self, t: int, state) -> None:
        import jax
        jax.block_until_ready(state)
        self.ends.append(time.perf_counter())


def _stage_driver(name: str, mesh, repeats: int, _n: int) -> dict:
    """A distiller (mtt, dm, recover) for 1 + repeats steps through `driver.run` on `mesh`:
    the driver's own jitted step, state shardings and donation; step 1 is the warm-up."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxdd.models import get_model
    from jaxdd.run import driver
    p = STAGE_PROBLEMS[name]
    shape, k, n = tuple(p["image_shape"]), p["classes"], p["images"]
    steps = 1 + repeats
    model = get_model(p["model"], k, shape)
    x = np.asarray(jax.random.normal(jax.random.key(1), (n, *shape)))
    y = jnp.arange(n) % k
    if name == "mtt":
        from jaxdd.methods.mtt import ExpertSegment, MTTConfig, make_mtt
        t0 = model.init(jax.random.key(0))["params"]
        t1 = jax.tree.map(lambda a, b: a + 0.01 * b, t0, model.init(jax.random.key(7))["params"])
        d = make_mtt(MTTConfig(syn_steps=p["syn_steps"], expert_epochs=p["expert_epochs"],
                               max_start=1, lr_img=10.0, unroll=p["unroll"]),
                     lambda prm, xb: model.apply({"params": prm}, xb))
        batch_fn, consts = (lambda c, kk, t: ExpertSegment(*c)), (t0, t1)
    elif name == "dm":
        from jaxdd.methods.dm import DMConfig, make_dm
        d = make_dm(DMConfig(batch_real=p["batch_real"], dsa_strategy=p["dsa"]), model, k)
        y = jnp.arange(n) // (n // k)
        consts = np.asarray(jax.random.normal(jax.random.key(3), (k, p["batch_real"], *shape)))
        batch_fn = lambda c, kk, t: c  # noqa: E731
    else:
        from jaxdd.methods.statistics.recover import RecoverConfig, make_recover
        v = model.init(jax.random.key(0))
        _, v = model.apply_train(v, jax.random.normal(jax.random.key(4), (32, *shape)) * 2 + 0.5)
        d = make_recover(RecoverConfig(iterations=steps, lr=0.1, init=p["init"]), model, v)
        batch_fn, consts = (lambda c, kk, t: None), None
    state = d.init(jax.random.key(2), x, y)
    x0 = np.asarray(state.syn.x_syn_NHWC)
    timer, timings = _StepTimer(), {}
    final, _ = driver.run(d, state, batch_fn, jax.random.key(5), steps, consts=consts, mesh=mesh,
                          hooks=(timer,), timings=timings, log_every=steps)
    xs = final.syn.x_syn_NHWC
    spec, ndev = _where(xs)
    times = [b - a for a, b in zip(timer.ends, timer.ends[1:])]   # steps 2.. (1: warm-up)
    return {"result": np.asarray(xs), "times": times, "compile_seconds": timings["compile_seconds"],
            "compile": "ahead of time", "spec": spec, "spec_devices": ndev,
            "changed": float(np.abs(np.asarray(xs) - x0).max())}


def _stage_experts(mesh, repeats: int, k_exp: int) -> dict:
    """K = N experts: one at a time on one device (mesh of 1) or `experts_per_program = K`,
    the group split over the devices (mesh of N; build_buffer uses gcd(K, devices) of the
    process's devices). A cold build (compiles), then `repeats` warm builds in fresh folders."""
    import math
    import tempfile
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jaxdd.population import experts as ex
    from jaxdd.train.loop import train_init
    p = STAGE_PROBLEMS["experts"]
    n_dev = mesh.devices.size
    shape = tuple(p["image_shape"])
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (p["train_images"], *shape)).astype(np.uint8)
    y = (np.arange(p["train_images"]) % p["classes"]).astype(np.int32)
    cfg = ex.ExpertConfig(num_experts=k_exp, epochs=p["epochs"], batch_size=p["batch_size"],
                          dsa=p["dsa"], experts_per_program=1 if n_dev == 1 else k_exp,
                          group_mode=p["group_mode"])
    builds = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(1 + repeats):
            t0 = time.perf_counter()
            ex.build_buffer(f"{tmp}/{r}", (x, y), p["model"], cfg, 0)
            builds.append(time.perf_counter() - t0)
        result = [[ex.load_expert_epoch(f"{tmp}/0", e, t) for t in range(p["epochs"] + 1)]
                  for e in range(k_exp)]
    if n_dev == 1:
        spec, ndev = "one expert at a time", 1
    else:  # where build_buffer places a group (its own layout function, as tests do)
        model, epoch_fn, _ = ex._compiled(p["model"], p["classes"], shape, cfg)
        states = [train_init(jax.random.key(i), model, cfg.train_config(), len(x))
                  for i in range(k_exp)]
        _, _, fns = ex._group_layout(states, (jnp.zeros(1), jnp.zeros(1)), epoch_fn,
                                     cfg.group_mode)
        spec, ndev = _where(jax.tree.leaves(fns["stack"](states).variables)[0])
        assert ndev == math.gcd(k_exp, jax.device_count()), ndev
    times = [b / k_exp for b in builds[1:]]
    return {"result": result, "times": times, "compile": "first build's excess (estimate)",
            "compile_seconds": max(0.0, builds[0] - statistics.median(builds[1:])),
            "spec": spec, "spec_devices": ndev}


def _stage_teacher(mesh, repeats: int, _n: int) -> dict:
    """The streamed teacher (`train_teachers` on a StreamedDataset, data-parallel on `mesh`,
    BatchNorm statistics over the mesh) for 1 + repeats epochs; epoch 1 is the warm-up."""
    import tempfile
    import jax
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxdd.data import stream
    from jaxdd.models import get_model
    from jaxdd.population import teachers
    p = STAGE_PROBLEMS["teacher"]
    shape, k, n = tuple(p["image_shape"]), p["classes"], p["train_images"]
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, *shape)).astype(np.uint8)
    y = (np.arange(n) % k).astype(np.int32)
    names = [str(c) for c in range(k)]
    data = stream.StreamedDataset("tiny", stream.ArraySource(x, y, "tiny", names),
                                  stream.ArraySource(x[:32], y[:32], "tiny", names),
                                  shape, names, val_per_class=0)
    cfg = teachers.TeacherConfig(epochs=1 + repeats, batch_size=p["batch_size"], lr=p["lr"],
                                 dsa=p["dsa"])
    ends: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        teachers.train_teachers(tmp, data, p["model"], cfg, 0, mesh=mesh,
                                progress_cb=lambda done, total: ends.append(time.perf_counter()))
        variables = teachers.load_teacher(tmp)[1]
    times, compile_s = _per_unit(t0, ends)
    # the placement of a training batch: the loader with the mesh's batch sharding
    batch = next(iter(data.loader("train", batch_size=p["batch_size"], train=True, seed=0,
                                  sharding=NamedSharding(mesh, P(mesh.axis_names[0])))))
    spec, ndev = _where(batch["image"])
    init = get_model(p["model"], k, shape).init(jax.random.key(0))
    return {"result": variables, "times": times, "compile_seconds": compile_s,
            "compile": "first epoch's excess (estimate)", "spec": spec, "spec_devices": ndev,
            "changed": _maxdiff(variables, init, True)}


def _stage_relabel(mesh, repeats: int, _n: int) -> dict:
    """The relabel student (`train_student`, online teacher labels) with each augmented batch
    split over `mesh` (`batch_sharding`); a warm-up call, then `repeats` timed calls."""
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxdd.labels import relabel
    from jaxdd.models import get_model
    from jaxdd.train.loop import TrainConfig
    p = STAGE_PROBLEMS["relabel"]
    shape, k = tuple(p["image_shape"]), p["classes"]
    n_dev = mesh.devices.size
    model = get_model(p["model"], k, shape)
    teacher_v = model.init(jax.random.key(11))
    _, teacher_v = model.apply_train(teacher_v, jax.random.normal(jax.random.key(12),
                                                                  (32, *shape)))
    xs = jnp.asarray(np.random.default_rng(0).normal(size=(p["images"], *shape)), jnp.float32)
    tcfg = TrainConfig(epochs=p["epochs"], batch_size=p["batch_size"], lr=0.01, momentum=0.9,
                       dsa="")
    rcfg = relabel.RelabelConfig(cutmix_alpha=p["cutmix_alpha"])
    sh = NamedSharding(mesh, P(mesh.axis_names[0]))
    fn = jax.jit(lambda key: relabel.train_student(
        key, model, tcfg, rcfg, xs, teacher_fn=lambda xb: model.apply(teacher_v, xb),
        batch_sharding=sh if n_dev > 1 else None))
    key = jax.random.key(3)
    t0 = time.perf_counter()
    lowered = fn.lower(key)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    # the split is a sharding constraint on the batch, in the lowered program (Shardy or GSPMD)
    text, axis = lowered.as_text(), mesh.axis_names[0]
    split_in_program = n_dev > 1 and (
        ("sdy.sharding_constraint" in text and f'{{"{axis}"}}' in text
         and f'"{axis}"={n_dev}' in text) or f"devices=[{n_dev}" in text)
    out = jax.block_until_ready(compiled(key))   # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled(key))
        times.append(time.perf_counter() - t0)
    init = model.init(jax.random.fold_in(key, 0))
    return {"result": out, "times": times, "compile_seconds": compile_s, "compile": "ahead of time",
            "spec": str(sh.spec) if split_in_program else "P()",
            "spec_devices": n_dev if split_in_program else 1,
            "changed": _maxdiff(out, init, True)}


def _stage_evaluate(mesh, repeats: int, _n: int) -> dict:
    """evaluate_set's training (`jaxdd.evaluate.train_seeds`): the seeds vmapped and split over
    `mesh`'s data axis, 1 + repeats epochs (one compiled call each; the first is the warm-up),
    then test accuracy per seed."""
    import jax
    import numpy as np
    from jaxdd.evaluate import get_protocol, label_targets, train_seeds
    from jaxdd.evaluate.core import accuracies
    from jaxdd.models import get_model
    p = STAGE_PROBLEMS["evaluate"]
    shape, k = tuple(p["image_shape"]), p["classes"]
    rng = np.random.default_rng(0)
    x = rng.normal(size=(p["images"], *shape)).astype(np.float32)
    y = np.arange(p["images"]) % k
    xt = rng.normal(size=(p["test_images"], *shape)).astype(np.float32)
    yt = np.arange(p["test_images"]) % k
    epochs = 1 + repeats
    cfg = get_protocol("smoke", epochs=epochs, batch_size=p["batch_size"]).train
    model = get_model(p["model"], k, shape)
    ends: list[float] = []
    t0 = time.perf_counter()
    variables = train_seeds(jax.random.split(jax.random.key(0), p["seeds"]), model, cfg, x,
                            label_targets(y, k), None,
                            lambda done, total: ends.append(time.perf_counter()), mesh)
    times, compile_s = _per_unit(t0, ends, per=epochs // len(ends))
    spec, ndev = _where(jax.tree.leaves(variables)[0])
    acc = accuracies(model, variables, xt, yt)
    return {"result": acc, "times": times, "compile_seconds": compile_s,
            "compile": "first epoch's excess (estimate)", "spec": spec, "spec_devices": ndev,
            "spread": float(acc.max() - acc.min())}


def run_stage(name: str, meshes: dict, repeats: int, real_devices: bool) -> dict:
    """One stage on the 1-device and the N-device mesh: equality, placement and time."""
    fn = {"experts": _stage_experts, "teacher": _stage_teacher, "relabel": _stage_relabel,
          "evaluate": _stage_evaluate}.get(name)
    n = meshes["N"].devices.size
    fn = fn or functools.partial(_stage_driver, name)
    one, big = (fn(meshes[m], repeats, n) for m in ("1", "N"))
    what, tol, relative = STAGE_CHECKS[name]
    diff = _maxdiff(one["result"], big["result"], relative)
    row = {"stage": name, "devices": n, "unit": STAGE_PROBLEMS[name]["unit"], "compared": what,
           "maxdiff": diff, "relative": relative, "tolerance": tol, "equal": diff <= tol,
           "spec_1": one["spec"], "spec_N": big["spec"], "split_devices": big["spec_devices"],
           "split": big["spec_devices"] == n and n > 1,
           "seconds_1": round(statistics.median(one["times"]), 4),
           "seconds_N": round(statistics.median(big["times"]), 4),
           "seconds_min_1": round(min(one["times"]), 4),
           "seconds_min_N": round(min(big["times"]), 4),
           "compile_seconds_1": round(one["compile_seconds"], 2),
           "compile_seconds_N": round(big["compile_seconds"], 2), "compile": one["compile"]}
    for key in ("changed", "spread"):
        if key in one:
            row[key] = one[key]
    ratio = row["seconds_N"] / max(row["seconds_1"], 1e-9)
    if real_devices:
        row["speedup_vs_1"] = round(1 / max(ratio, 1e-9), 3)
    else:
        row["overhead_vs_1"] = round(ratio, 3)
    return row


def stage_rows(names: list[str], devices: list, repeats: int, real_devices: bool) -> list[dict]:
    """Every named stage on a mesh over devices[:1] and one over all `devices`."""
    from jaxdd.run import mesh as jmesh
    meshes = {"1": jmesh.make_mesh(devices=devices[:1]), "N": jmesh.make_mesh(devices=devices)}
    rows = []
    for name in names:
        rows.append(run_stage(name, meshes, repeats, real_devices))
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def _stage_worker(n: int, names: list[str], repeats: int) -> None:
    import jax
    assert jax.device_count() == n, jax.devices()
    print(json.dumps(stage_rows(names, jax.devices(), repeats, real_devices=False)), flush=True)


def _cpu_stage_rows(n: int, names: list[str], repeats: int) -> list[dict]:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={n}")
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--stages-worker", str(n),
                        "--stages", *names, "--stage-repeats", str(repeats)],
                       env=env, stdout=subprocess.PIPE, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{n}-device stage worker failed (exit {p.returncode}); its stderr "
                           "is above")
    return json.loads(p.stdout.strip().splitlines()[-1])


def _previous(path: str, device: str) -> dict:
    """The results file being rewritten (its MTT rows and stages are kept where not re-run)."""
    try:
        with open(path) as f:
            old = json.loads(f.read().strip().splitlines()[-1])
    except (OSError, ValueError, IndexError):
        return {}
    return old if old.get("benchmark") == "scaling" and old.get("device") == device else {}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                    help="cpu: forced host devices, one subprocess per count; gpu: real devices")
    ap.add_argument("--devices", type=int, nargs="+", default=None,
                    help="mesh sizes of the MTT rows (default cpu: 1 2 4 8; gpu: 1 2 4 ... up "
                         "to all); the stages compare 1 with the largest")
    ap.add_argument("--repeats", type=int, default=10, help="timed MTT steps per mesh (median)")
    ap.add_argument("--stages", nargs="+", default=None, choices=[*STAGES, "all", "none"],
                    help="run only these stages (all: every stage; none: the MTT rows only); "
                         "without it: the MTT rows and every stage")
    ap.add_argument("--stage-repeats", type=int, default=3,
                    help="timed units per stage and mesh (median), after one warm-up unit")
    ap.add_argument("--quick", action="store_true",
                    help="1 repeat everywhere; writes scaling_<device>_quick.json (smoke check)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--stages-worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quick:
        args.repeats = args.stage_repeats = 1
    if args.repeats < 1 or args.stage_repeats < 1:
        ap.error("--repeats and --stage-repeats must be >= 1")
    if args.worker is not None:
        return _worker(args.worker, args.repeats)
    if args.stages_worker is not None:
        return _stage_worker(args.stages_worker, args.stages, args.stage_repeats)
    picked = args.stages or ["all"]
    if len(picked) > 1 and ("all" in picked or "none" in picked):
        ap.error("--stages: give stage names, or all, or none")
    names = list(STAGES) if picked == ["all"] else [] if picked == ["none"] else picked
    run_rows = args.stages is None or picked == ["none"]

    from _common import RESULTS, environment, write
    name = f"scaling_{args.device}" + ("_quick" if args.quick else "")
    old = _previous(os.path.join(RESULTS, f"{name}.json"), args.device)
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        counts = args.devices or [1, 2, 4, 8]
        rows = _cpu_rows(counts, args.repeats) if run_rows else None
        stage_list = _cpu_stage_rows(max(counts), names, args.stage_repeats) if names else []
        note = (f"{os.cpu_count()} physical CPU cores shared by all forced devices: more "
                "devices cannot be faster here; overhead_vs_1 = step time relative to the "
                "1-device mesh (SPMD partitioning + collective cost). Speed-up needs real devices "
                "(--device gpu).")
    else:
        import jax
        devs = jax.devices()
        counts = args.devices or [c for c in (1, 2, 4, 8, 16, 32, 64) if c <= len(devs)]
        rows = []
        for n in counts if run_rows else []:
            rows.append(measure(devs[:n], args.repeats))
            print(rows[-1], file=sys.stderr, flush=True)
        rows = rows if run_rows else None
        stage_list = (stage_rows(names, devs[:max(counts)], args.stage_repeats, real_devices=True)
                      if names else [])
        note = "real devices: speedup_vs_1 = 1-device step time / N-device step time"
    env = environment()
    if args.device == "cpu":
        env.update(device_count=None, forced_device_counts=counts)
    if rows is not None:
        base = rows[0]["step_seconds"]
        for r in rows:
            r["overhead_vs_1"] = round(r["step_seconds"] / base, 3)
            r["speedup_vs_1"] = round(base / r["step_seconds"], 3)
        out = {"benchmark": "scaling", "device": args.device, "problem": PROBLEM,
               "repeats": args.repeats, "rows": rows, "note": note,
               "environment": env}
    else:  # the MTT rows of the file being rewritten
        out = {k: old.get(k) for k in ("benchmark", "device", "problem", "repeats", "rows",
                                       "note", "environment")}
        out.update(benchmark="scaling", device=args.device, problem=PROBLEM,
                   rows=out["rows"] or [])
    for r in stage_list:
        r.update(repeats=args.stage_repeats, date=env["date"])
    kept = [r for r in (old.get("stages") or {}).get("rows", []) if r["stage"] not in names]
    order = {s: i for i, s in enumerate(STAGES)}
    merged = sorted(kept + stage_list, key=lambda r: order.get(r["stage"], len(order)))
    out["stages"] = {
        "problems": STAGE_PROBLEMS,
        "checks": {s: {"compared": c[0], "tolerance": c[1], "relative": c[2]}
                   for s, c in STAGE_CHECKS.items()},
        "rows": merged,
        "note": ("Each stage: the same global problem on a mesh of 1 device and of N; equal = "
                 "maxdiff <= tolerance; split = the main array spans all N devices. "
                 + ("CPU: the N forced devices share the physical cores, so overhead_vs_1 "
                    "(N-device / 1-device seconds per unit) is the cost of partitioning and "
                    "collectives, never a speed-up; measure the speed-up with --device gpu."
                    if args.device == "cpu" else
                    "Real devices: speedup_vs_1 = 1-device / N-device seconds per unit.")),
        "environment": env if stage_list else (old.get("stages") or {}).get("environment", env)}
    write(name, out)


if __name__ == "__main__":
    main()
