"""Two real processes, one global mesh: same images as one process, one log, shared checkpoints.

Each process of tests/multihost_worker.py has 2 forced CPU devices, joins
`jax.distributed` on 127.0.0.1 (CPU collectives over Gloo, jax's default
`jax_cpu_collectives_implementation`), and runs the tiny MTT distiller through the shared
driver on a 4-device mesh, stopping after 3 steps and resuming from the Orbax checkpoint
that both processes saved. The reference is the same script as one process on one device.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "multihost_worker.py")
TIMEOUT_S = 420


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(n: int, i: int, port: int, run_dir, out_dir, devices: int) -> subprocess.Popen:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    if os.environ.get("JAXDD_CACHE_DIR"):  # opt-in, as in conftest.py
        env.update(JAX_COMPILATION_CACHE_DIR=os.environ["JAXDD_CACHE_DIR"],
                   JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5")
    for k in ("JAXDD_COORDINATOR", "JAXDD_DISTRIBUTED", "JAXDD_NUM_PROCESSES", "JAXDD_PROCESS_ID"):
        env.pop(k, None)
    return subprocess.Popen([sys.executable, WORKER, str(n), str(i), str(port), str(run_dir),
                             str(out_dir)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _collect(procs: list[subprocess.Popen]) -> list[dict]:
    """Wait for all; on any failure or timeout kill the others and show the stderr."""
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_S)
            assert p.returncode == 0, f"worker exited {p.returncode}:\n{err[-3000:]}"
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def test_two_processes_match_one(tmp_path):
    (tmp_path / "multi").mkdir()
    (tmp_path / "single").mkdir()
    port = _free_port()
    run_dir = tmp_path / "run"   # shared by both processes, as on a pod's shared disk
    procs = [_start(2, i, port, run_dir, tmp_path / "multi", devices=2) for i in range(2)]
    procs.append(_start(1, 0, 0, tmp_path / "single_run", tmp_path / "single", devices=1))
    r0, r1, ref = _collect(procs)

    for i, r in enumerate((r0, r1)):
        assert r["process_index"] == i and r["process_count"] == 2, r
        assert r["global_devices"] == 4 and r["local_devices"] == 2, r
        assert r["mesh"] == {"data": 4} and "data" in r["spec"], r   # sharded across processes
    assert ref["process_count"] == 1 and ref["global_devices"] == 1, ref

    x0, x1 = np.load(tmp_path / "multi" / "x_0.npy"), np.load(tmp_path / "multi" / "x_1.npy")
    x_ref = np.load(tmp_path / "single" / "x_0.npy")
    np.testing.assert_array_equal(x0, x1)            # both processes hold the same global set
    np.testing.assert_allclose(x0, x_ref, atol=1e-5, rtol=0)
    assert abs(r0["checksum"] - ref["checksum"]) <= 1e-5 * x_ref.size

    # Only process 0 logs (not twice each): steps 1..3, then after resuming from step 2 the
    # entry of step 3 is replaced, so every iteration appears once.
    lines = [json.loads(l) for l in open(run_dir / "metrics.jsonl")]
    assert [m["iteration"] for m in lines] == [1, 2, 3, 4]
    ref_lines = [json.loads(l) for l in open(tmp_path / "single_run" / "metrics.jsonl")]
    assert abs(lines[-1]["loss"] - ref_lines[-1]["loss"]) <= 1e-4 * max(1.0, abs(ref_lines[-1]["loss"]))
    # Checkpoints written together by both processes (step 2 restored by both, then 4).
    ckpts = sorted(os.listdir(run_dir / "checkpoints"))
    assert ckpts == ["2", "4"], ckpts
