"""Classic matchers end to end through `jaxdd distill` on the tiny npz dataset."""

import json
import os

import jax
import numpy as np
import pytest

from jaxdd import artefact
from jaxdd.cli import main

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "classic")


@pytest.mark.parametrize("method,extra", [
    ("dm", ["dm.batch_real=8", "dm.dsa_strategy='crop'"]),
    ("datadam", ["datadam.batch_real=8", "datadam.dsa_strategy='crop'"]),
])
def test_classic_distill_cli(method, extra, tiny_npz, tmp_path, capsys):
    out = str(tmp_path / method)
    argv = ["distill", "--config", os.path.join(CONFIGS, f"{method}_fashion_mnist_cpu.py"),
            "--ipc", "10", "--out", out, "--quiet", "--json"]
    for s in [f"dataset=npz:{tiny_npz}", "model=convnet_d2_w4", "iterations=4", "ckpt_every=2",
              "eval.protocol=smoke", "eval.seeds=2", *extra]:
        argv += ["--set", s]
    code = main(argv)
    o, e = capsys.readouterr()
    assert code == 0, e
    res = json.loads(o.strip().splitlines()[-1])
    art = artefact.load(res["artefacts"]["artefact"])
    assert art.meta["method"] == method and art.x_syn_NHWC.shape == (30, 8, 8, 1)
    assert art.lr is None and art.y_syn.tolist() == sorted(art.y_syn.tolist())
    # The images moved away from their real initialisation (the same draw, seed 0).
    from jaxdd import data as jdata
    ds = jdata.load_dataset(f"npz:{tiny_npz}", seed=0)
    x0, _ = jdata.sample_per_class(jax.random.fold_in(jax.random.key(0), 0), ds, 10)
    x0 = jdata.apply(art.preprocess, x0)
    assert x0.shape == art.x_syn_NHWC.shape and np.abs(art.x_syn_NHWC - x0).max() > 1e-3
    # Every logged iteration has a finite loss; the evaluation is recorded in the artefact.
    log = [json.loads(line) for line in open(os.path.join(out, "run", "metrics.jsonl"))]
    assert [m["iteration"] for m in log] == [4] and np.isfinite(log[-1]["loss"])
    evs = json.load(open(os.path.join(res["artefacts"]["artefact"], "evaluations.json")))
    assert [e["accuracy_mean"] for e in evs] == [res["accuracy_mean"]]
    assert len(evs[0]["accuracies"]) == 2 and "random_accuracy_mean" in res


def test_compile_time_reported_and_cached_across_cli_runs(tiny_npz, tmp_path):
    """Two `jaxdd distill` processes with the same config: each reports the step's compile time
    apart from the run time, and the second is served from the persistent compilation cache
    (it adds no new cache entries)."""
    import subprocess
    import sys

    cache = tmp_path / "xla-cache"
    env = {**os.environ, "JAXDD_CACHE_DIR": str(cache), "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)

    def run(out):
        argv = [sys.executable, "-m", "jaxdd.cli", "distill", "--config",
                os.path.join(CONFIGS, "dm_fashion_mnist_cpu.py"), "--ipc", "1", "--out", str(out),
                "--quiet", "--json", "--no-eval"]
        for s in [f"dataset=npz:{tiny_npz}", "model=convnet_d2_w4", "iterations=2", "dm.batch_real=8"]:
            argv += ["--set", s]
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout.strip().splitlines()[-1])

    first = run(tmp_path / "a")
    entries = set(os.listdir(cache))
    assert "compile_seconds" in first and "steps_seconds" in first and entries
    second = run(tmp_path / "b")
    assert "compile_seconds" in second
    assert set(os.listdir(cache)) == entries, "the second run recompiled instead of using the cache"
