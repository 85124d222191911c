"""launch/*.sh: --dry-run prints exactly what a real launch runs; bad arguments are usage errors.

gcloud, sbatch, srun, scontrol and jaxdd are replaced by fakes on PATH that print their
argv and the relevant environment as JSON, so the real (non-dry) path is exercised too and
compared with what the dry-run printed (run through bash).
"""

import json
import os
import stat
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")
JAXDD_ARGS = ["distill", "--config", "configs/mtt/fashion_mnist_cpu.py", "--out", "runs/x y",
              "--set", "mtt.dsa_strategy='crop_flip'", "--no-eval"]
FAKE = """#!/usr/bin/env python3
import json, os, sys
keys = [k for k in os.environ if k.startswith(("JAXDD_", "CUDA_VISIBLE", "JAX_COORD"))]
print(json.dumps({"prog": os.path.basename(sys.argv[0]), "argv": sys.argv[1:],
                  "env": {k: os.environ[k] for k in sorted(keys)}}))
"""


def _fake(path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(FAKE)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


@pytest.fixture
def fakes(tmp_path):
    bindir = tmp_path / "bin"
    for name in ("gcloud", "sbatch", "srun", "jaxdd"):
        _fake(bindir / name)
    scontrol = bindir / "scontrol"
    scontrol.write_text("#!/bin/sh\n[ \"$1 $2\" = 'show hostnames' ] || exit 1\necho node017\necho node018\n")
    scontrol.chmod(0o755)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SLURM_", "JAXDD_", "CUDA_VISIBLE", "JAX_COORD"))}
    env["PATH"] = f"{bindir}:{env['PATH']}"
    return tmp_path, env


def _launch(script, args, env, cwd=ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", os.path.join(LAUNCH, script), *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def _dry_then_real(script, opts, env, cwd=ROOT) -> tuple[list[str], dict]:
    """The printed lines, and the fake's record from running them == from the real launch."""
    dry = _launch(script, [*opts, "--dry-run", "--", *JAXDD_ARGS], env, cwd)
    assert dry.returncode == 0, dry.stderr
    lines = dry.stdout.strip().splitlines()
    real = _launch(script, [*opts, "--", *JAXDD_ARGS], env, cwd)
    assert real.returncode == 0, real.stderr
    replay = subprocess.run(["bash", "-c", "\n".join(lines)], env=env, cwd=cwd,
                            capture_output=True, text=True, timeout=60)
    assert replay.returncode == 0, replay.stderr
    rec = json.loads(real.stdout.strip().splitlines()[-1])
    assert json.loads(replay.stdout.strip().splitlines()[-1]) == rec   # dry-run is exact
    return lines, rec


def test_tpu_pod_runs_same_command_on_all_workers(fakes):
    _, env = fakes
    lines, rec = _dry_then_real("tpu_pod.sh", ["--tpu", "my-v4-32", "--zone", "us-central2-b"], env)
    assert len(lines) == 1 and lines[0].startswith("gcloud compute tpus tpu-vm ssh my-v4-32 ")
    assert rec["prog"] == "gcloud"
    argv = rec["argv"]
    assert argv[:5] == ["compute", "tpus", "tpu-vm", "ssh", "my-v4-32"]
    assert "--worker=all" in argv and argv[argv.index("--zone") + 1] == "us-central2-b"
    remote = argv[argv.index("--command") + 1]
    assert remote.startswith("cd jaxdd && JAXDD_DISTRIBUTED=auto .venv/bin/jaxdd distill ")
    # The remote shell gets back exactly the jaxdd argv.
    words = subprocess.run(["bash", "-c", "printf '%s\\n' " + remote.split(".venv/bin/jaxdd ", 1)[1]],
                           capture_output=True, text=True).stdout.splitlines()
    assert words == JAXDD_ARGS


def test_multi_gpu_is_one_process_with_visible_devices(fakes):
    tmp, env = fakes
    env = dict(env, JAXDD_BIN=str(tmp / "bin" / "jaxdd"))
    lines, rec = _dry_then_real("multi_gpu.sh", ["--gpus", "0,1,2,3"], env)
    assert len(lines) == 1   # one process for all GPUs
    assert rec["prog"] == "jaxdd" and rec["argv"] == JAXDD_ARGS
    assert rec["env"]["CUDA_VISIBLE_DEVICES"] == "0,1,2,3"
    assert not any(k.startswith("JAXDD_") and k != "JAXDD_BIN" for k in rec["env"])
    # Without --gpus an existing CUDA_VISIBLE_DEVICES passes through unchanged.
    _, rec = _dry_then_real("multi_gpu.sh", [], dict(env, CUDA_VISIBLE_DEVICES="2,5"))
    assert rec["env"]["CUDA_VISIBLE_DEVICES"] == "2,5"


def test_slurm_submits_itself_from_a_login_node(fakes):
    _, env = fakes
    lines, rec = _dry_then_real("slurm.sh", ["--nodes", "4"], env)
    assert rec["prog"] == "sbatch" and "--nodes=4" in rec["argv"] and "--ntasks-per-node=1" in rec["argv"]
    assert rec["argv"][rec["argv"].index("--") + 1:] == JAXDD_ARGS
    head = open(os.path.join(LAUNCH, "slurm.sh")).read().splitlines()[:4]
    assert "#SBATCH --ntasks-per-node=1" in head


def _allocation_env(env, tmp):
    return dict(env, SLURM_JOB_ID="4242", SLURM_JOB_NUM_NODES="2", SLURM_NTASKS="2",
                SLURM_JOB_NODELIST="node[017-018]", SLURM_SUBMIT_DIR=str(tmp))


def test_slurm_explicit_coordinator_inside_allocation(fakes):
    tmp, env = fakes
    env = _allocation_env(env, tmp)
    lines, rec = _dry_then_real("slurm.sh", [], env)
    assert lines[0] == "export JAXDD_COORDINATOR=node017:24242"   # first host + port
    assert lines[-1].startswith("srun ") and len(lines) == 2
    assert rec["prog"] == "srun" and rec["env"]["JAXDD_COORDINATOR"] == "node017:24242"
    argv = rec["argv"]
    assert {"--nodes=2", "--ntasks=2", "--ntasks-per-node=1", f"--chdir={tmp}"} <= set(argv)
    # Run the per-task part as SLURM would for task 1 of 2: process id / count per task.
    task = argv[argv.index("bash"):]
    assert task[-len(JAXDD_ARGS):] == JAXDD_ARGS
    _fake(tmp / ".venv" / "bin" / "jaxdd")
    out = subprocess.run(task, env=dict(env, SLURM_PROCID="1", JAXDD_COORDINATOR="node017:24242"),
                         cwd=tmp, capture_output=True, text=True, timeout=60)
    rec = json.loads(out.stdout)
    assert rec["argv"] == JAXDD_ARGS
    assert rec["env"] == {"JAXDD_COORDINATOR": "node017:24242", "JAXDD_NUM_PROCESSES": "2",
                          "JAXDD_PROCESS_ID": "1"}


def test_slurm_auto_mode(fakes):
    tmp, env = fakes
    lines, rec = _dry_then_real("slurm.sh", ["--mode", "auto", "--port", "5555"],
                                _allocation_env(env, tmp))
    assert lines[:2] == ["export JAXDD_DISTRIBUTED=auto", "export JAX_COORDINATOR_PORT=5555"]
    assert rec["env"]["JAXDD_DISTRIBUTED"] == "auto" and "JAXDD_COORDINATOR" not in rec["env"]


@pytest.mark.parametrize("script,args", [
    ("tpu_pod.sh", ["--zone", "z", "--", "distill"]),              # no --tpu
    ("tpu_pod.sh", ["--tpu", "t", "--zone", "z"]),                 # no jaxdd command
    ("tpu_pod.sh", ["--tpu", "t", "--zone", "z", "--bogus", "--", "distill"]),
    ("multi_gpu.sh", ["--gpus", "0,a", "--", "distill"]),
    ("multi_gpu.sh", ["--dry-run"]),
    ("slurm.sh", ["--nodes", "0", "--", "distill"]),
    ("slurm.sh", ["--mode", "mpi", "--", "distill"]),
    ("slurm.sh", ["--tasks-per-node", "4", "--", "distill"]),     # explicit = 1 per node
])
def test_bad_arguments_are_usage_errors(fakes, script, args):
    _, env = fakes
    r = _launch(script, args, env)
    assert r.returncode == 2 and "usage:" in r.stderr and r.stdout == ""
