"""Helpers shared by the benchmark scripts: environment record and result writing."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = os.path.join(ROOT, "benchmarks", "runs")


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo; the machines of this project change between
    sessions, e.g. AMD EPYC or Intel Xeon, so every timing names its CPU)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment() -> dict:
    import jax
    import jaxdd
    dev = jax.devices()[0]
    return {"jaxdd": jaxdd.__version__, "jax": jax.__version__, "backend": jax.default_backend(),
            "device": getattr(dev, "device_kind", str(dev)), "device_count": jax.device_count(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "cpu": cpu_model(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


@contextlib.contextmanager
def one_conv_block():
    """For a FLOP count: `loop_safe_conv` takes all images as one block instead of a
    `lax.map`/`scan` over cache-sized blocks, whose bodies XLA's cost analysis counts once,
    and computes its forwards as patches @ kernel (XLA:CPU's cost analysis does not count a
    `lax.conv`, the forward on AVX-512 CPUs)."""
    from jaxdd.models import layers
    saved = layers._BLOCK_BYTES, layers._FORWARD_IMPL
    layers._BLOCK_BYTES, layers._FORWARD_IMPL = 1 << 62, "patches"
    try:
        yield
    finally:
        layers._BLOCK_BYTES, layers._FORWARD_IMPL = saved


def write(name: str, result: dict, path: str | None = None) -> str:
    """Print one JSON line and write it to `path` (default benchmarks/results/<name>.json)."""
    path = path or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = json.dumps(result, default=float)
    with open(path, "w") as f:
        f.write(line + "\n")
    print(line, flush=True)
    return path


def run_cli(*argv: str) -> tuple[dict, float]:
    """Run one `jaxdd` CLI command with --json; (its JSON result, wall seconds). A failing
    command stops the benchmark with its exit code."""
    cmd = [sys.executable, "-m", "jaxdd.cli", *argv, "--json"]
    print("$ " + " ".join(cmd[2:]), file=sys.stderr, flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed (exit {proc.returncode}): {' '.join(argv)}")
    return json.loads(proc.stdout.strip().splitlines()[-1]), round(time.time() - t0, 1)
