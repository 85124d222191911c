"""Helpers shared by the benchmark scripts: environment record and result writing."""

from __future__ import annotations

import datetime
import json
import os
import platform

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def environment() -> dict:
    import jax
    import jaxdd
    dev = jax.devices()[0]
    return {"jaxdd": jaxdd.__version__, "jax": jax.__version__, "backend": jax.default_backend(),
            "device": getattr(dev, "device_kind", str(dev)), "device_count": jax.device_count(),
            "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}


def write(name: str, result: dict, path: str | None = None) -> str:
    """Print one JSON line and write it to `path` (default benchmarks/results/<name>.json)."""
    path = path or os.path.join(RESULTS, f"{name}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    line = json.dumps(result, default=float)
    with open(path, "w") as f:
        f.write(line + "\n")
    print(line, flush=True)
    return path
