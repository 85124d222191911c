"""benchmarks/profile_step.py: one profiled training step, its ops grouped by kind."""

import json
import os
import subprocess
import sys

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))


def test_kind_of_groups_xla_cpu_op_names():
    from profile_step import kind_of
    assert kind_of("ynn_fusion.24") == "matmul"
    assert kind_of("dot.3") == "matmul"
    assert kind_of("bitcast_slice_fusion.7") == "patches"
    assert kind_of("concatenate.2") == "patches"
    assert kind_of("pad_bitcast_fusion") == "patches"
    assert kind_of("copy_bitcast_fusion.1") == "copies"
    assert kind_of("while.4") == "loops"
    assert kind_of("broadcast_subtract_fusion.2") == "elementwise"


def test_profile_of_a_small_conv_net(tmp_path):
    """LeNet's convolutions go through loop_safe_conv on XLA:CPU: the profile sees dots and
    patch building, the fractions add up to 1, and the FLOPs are counted."""
    out = tmp_path / "p.json"
    env = {**os.environ, "PYTHONPATH": ROOT, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "profile_step.py"),
                        "--model", "lenet", "--batch", "8", "--hw", "28", "--channels", "1",
                        "--repeats", "1", "--out", str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["thread_s_by_kind"]["matmul"] > 0 and res["thread_s_by_kind"]["patches"] > 0
    assert abs(sum(res["fraction_by_kind"].values()) - 1.0) < 1e-3
    assert res["flops"] > 0 and res["step_s_median"] > 0
