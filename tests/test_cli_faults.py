"""The CLI run the way a careless or hostile user would: every bad input or fault ends in
a non-zero exit, ONE stderr line `jaxdd: error: ...` that says what to change, and every
file that existed before byte-identical afterwards."""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import snapshot
from jax.experimental import io_callback

from jaxdd import artefact, registry, safeio
from jaxdd.cli import main
from jaxdd.methods import base
from jaxdd.run import driver

ROOT = os.path.join(os.path.dirname(__file__), "..")
DM = os.path.join(ROOT, "configs", "classic", "dm_fashion_mnist_cpu.py")
MTT = os.path.join(ROOT, "configs", "mtt", "fashion_mnist_cpu.py")
SRE2L = os.path.join(ROOT, "configs", "sre2l", "fashion_mnist_cpu.py")
RDED = os.path.join(ROOT, "configs", "sre2l", "rded_fashion_mnist_cpu.py")


def _sets(*pairs):
    return sum((["--set", p] for p in pairs), [])


def _dm_argv(npz, out, *extra):
    return ["distill", "--config", DM, "--ipc", "1", "--out", str(out), "--quiet", "--json",
            *_sets(f"dataset=npz:{npz}", "model=convnet_d2_w4", "iterations=4", "ckpt_every=2",
                   "eval.protocol=smoke", "eval.seeds=1", "dm.batch_real=8",
                   "dm.dsa_strategy='crop'"), *extra]


def _fails(capsys, root, argv, *needles):
    """Run the CLI; assert exit != 0, one `jaxdd: error:` line holding the needles, and the
    files under root unchanged. Returns the error line."""
    before = snapshot(root)
    with pytest.raises(SystemExit) if argv and argv[0] == "!argparse" else _noop():
        code = main(argv[1:] if argv[0] == "!argparse" else argv)
        assert code != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxdd: error: "), err
    for n in needles:
        assert n in err[0], err[0]
    assert snapshot(root) == before
    return err[0]


class _noop:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_out_is_a_user_directory_or_file(tiny_npz, tmp_path, capsys):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("do not lose me")
    _fails(capsys, tmp_path, ["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "1",
                              "--out", str(user), "--quiet"], "not a jaxdd artefact")
    _fails(capsys, tmp_path, ["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "1",
                              "--out", str(user), "--quiet", "--overwrite"], "not a jaxdd artefact")
    _fails(capsys, tmp_path, _dm_argv(tiny_npz, user), "not a jaxdd run directory")
    _fails(capsys, tmp_path, _dm_argv(tiny_npz, user / "thesis.tex"), "existing file")
    _fails(capsys, tmp_path, ["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "1",
                              "--out", str(user / "thesis.tex"), "--quiet"], "existing file")


def test_rerun_of_a_finished_distill_keeps_the_evaluation_history(tiny_npz, tmp_path, capsys):
    out = tmp_path / "run"
    for _ in range(2):
        assert main(_dm_argv(tiny_npz, out)) == 0
        capsys.readouterr()
    evs = json.load(open(out / "artefact" / "evaluations.json"))
    result = json.load(open(out / "result.json"))
    assert len(evs) == 2 and evs[0]["accuracy_mean"] == evs[1]["accuracy_mean"]
    assert len(result["history"]) == 1
    acc = [r["evaluations"]["artefact"]["accuracy_mean"] for r in (result, *result["history"])]
    assert acc[0] == acc[1] == evs[0]["accuracy_mean"]


@pytest.mark.parametrize("setting,needle", [
    ("dm.lr_img=1e999", "dm.lr_img: must be a finite number"),
    ("dm.lr_img=nan", "dm.lr_img: expected float, got 'nan'"),
    ("dm.lr_img=-1.0", "dm.lr_img must be > 0"),
    ("iterations=abc", "config.iterations: expected int, got 'abc'"),
    ("iterations=0", "config.iterations must be > 0"),
    ("ckpt_every=0", "config.ckpt_every must be > 0"),
    ("eval.seedz=3", "eval.seedz: unknown field; known: augment, overrides, protocol"),
    ("eval.seeds=0", "eval.seeds must be > 0"),
    ("dm.batch_reel=3", "dm.batch_reel: unknown field"),
    ("mtt.lr_img=1.0", "config.mtt: unknown field"),
])
def test_bad_set_values_are_refused_before_any_work(setting, needle, tiny_npz, tmp_path, capsys):
    _fails(capsys, tmp_path, _dm_argv(tiny_npz, tmp_path / "o", "--set", setting), needle)
    assert not (tmp_path / "o").exists()


def test_relabel_section_is_checked(tmp_path, capsys):
    _fails(capsys, tmp_path, ["recover", "--config", SRE2L, "--out", str(tmp_path / "o"),
                              "--set", "relabel.epoch=3"], "relabel.epoch: unknown field")
    _fails(capsys, tmp_path, ["recover", "--config", SRE2L, "--out", str(tmp_path / "o"),
                              "--set", "relabel.epochs=0"], "relabel.epochs must be > 0")


