"""Watching a run: TensorBoard event files (read by TensorBoard's own reader), JSONL logs,
evaluation during distillation with the best set selected on the validation split (kept
across a resume), plots, and progress bars / quiet mode."""

import json
import os

import jax
import numpy as np
import pytest
from conftest import snapshot
from PIL import Image

from jaxdd import artefact
from jaxdd.cli import main
from jaxdd.pipelines import common
from jaxdd.run import metrics, progress

ROOT = os.path.join(os.path.dirname(__file__), "..")
DM = os.path.join(ROOT, "configs", "classic", "dm_fashion_mnist_cpu.py")
MTT = os.path.join(ROOT, "configs", "mtt", "fashion_mnist_cpu.py")


def _sets(*pairs):
    return sum((["--set", p] for p in pairs), [])


def _dm_argv(npz, out, *extra):
    return ["distill", "--config", DM, "--ipc", "1", "--out", str(out), "--json",
            *_sets(f"dataset=npz:{npz}", "model=convnet_d2_w4", "iterations=6", "ckpt_every=2",
                   "eval.protocol=smoke", "eval.seeds=1", "dm.batch_real=8", "log.every=1",
                   "log.image_every=0"), *extra]


def _events(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]   # every line must parse


def test_mtt_run_logs_tensorboard_jsonl_best_and_plots(tiny_npz, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(progress, "_isatty", lambda stream: True)   # as on a terminal
    out = tmp_path / "run"
    argv = ["distill", "--config", MTT, "--ipc", "1", "--out", str(out), "--json",
            *_sets(f"dataset=npz:{tiny_npz}", f"buffer_dir={str(tmp_path / 'buf')!r}",
                   "model=convnet_d2_w4", "iterations=6", "ckpt_every=2",
                   "experts.num_experts=1", "experts.epochs=2", "experts.batch_size=64",
                   "mtt.syn_steps=2", "mtt.expert_epochs=1", "mtt.max_start=1",
                   "mtt.dsa_strategy='crop'", "eval.protocol=smoke", "eval.seeds=1",
                   "eval.random_baseline=False", "eval_every=2", "eval.val_seeds=2",
                   "eval.val_overrides={'epochs': 5}", "log.every=1", "log.image_every=3")]
    assert main(argv) == 0
    o, e = capsys.readouterr()
    res = json.loads(o.strip().splitlines()[-1])   # stdout stays one clean JSON line
    assert "distill mtt" in e and "6/6" in e        # the tqdm bar (stderr is a "terminal")

    # JSONL: metrics.jsonl keeps its format (one line per logged iteration), eval.jsonl
    # holds the periodic evaluations.
    train = _jsonl(out / "run" / "metrics.jsonl")
    assert [m["iteration"] for m in train] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(m["loss"]) and m["lr"] > 0 and "grad_norm_img" in m for m in train)
    evals = _jsonl(out / "run" / "eval.jsonl")
    assert [m["iteration"] for m in evals] == [2, 4, 6]
    assert all(0 <= m["val_accuracy"] <= 1 and 0 <= m["test_accuracy"] <= 1 for m in evals)

    # TensorBoard, read by TensorBoard's own reader.
    acc = _events(out / "run" / "tensorboard")
    tags = acc.Tags()
    for tag in ("train/loss", "train/lr", "train/grad_norm_img", "eval/val_accuracy",
                "eval/test_accuracy", "eval/best_val_accuracy", "final/artefact/test_accuracy",
                "final/best/test_accuracy"):
        assert tag in tags["scalars"], (tag, tags["scalars"])
    loss = acc.Scalars("train/loss")
    assert [s.step for s in loss] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([s.value for s in loss], [m["loss"] for m in train], rtol=1e-6)
    lr = acc.Scalars("train/lr")   # MTT's learned syn_lr
    np.testing.assert_allclose([s.value for s in lr], [m["lr"] for m in train], rtol=1e-6)
    val = acc.Scalars("eval/val_accuracy")
    assert [s.step for s in val] == [2, 4, 6]
    np.testing.assert_allclose([s.value for s in val], [m["val_accuracy"] for m in evals],
                               rtol=1e-6)
    images = acc.Images("train/images")
    assert [i.step for i in images] == [3, 6]
    assert (images[0].height, images[0].width) == (3 * 9 + 1, 1 * 9 + 1)  # 3 classes x 1 image
    assert "final/results/text_summary" in tags["tensors"]

    # The best set: selected on the validation split, at the iteration of the max val
    # accuracy among the logged evaluations (the earliest of ties).
    vals = [m["val_accuracy"] for m in evals]
    want = evals[int(np.argmax(vals))]
    sel = artefact.load(str(out / "best")).meta["selection"]
    assert sel["selected_on"] == "validation" and "val-selected" in sel["label"]
    assert sel["iteration"] == want["iteration"] and sel["val_accuracy"] == want["val_accuracy"]
    assert sel["seeds"] == 2 and sel["epochs"] == 5
    assert res["best"]["iteration"] == want["iteration"]
    assert res["artefacts"]["best"] == str(out / "best")
    assert all(m["best_iteration"] == want["iteration"] for m in evals if m["iteration"] >=
               want["iteration"])
    assert main(["evaluate", str(out / "best"), "--protocol", "smoke", "--seeds", "1",
                 "--epochs", "2", "--json", "--quiet"]) == 0
    ev = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert ev["method"] == "mtt" and 0 <= ev["accuracy_mean"] <= 1

    # Plots: loss, learned lr and accuracy curves as PNG in the run directory.
    for name in ("loss", "lr", "accuracy"):
        with Image.open(out / "plots" / f"{name}.png") as im:
            assert im.format == "PNG" and im.size == (720, 440)


