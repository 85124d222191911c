"""The G-VBSM conv-target cache shared by two jax.distributed processes: both make the same
load-or-compute choice (no deadlock in a collective pass), only process 0 writes the entry,
and both read the same targets; a second call loads it everywhere."""

import json
import os
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from jaxdd.methods.statistics.capture import ConvStat
from jaxdd.population import conv_targets as ct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def test_two_processes_share_one_cache_entry(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
    env.pop("XLA_FLAGS", None)
    procs = [subprocess.Popen([sys.executable, os.path.join(HERE, "conv_targets_mp_check.py"),
                               str(tmp_path), "2", str(i), str(port)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    res = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
        res.append(json.loads(out.strip().splitlines()[-1]))
    res.sort(key=lambda r: r["process_index"])
    # computed once (on every process, as a collective pass must be), then loaded twice
    assert [r["computed"] for r in res] == [[True, False], [True, False]]
    assert [r["calls"] for r in res] == [1, 1]
    assert res[0]["sum"] == res[1]["sum"] == sum(range(6)) * 4 + 6 * (1 + 2 + 3)
    (entry,) = os.listdir(tmp_path)
    assert sorted(os.listdir(tmp_path / entry)) == ["targets.json", "targets.npz"]
    assert res[0]["files"] == res[1]["files"] == ["targets.json", "targets.npz"]


def test_other_process_follows_process_0_and_never_writes(tmp_path, monkeypatch):
    """Process 1 of 2 whose file system already shows an entry while process 0 saw none:
    it must follow process 0 (compute, as the collective pass needs it) and leave the
    writing to process 0 (simulated in one process)."""
    from jax.experimental import multihost_utils

    key = ct.make_key(teacher_sha256="t", model="m", dataset="d", dataset_fingerprint="f",
                      preprocess_sha256="p", patch_size=4, per_channel=False, batch_size=8,
                      pad=0, flip=False, seed=0)
    path = str(tmp_path / "entry")
    v = jnp.ones((2, 3))
    ct.save(path, [ConvStat(v, v, v, v)], key)           # what process 0 writes meanwhile
    calls, synced = [], []
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    monkeypatch.setattr(multihost_utils, "broadcast_one_to_all", lambda x: np.int32(0))
    monkeypatch.setattr(multihost_utils, "sync_global_devices", synced.append)
    monkeypatch.setattr(ct, "save", lambda *a, **k: calls.append("save"))

    def compute():
        calls.append("compute")
        return [ConvStat(v, v, v, v)], ["conv0"]

    targets, computed = ct.load_or_compute(path, key, compute)
    assert computed and calls == ["compute"] and len(synced) == 1
    np.testing.assert_array_equal(targets[0][0], np.ones((2, 3)))