def test_config_file_errors(tmp_path, capsys):
    bad = tmp_path / "bad.py"
    bad.write_text("def get_config(:\n    return {}\n")
    _fails(capsys, tmp_path, ["distill", "--config", str(bad)], "line 1", "fix the syntax")
    _fails(capsys, tmp_path, ["distill", "--config", MTT, "--ipc", "3"],
           "no preset for IPC 3", "add IPC 3 to its by_ipc")
    _fails(capsys, tmp_path, ["distill", "--config", str(tmp_path / "none.py")], "does not exist")


@pytest.mark.parametrize("flag,value", [("--seeds", "0"), ("--seeds", "-1"), ("--epochs", "0"),
                                        ("--seeds", "two")])
def test_evaluate_flag_ranges(flag, value, tiny_npz, tmp_path, capsys):
    out = tmp_path / "rand"
    assert main(["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2", "--out",
                 str(out), "--quiet"]) == 0
    capsys.readouterr()
    line = _fails(capsys, tmp_path, ["!argparse", "evaluate", str(out), flag, value])
    assert flag in line


def test_nan_artefact_is_refused(tiny_npz, tmp_path, capsys):
    out = tmp_path / "rand"
    assert main(["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2", "--out",
                 str(out), "--quiet"]) == 0
    capsys.readouterr()
    with np.load(out / "arrays.npz") as z:
        arrays = {k: z[k] for k in z.files}
    arrays["x_syn_NHWC"][0, 0, 0, 0] = np.nan
    np.savez(out / "arrays.npz", **arrays)
    meta = json.load(open(out / "meta.json"))
    meta["arrays_sha256"] = safeio.sha256_file(str(out / "arrays.npz"))
    json.dump(meta, open(out / "meta.json", "w"))
    _fails(capsys, tmp_path, ["evaluate", str(out), "--protocol", "smoke", "--seeds", "1"],
           "contain NaN/inf")


