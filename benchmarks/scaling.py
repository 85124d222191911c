"""Outer-step time of the MTT distiller on meshes of 1, 2, 4, 8 devices (fixed global problem).

    python benchmarks/scaling.py [--devices 1 2 4 8] [--repeats 10]   # forced CPU devices
    python benchmarks/scaling.py --device gpu                         # the real accelerators

Fixed problem: ConvNet-D3 width 32 on 28x28x1, 10 classes, 100 synthetic images sharded
over the mesh's `data` axis, syn_steps 10, fully unrolled inner loop, no augmentation; the
jitted step is exactly the driver's (`driver.make_step`, `mesh.state_shardings`, donated
state). Time is the median of --repeats steps after 2 warm-up steps.

CPU: one subprocess per device count, with XLA_FLAGS=--xla_force_host_platform_device_count=N.
The forced devices share the same physical cores, so this cannot speed up; it measures
the overhead of the SPMD partitioning + collectives relative to 1 device. GPU/TPU: one
process, sub-meshes over the first N real devices (N = 1, 2, 4, ... up to all).
Prints one JSON line; writes benchmarks/results/scaling_<cpu|gpu>.json.
"""

from __future__ import annotations

import argparse
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                    help="cpu: forced host devices, one subprocess per count; gpu: real devices")
    ap.add_argument("--devices", type=int, nargs="+", default=None,
                    help="mesh sizes (default cpu: 1 2 4 8; gpu: 1 2 4 ... up to all)")
    ap.add_argument("--repeats", type=int, default=10, help="timed steps per mesh (median)")
    ap.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker is not None:
        return _worker(args.worker, args.repeats)

    from _common import environment, write
    if args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"
        rows = _cpu_rows(args.devices or [1, 2, 4, 8], args.repeats)
        note = (f"{os.cpu_count()} physical CPU cores shared by all forced devices: more "
                "devices cannot be faster here; overhead_vs_1 = step time relative to the "
                "1-device mesh (SPMD partitioning + collective cost). Speed-up needs real devices "
                "(--device gpu).")
    else:
        import jax
        devs = jax.devices()
        counts = args.devices or [c for c in (1, 2, 4, 8, 16, 32, 64) if c <= len(devs)]
        rows = []
        for n in counts:
            rows.append(measure(devs[:n], args.repeats))
            print(rows[-1], file=sys.stderr, flush=True)
        note = "real devices: speedup_vs_1 = 1-device step time / N-device step time"
    base = rows[0]["step_seconds"]
    for r in rows:
        r["overhead_vs_1"] = round(r["step_seconds"] / base, 3)
        r["speedup_vs_1"] = round(base / r["step_seconds"], 3)
    env = environment()
    if args.device == "cpu":
        env.update(device_count=None, forced_device_counts=[r["devices"] for r in rows])
    write(f"scaling_{args.device}", {"benchmark": "scaling", "device": args.device,
                                     "problem": PROBLEM, "repeats": args.repeats, "rows": rows,
                                     "note": note, "environment": env})


if __name__ == "__main__":
    main()
