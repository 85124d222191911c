"""Killed and corrupted runs: `jaxdd distill` resumes bit-for-bit, or says exactly what to do.

Everything runs the real CLI in subprocesses on the tiny MTT config of
tests/test_pipeline_mtt.py (200 iterations, a checkpoint every 10), with one expert buffer
built up front so each run starts in seconds.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import write_tiny_npz

from jaxdd import artefact

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "mtt", "fashion_mnist_cpu.py")
ITERATIONS, CKPT_EVERY = 200, 10
TIMEOUT_S = 300


def _env() -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for k in ("XLA_FLAGS", "JAXDD_COORDINATOR", "JAXDD_DISTRIBUTED", "JAXDD_NUM_PROCESSES",
              "JAXDD_PROCESS_ID"):
        env.pop(k, None)
    return env


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "jaxdd.cli", *args]


def _distill_cmd(sets: list[str], out, *extra: str) -> list[str]:
    argv = ["distill", "--config", CONFIG, "--ipc", "10", "--out", str(out), "--no-eval",
            "--quiet", "--json", *extra]
    for s in sets:
        argv += ["--set", s]
    return _cli(*argv)


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=TIMEOUT_S)


def _steps(out) -> list[int]:
    d = os.path.join(out, "run", "checkpoints")
    return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def _snapshot(root) -> dict[str, bytes]:
    """Every file under root with its bytes (to prove nothing was touched)."""
    snap = {}
    for dp, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dp, f)
            snap[os.path.relpath(p, root)] = open(p, "rb").read()
    return snap


def _truncate_tree(root) -> None:
    for dp, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dp, f)
            os.truncate(p, os.path.getsize(p) // 2)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Tiny npz (as tests/conftest.py), its expert buffer, and an uninterrupted reference run."""
    root = tmp_path_factory.mktemp("resilience")
    npz = write_tiny_npz(root / "tiny.npz")
    sets = [f"dataset=npz:{npz}", "model=convnet_d2_w4", f"buffer_dir={root / 'buf'}",
            f"iterations={ITERATIONS}", f"ckpt_every={CKPT_EVERY}", "experts.num_experts=2",
            "experts.epochs=2", "experts.batch_size=64", "mtt.syn_steps=3",
            "mtt.expert_epochs=1", "mtt.max_start=1", "mtt.lr_img=10.0",
            "mtt.dsa_strategy='crop_flip'"]
    buf = _run(_cli("buffer", "--config", CONFIG, "--quiet", "--json",
                    *sum((["--set", s] for s in sets), [])))
    assert buf.returncode == 0, buf.stderr[-3000:]
    full = _run(_distill_cmd(sets, root / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    return {"root": root, "sets": sets, "full": artefact.load(str(root / "full" / "artefact"))}


def _assert_same_as_full(out, full) -> None:
    art = artefact.load(os.path.join(out, "artefact"))
    np.testing.assert_array_equal(art.x_syn_NHWC, full.x_syn_NHWC)
    np.testing.assert_array_equal(art.y_syn, full.y_syn)
    assert art.lr == full.lr


def test_sigkill_then_rerun_is_bit_exact(setup):
    out = setup["root"] / "killed"
    cmd = _distill_cmd(setup["sets"], out)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + TIMEOUT_S
        while not _steps(out):   # a finalised (renamed) checkpoint directory exists
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        assert proc.poll() is None, "the run finished before it could be killed"
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    steps = _steps(out)
    assert steps and steps[-1] < ITERATIONS and not os.path.exists(out / "artefact")

    # A save killed half-way leaves `<step>.orbax-checkpoint-tmp-<n>` (Orbax writes to a tmp
    # dir and renames it when complete). Plant a truncated one past the latest step: the
    # resume must ignore it (and the run must still write that step properly later).
    ckpt_dir = out / "run" / "checkpoints"
    tmp = ckpt_dir / f"{steps[-1] + CKPT_EVERY}.orbax-checkpoint-tmp-1234567890"
    shutil.copytree(ckpt_dir / str(steps[-1]), tmp)
    _truncate_tree(tmp)
    (tmp / "commit_success.txt").unlink(missing_ok=True)

    rerun = _run(cmd)   # the very same command
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "stopped_early" not in rerun.stdout
    _assert_same_as_full(out, setup["full"])
    # Iterations logged after the last checkpoint before the kill are not logged twice.
    logged = [json.loads(line)["iteration"] for line in open(out / "run" / "metrics.jsonl")]
    assert logged == sorted(set(logged)) and logged[-1] == ITERATIONS
    # The stale tmp dirs are gone and the newest `keep` (3) real checkpoints are listed.
    assert sorted(os.listdir(ckpt_dir)) == [str(s) for s in range(ITERATIONS - 2 * CKPT_EVERY,
                                                                  ITERATIONS + 1, CKPT_EVERY)]


def test_corrupt_latest_checkpoint_is_named_and_resume_step_recovers(setup):
    out = setup["root"] / "corrupt"
    sets = setup["sets"]
    r = _run(_distill_cmd(sets, out, "--stop-after", str(2 * CKPT_EVERY + 5)))
    assert r.returncode == 0 and "stopped_early" in r.stdout, r.stderr[-3000:]
    assert _steps(out) == [CKPT_EVERY, 2 * CKPT_EVERY]
    latest = out / "run" / "checkpoints" / str(2 * CKPT_EVERY)
    _truncate_tree(latest / "default")          # torn writes of the array data + metadata
    before = _snapshot(out)

    r = _run(_distill_cmd(sets, out))
    assert r.returncode != 0
    err = r.stderr.strip().splitlines()[-1]
    assert err.startswith("jaxdd: error: "), err
    assert str(latest) in err, err                              # names the checkpoint path
    assert re.search(rf"--resume-step {CKPT_EVERY}\b", err), err  # says what to do
    assert "Nothing was deleted" in err and "<bound method" not in err and " at 0x" not in err
    assert _snapshot(out) == before                             # and deleted/changed nothing

    r = _run(_distill_cmd(sets, out, "--resume-step", str(CKPT_EVERY)))
    assert r.returncode == 0, r.stderr[-3000:]
    _assert_same_as_full(out, setup["full"])
