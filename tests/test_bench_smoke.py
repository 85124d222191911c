"""benchmarks/stages_vs_torch.py: every stage's jaxdd and PyTorch implementations agree in
float64 on tiny inputs (the check the benchmark runs before timing). Needs torch (optional)."""

import os
import subprocess
import sys

import pytest

pytest.importorskip("torch")
pytest.importorskip("torchvision")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")


@pytest.mark.parametrize("stages,extra", [
    ("dm,datadam,dc", []), ("expert_epoch,experts_K,eval_seeds", []),
    ("experts_K", ["--group-mode", "vmap"]),       # default: the buffer's "unroll"
    ("eval_seeds", ["--seed-mode", "vmap"]),       # default on CPU: train_seeds' "rounds"
    pytest.param("teacher_epoch,recover,relabel_epoch", [],
                 marks=pytest.mark.slow)])  # ResNet-18 compiles
def test_stages_equal_torch_in_float64(stages, extra, tmp_path):
    """--tiny runs the float64 checks (exit 2 on a mismatch) and one smoke timing per stage;
    experts_K in both group modes of `jaxdd buffer`, eval_seeds in both seed modes of
    `train_seeds`."""
    out = tmp_path / "stages.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "stages_vs_torch.py"),
                        "--tiny", "--stages", stages, "--out", str(out), *extra],
                       env=env, capture_output=True, text=True, timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    import json
    result = json.loads(out.read_text())
    rows = result["results"]
    assert [row["stage"] for row in rows] == stages.split(",")
    assert all(row["check_float64"]["ok"] and row["torch_s"] > 0 for row in rows)
    modes = dict(zip(extra[::2], extra[1::2]))
    assert result["sizes"]["group_mode"] == modes.get("--group-mode", "unroll")
    assert result["sizes"]["seed_mode"] == modes.get("--seed-mode", "rounds")