def _iteration_of(key, base, iterations):
    """The t with key == fold_in(base, t) (the periodic evaluation's key schedule)."""
    for t in range(1, iterations + 1):
        if (jax.random.key_data(jax.random.fold_in(base, t)) == jax.random.key_data(key)).all():
            return t
    raise AssertionError("not a periodic-evaluation key")


def test_resume_keeps_the_best_so_far(tiny_npz, tmp_path, capsys, monkeypatch):
    """Scripted val accuracies 0.9 (iteration 2), 0.3 (4), 0.5 (6); the run stops after 3
    steps and resumes from checkpoint 2. The best must stay iteration 2's: a resume that
    forgot it would take iteration 4's, then 6's."""
    scripted = {2: 0.9, 4: 0.3, 6: 0.5}
    base = jax.random.fold_in(jax.random.key(0), 4)
    seen = []

    def fake_evaluate_set(key, x, y, data, proto, seeds, lr=None, **kw):
        t = _iteration_of(key, base, 6)
        seen.append(t)
        return {"accuracy_mean": 0.5, "accuracy_std": 0.0, "val_accuracy_mean": scripted[t],
                "seeds": seeds, "protocol": proto.name, "seconds": 0.0}

    monkeypatch.setattr(common, "evaluate_set", fake_evaluate_set)
    out = tmp_path / "run"
    argv = _dm_argv(tiny_npz, out, "--quiet", "--no-eval", *_sets("eval_every=2"))
    assert main(argv + ["--stop-after", "3"]) == 0
    assert "stopped_early" in capsys.readouterr().out
    first = artefact.load(str(out / "best")).meta
    assert first["selection"]["iteration"] == 2
    assert main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert seen == [2, 4, 6]
    meta = artefact.load(str(out / "best")).meta
    assert meta["selection"]["iteration"] == 2 and meta["selection"]["val_accuracy"] == 0.9
    assert meta["arrays_sha256"] == first["arrays_sha256"]   # not replaced after the resume
    assert res["best"]["iteration"] == 2
    evals = _jsonl(out / "run" / "eval.jsonl")
    assert [(m["iteration"], m["best_iteration"]) for m in evals] == [(2, 2), (4, 2), (6, 2)]
    # TensorBoard purges what the killed run logged after the checkpoint: each step once.
    acc = _events(out / "run" / "tensorboard")
    assert [s.step for s in acc.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [s.value for s in acc.Scalars("eval/best_iteration")] == [2, 2, 2]


def test_quiet_mode_prints_no_progress_bar(tiny_npz, tmp_path, capsys, monkeypatch):
    art = str(tmp_path / "rand")
    assert main(["baseline", "random", "--dataset", f"npz:{tiny_npz}", "--ipc", "2", "--out",
                 art, "--quiet"]) == 0
    capsys.readouterr()
    ev = ["evaluate", art, "--protocol", "smoke", "--seeds", "1", "--epochs", "4", "--json"]

    def stderr_of(*extra, tty):
        monkeypatch.setattr(progress, "_isatty", lambda stream: tty)
        assert main(ev + list(extra)) == 0
        o, e = capsys.readouterr()
        json.loads(o.strip().splitlines()[-1])
        return e

    bar = stderr_of(tty=True)                       # a terminal: a tqdm bar with an ETA
    assert "evaluate smoke" in bar and "4/4" in bar and "100%" in bar
    assert stderr_of("--quiet", tty=True) == ""     # --quiet: nothing, terminal or not
    assert stderr_of(tty=False) == ""               # not a terminal: no bar either


def test_writers_fan_out_and_truncate_on_resume(tmp_path):
    path = tmp_path / "a.jsonl"
    tb = metrics.TensorBoardWriter(str(tmp_path / "tb"))
    w = metrics.MultiWriter([metrics.JsonlWriter({"train": str(path)}), tb])
    assert not (tmp_path / "tb").exists()                        # files open lazily
    for t in (1, 2, 3):
        w.write_scalars(t, {"train/loss": 1.0 / t, "train/vec": [t, t], "eval/x": 5})
    w.write_images(2, {"train/images": np.zeros((4, 5, 1), np.float32)})
    w.close()
    assert _jsonl(path) == [{"loss": 1.0 / t, "vec": [t, t], "iteration": t} for t in (1, 2, 3)]
    w.start(2)                                                   # a resume from step 2
    w.write_scalars(3, {"train/loss": 7.0})
    w.close()
    assert [m["loss"] for m in _jsonl(path)] == [1.0, 0.5, 7.0]
    acc = _events(tmp_path / "tb")
    assert [(s.step, s.value) for s in acc.Scalars("train/loss")] == [(1, 1.0), (2, 0.5),
                                                                      (3, 7.0)]
    assert "train/vec" not in acc.Tags()["scalars"]           # TensorBoard: scalars only
    assert acc.Images("train/images")[0].width == 5


@pytest.mark.parametrize("setting,needle", [
    ("eval_every=0", "config.eval_every must be > 0"),
    ("log.image_every=-1", "log.image_every must be >= 0"),
    ("log.every=0", "log.every must be > 0"),
    ("log.tensorbord=False", "log.tensorbord: unknown field"),
    ("eval.val_seeds=0", "eval.val_seeds must be > 0"),
    ("eval.val_overrides={'epoch': 3}", "eval.val_overrides.epoch: unknown field"),
])
def test_bad_watch_settings_are_refused(setting, needle, tiny_npz, tmp_path, capsys):
    before = snapshot(tmp_path)
    assert main(_dm_argv(tiny_npz, tmp_path / "o", "--set", setting)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxdd: error: ") and needle in err[0], err
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()


def test_wandb_without_the_package_is_one_clear_error(tiny_npz, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(metrics.importlib.util, "find_spec",
                        lambda name, *a: None if name == "wandb" else _find(name, *a))
    before = snapshot(tmp_path)
    assert main(_dm_argv(tiny_npz, tmp_path / "o", "--wandb")) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--wandb needs the wandb package: pip install wandb" in err[0]
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()


_find = metrics.importlib.util.find_spec


def test_eval_every_is_refused_for_batch_built_sets(tmp_path, capsys):
    rded = os.path.join(ROOT, "configs", "sre2l", "rded_fashion_mnist_cpu.py")
    before = snapshot(tmp_path)
    assert main(["distill", "--config", rded, "--out", str(tmp_path / "o"), "--set",
                 "eval_every=2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval_every evaluates one set" in err[0] and "rded" in err[0]
    assert snapshot(tmp_path) == before and not (tmp_path / "o").exists()