def test_unwritable_artefact_prints_the_result_first(tiny_npz, tmp_path, capsys, monkeypatch):
    out = tmp_path / "rand"
    assert main(["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2", "--out",
                 str(out), "--quiet"]) == 0
    capsys.readouterr()
    real_replace = os.replace

    def read_only(src, dst, *a, **k):  # the artefact directory is read-only
        if str(dst).startswith(str(out)):
            raise PermissionError(13, "Permission denied", str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(safeio.os, "replace", read_only)
    before = snapshot(tmp_path)
    code = main(["evaluate", str(out), "--protocol", "smoke", "--seeds", "1", "--epochs", "2",
                 "--json", "--quiet"])
    o, e = capsys.readouterr()
    assert code == 2 and json.loads(o.strip().splitlines()[-1])["seeds"] == 1
    assert e.strip().splitlines() == [e.strip()] and "Permission denied" in e
    assert "make it writable" in e and snapshot(tmp_path) == before


def test_unwritable_run_directory_is_refused_before_any_work(tiny_npz, tmp_path, capsys,
                                                             monkeypatch):
    out = tmp_path / "run"
    real_replace = os.replace

    def read_only(src, dst, *a, **k):  # nothing can be renamed into OUT
        if str(dst).startswith(str(out)):
            raise PermissionError(13, "Permission denied", str(dst))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(safeio.os, "replace", read_only)
    line = _fails(capsys, tmp_path, _dm_argv(tiny_npz, out), "cannot write", "run.json",
                  "Permission denied", "make it writable")
    assert "Traceback" not in line


def test_second_process_on_the_same_out_is_refused(tiny_npz, tmp_path, capsys):
    out = tmp_path / "run"
    with safeio.RunLock(str(out)):
        _fails(capsys, tmp_path, _dm_argv(tiny_npz, out), f"pid {os.getpid()}", "in use")
    # A holder killed with SIGKILL leaves its lock file; the kernel released the lock.
    code = ("import os, signal, sys; from jaxdd import safeio; "
            f"safeio.RunLock({str(out)!r}).__enter__(); os.kill(os.getpid(), signal.SIGKILL)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert r.returncode == -signal.SIGKILL
    assert "jaxdd pid" in (out / safeio.LOCK_NAME).read_text()
    assert main(_dm_argv(tiny_npz, out)) == 0


# --- A NaN injected into every registered method's step --------------------------------

TINY = {  # method -> (config, --set values for the tiny npz)
    "mtt": (MTT, ["model=convnet_d2_w4", "iterations=6", "ckpt_every=2",
                  "experts.num_experts=1", "experts.epochs=2", "experts.batch_size=64",
                  "mtt.syn_steps=2", "mtt.expert_epochs=1", "mtt.max_start=1",
                  "mtt.dsa_strategy='crop'"]),
    "dm": (DM, ["model=convnet_d2_w4", "iterations=6", "ckpt_every=2", "dm.batch_real=8",
                "dm.dsa_strategy='crop'"]),
    "rded": (RDED, ["teacher.model=convnet_d2_w4_bn", "teacher.epochs=1",
                    "teacher.batch_size=64", "rded.mipc=12", "rded.num_crop=2",
                    "rded.class_batch=1"]),
    "sre2l": (SRE2L, ["teacher.model=convnet_d2_w4_bn", "teacher.epochs=1",
                      "teacher.batch_size=64", "recover.iterations=6", "recover.batch_size=3"]),
}
for _m, _cfg in (("dc", "dc"), ("dsa", "dsa"), ("datadam", "datadam")):
    TINY[_m] = (os.path.join(ROOT, "configs", "classic", f"{_cfg}_fashion_mnist_cpu.py"),
                ["model=convnet_d2_w4", "iterations=6", "ckpt_every=2",
                 f"{_m}.batch_real=8"] + ([] if _m == "dc" else [f"{_m}.dsa_strategy='crop'"]))
TINY["frepo"] = (os.path.join(ROOT, "configs", "frepo", "fashion_mnist_cpu.py"),
                 ["model=convnet_d2_w4", "iterations=6", "ckpt_every=2", "frepo.batch_real=8",
                  "frepo.pool_size=2", "frepo.reg=0.001"])
for _m in ("cda", "gvbsm", "dwa"):
    TINY[_m] = (SRE2L, TINY["sre2l"][1] + [f"method={_m!r}"])
TINY["infer"] = (os.path.join(ROOT, "configs", "sre2l", "infer_fashion_mnist_cpu.py"),
                 ["teacher.model=convnet_d2_w4_bn", "teacher.epochs=1", "teacher.batch_size=64",
                  "teacher.num_teachers=1", "infer.iterations=6"])


def _poisoned_guard(calls: list, bad_call: int):
    """skip_nonfinite around a step whose `bad_call`-th call returns NaN images."""
    def host_factor():
        calls.append(1)
        return np.float32(np.nan if len(calls) == bad_call else 1.0)

    def wrap(distiller):
        def step(state, batch, key):
            new, m = distiller.step(state, batch, key)
            f = io_callback(host_factor, jax.ShapeDtypeStruct((), jnp.float32), ordered=True)
            syn = new.syn._replace(x_syn_NHWC=new.syn.x_syn_NHWC * f)
            return new._replace(syn=syn), m
        return base.skip_nonfinite(base.Distiller(distiller.init, step))
    return wrap


def test_every_registered_method_has_a_nan_test():
    assert sorted(TINY) == registry.names()


@pytest.mark.parametrize("method", sorted(TINY))
def test_nan_step_is_skipped_reported_and_resumable(method, tiny_npz, tmp_path, capsys,
                                                    monkeypatch):
    config, sets = TINY[method]
    calls: list = []
    monkeypatch.setattr(driver, "skip_nonfinite", _poisoned_guard(calls, 3))
    monkeypatch.setattr(driver, "_COMPILED", {})
    base_sets = [f"dataset=npz:{tiny_npz}", f"teacher.dir={str(tmp_path / 'teacher')!r}",
                 f"buffer_dir={str(tmp_path / 'buf')!r}", *sets]
    base_sets = [s for s in base_sets if s.split("=")[0].split(".")[0] in
                 _sections(config, method)]
    out = tmp_path / "run"
    ipc = "2" if method == "infer" else "1"  # INFER: IPC 1 of 3 classes fits no base set
    argv = ["distill", "--config", config, "--ipc", ipc, "--out", str(out), "--quiet", "--json",
            "--no-eval", *_sets(*base_sets)]
    if method == "rded":  # a class batch cannot be skipped: the run stops, checkpoints intact
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "non-finite steps in a row, the last at iteration 3" in err[0]
        assert sorted(os.listdir(out / "run" / "checkpoints")) == ["1", "2"]
        assert main(argv) == 0  # the resume continues from checkpoint 2
        r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        art = artefact.load(r["artefacts"]["artefact"])
        assert np.isfinite(art.x_syn_NHWC).all() and (art.x_syn_NHWC != 0).any(axis=(1, 2, 3)).all()
        return
    assert main(argv + ["--stop-after", "4"]) == 0
    capsys.readouterr()
    if method not in _BATCHED:  # resume past the checkpoint taken before the NaN
        steps = sorted(os.listdir(out / "run" / "checkpoints"))
        assert steps and all(s.isdigit() for s in steps)
        assert main(argv) == 0
        r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        logged = [json.loads(line) for line in open(out / "run" / "metrics.jsonl")]
        assert [m["iteration"] for m in logged if m.get("nonfinite")] == [3]
    else:  # recover: the batch (INFER: compensator) is the unit of resumption; the skip is
        assert main(argv) == 0  # counted in it
        r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        units = out / ("compensators" if method == "infer" else "batches")
        b = sorted(os.listdir(units))
        assert sum(int(np.load(units / f)["nonfinite_steps"]) for f in b) == 1
    art = artefact.load(r["artefacts"]["artefact"])
    assert np.isfinite(art.x_syn_NHWC).all() and len(calls) >= 3


_BATCHED = {"sre2l", "cda", "gvbsm", "dwa", "infer"}


def _sections(config, method):
    keep = {"dataset", "model", "iterations", "ckpt_every", "method", method}
    if "mtt" in config:
        keep |= {"experts", "buffer_dir"}
    if "sre2l" in config:
        keep = {"dataset", "teacher", "recover", "rded", "infer", "method"}
    return keep
