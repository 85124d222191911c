"""Resumable relabel (`sre2l.relabel(checkpoint_dir=...)`, `jaxdd relabel --checkpoint-dir`):
the KD students train in segments saved after each one; a killed relabel resumes after its
last saved segment and ends bit-identical to an uninterrupted one; another relabel's, or a
user's, directory is refused with one line and left as it was."""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
from conftest import snapshot
from test_cli_faults import _fails
from test_streamed_relabel import _toy_artefact

from jaxdd import safeio
from jaxdd.cli import main
from jaxdd.pipelines import sre2l as sm


class Killed(Exception):
    pass


def _saves(monkeypatch, kill_at=None):
    """Record the steps the relabel checkpoints; raise Killed right after saving kill_at."""
    seen = []
    save = sm.Checkpointer.save

    def recording(self, step, state, force=False):
        save(self, step, state, force)
        seen.append(step)
        if step == kill_at:
            raise Killed

    monkeypatch.setattr(sm.Checkpointer, "save", recording)
    return seen


def _latest(ck):
    """The tree saved at the latest step of checkpoint directory `ck` (host arrays)."""
    with ocp.CheckpointManager(os.path.join(ck, "checkpoints")) as m:
        step = m.latest_step()
        return step, m.restore(step, args=ocp.args.StandardRestore())


def _equal_trees(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    assert len(la) == len(lb) > 0
    for u, v in zip(la, lb):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


OVER = {"epochs": 4, "seeds": 2, "model": "convnet_d2_w4", "batch_size": 5, "recipe": "sre2l"}


def test_killed_relabel_resumes_bit_exactly(tiny_npz, tmp_path, monkeypatch):
    """report="last": 4 segments of one epoch (chunk_size(4)); killed after epoch 2, the rerun
    saves epochs 3 and 4 only and its final students equal an uninterrupted checkpointed
    run's, bit for bit, with the same accuracies as the one-program run."""
    _, art, tdir = _toy_artefact(tmp_path, tiny_npz)
    plain = sm.relabel(art, tdir, OVER, quiet=True)
    whole = str(tmp_path / "whole")
    seen = _saves(monkeypatch)
    full = sm.relabel(art, tdir, OVER, quiet=True, checkpoint_dir=whole)
    assert seen == [1, 2, 3, 4]
    assert full["accuracies"] == plain["accuracies"]

    ck = str(tmp_path / "killed")
    seen = _saves(monkeypatch, kill_at=2)
    with pytest.raises(Killed):
        sm.relabel(art, tdir, OVER, quiet=True, checkpoint_dir=ck)
    assert seen == [1, 2]
    seen = _saves(monkeypatch)
    resumed = sm.relabel(art, tdir, OVER, quiet=True, checkpoint_dir=ck)
    assert seen == [3, 4]                         # resumed after epoch 2, not started again
    assert resumed["accuracies"] == full["accuracies"]
    (sw, want), (sr, got) = _latest(whole), _latest(ck)
    assert sw == sr == 4
    _equal_trees(got["carry"], want["carry"])     # variables and optimiser state
    # a finished directory: nothing left to train, the same result
    seen = _saves(monkeypatch)
    again = sm.relabel(art, tdir, OVER, quiet=True, checkpoint_dir=ck)
    assert seen == [] and again["accuracies"] == full["accuracies"]


def test_killed_best_curve_resumes(tiny_npz, tmp_path, monkeypatch):
    """report="best", select="val": segments of eval_every epochs; the curve restored with
    the students continues where it stopped and equals the one-program run's curve."""
    _, art, tdir = _toy_artefact(tmp_path, tiny_npz)
    over = {**OVER, "epochs": 5, "report": "best", "select": "val", "eval_every": 2}
    plain = sm.relabel(art, tdir, over, quiet=True)
    ck = str(tmp_path / "ck")
    seen = _saves(monkeypatch, kill_at=2)
    with pytest.raises(Killed):
        sm.relabel(art, tdir, over, quiet=True, checkpoint_dir=ck)
    seen = _saves(monkeypatch)
    resumed = sm.relabel(art, tdir, over, quiet=True, checkpoint_dir=ck)
    assert seen == [4, 5] and resumed["eval_epochs"] == plain["eval_epochs"] == [2, 4, 5]
    for k in ("test_curve", "val_curve"):
        c = np.asarray(plain[k])
        assert c.shape == (2, 3) and not np.isnan(c).any() and np.ptp(c) > 0
        np.testing.assert_allclose(resumed[k], c, atol=1e-6)
    assert resumed["best_epochs"] == plain["best_epochs"]
    np.testing.assert_allclose(resumed["accuracies"], plain["accuracies"], atol=1e-6)


def _relabel(art, tdir, ck, *extra):
    return ["relabel", art, "--teacher", tdir, "--model", "convnet_d2_w4", "--epochs", "2",
            "--seeds", "2", "--batch-size", "5", "--recipe", "sre2l", "--checkpoint-dir",
            str(ck), "--quiet", "--json", *extra]


def test_cli_relabel_checkpoint_dir(tiny_npz, tmp_path, capsys):
    """The CLI resumes (a finished directory: nothing retrained, the same accuracies) and
    refuses another relabel's directory, a file and a user's directory, touching nothing."""
    _, art, tdir = _toy_artefact(tmp_path, tiny_npz)
    ck = tmp_path / "ck"
    assert main(_relabel(art, tdir, ck)) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert safeio.is_run_dir(str(ck)) and os.listdir(ck / "checkpoints")
    before = {k: v for k, v in snapshot(ck).items() if ".jaxdd.lock" not in k}
    assert main(_relabel(art, tdir, ck)) == 0
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["accuracies"] == first["accuracies"]
    assert {k: v for k, v in snapshot(ck).items() if ".jaxdd.lock" not in k} == before
    _fails(capsys, tmp_path, _relabel(art, tdir, ck, "--seed", "1"),
           "different config", "--checkpoint-dir")
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    _fails(capsys, tmp_path, _relabel(art, tdir, notes), "--checkpoint-dir", "existing file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    _fails(capsys, tmp_path, _relabel(art, tdir, mine), "--checkpoint-dir", "not a jaxdd run")
