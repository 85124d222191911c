"""Resumable evaluation (`train_seeds(checkpoint=...)`, `jaxdd evaluate --checkpoint-dir`): a
killed evaluation continues from its last chunk of epochs and ends bit-identical to an
uninterrupted one; a directory claimed by another evaluation, or a user's file, is refused
with one line and left as it was."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import snapshot
from test_cli_faults import _fails

from jaxdd import safeio
from jaxdd.cli import main
from jaxdd.evaluate import train_seeds
from jaxdd.models import get_model
from jaxdd.train import TrainConfig


class Killed(Exception):
    pass


def _setup():
    m = get_model("mlp_w16", 3, (8, 8, 1))
    cfg = TrainConfig(epochs=4, batch_size=10, dsa="")   # 4 chunks of 1 epoch; shuffled batches
    x = jax.random.normal(jax.random.key(0), (24, 8, 8, 1))
    y = jax.nn.one_hot(jnp.arange(24) % 3, 3)
    return m, cfg, x, y, jax.random.split(jax.random.key(1), 2)


def _equal(a, b):
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        np.testing.assert_array_equal(u, v)


def test_killed_training_resumes_bit_exactly(tmp_path):
    m, cfg, x, y, keys = _setup()
    want = train_seeds(keys, m, cfg, x, y)
    conf = {"evaluate": "test", "seeds": 2}

    seen = []

    def kill_after_two(done, total):
        seen.append(done)
        if done == 2:
            raise Killed

    ck = str(tmp_path / "killed")
    with pytest.raises(Killed):
        train_seeds(keys, m, cfg, x, y, progress=kill_after_two, checkpoint=(ck, conf))
    assert sorted(int(s) for s in os.listdir(os.path.join(ck, "checkpoints"))) == [1, 2]
    seen.clear()
    got = train_seeds(keys, m, cfg, x, y, progress=lambda d, t: seen.append(d),
                      checkpoint=(ck, conf))
    assert seen == [2, 3, 4]          # resumed after epoch 2, not started again
    _equal(got, want)   # (a finished directory: the CLI test below)
    with pytest.raises(safeio.OutputError, match="different config .*seeds.*--checkpoint-dir"):
        train_seeds(keys, m, cfg, x, y, checkpoint=(ck, {**conf, "seeds": 3}))


def _artefact(npz, out, capsys):
    assert main(["baseline", "random", "--dataset", f"npz:{npz}", "--ipc", "2", "--out",
                 str(out), "--quiet"]) == 0
    capsys.readouterr()


def _evaluate(out, ck, *extra):
    return ["evaluate", str(out), "--protocol", "smoke", "--epochs", "3", "--seeds", "2",
            "--checkpoint-dir", str(ck), "--quiet", "--json", *extra]


def test_cli_checkpoint_dir_resumes_and_refuses_other_evaluations(tiny_npz, tmp_path, capsys):
    out, ck = tmp_path / "rand", tmp_path / "ck"
    _artefact(tiny_npz, out, capsys)
    assert main(["evaluate", str(out), "--protocol", "smoke", "--epochs", "3", "--seeds", "2",
                 "--quiet", "--json"]) == 0
    plain = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(_evaluate(out, ck)) == 0
    first = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert first["accuracies"] == plain["accuracies"]
    assert safeio.is_run_dir(str(ck)) and os.listdir(ck / "checkpoints")
    assert main(_evaluate(out, ck)) == 0      # again: restored from the last checkpoint
    again = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert again["accuracies"] == first["accuracies"]
    # another evaluation in the same directory: refused, nothing touched
    _fails(capsys, tmp_path, _evaluate(out, ck, "--seed", "1"),
           "different config", "key", "--checkpoint-dir")
    _fails(capsys, tmp_path, ["evaluate", str(out), "--protocol", "smoke", "--epochs", "4",
                              "--seeds", "2", "--checkpoint-dir", str(ck), "--quiet"],
           "different config", "train")


def test_cli_checkpoint_dir_never_takes_a_users_files(tiny_npz, tmp_path, capsys):
    out = tmp_path / "rand"
    _artefact(tiny_npz, out, capsys)
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    _fails(capsys, tmp_path, _evaluate(out, notes), "--checkpoint-dir", "existing file")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("x")
    _fails(capsys, tmp_path, _evaluate(out, mine), "--checkpoint-dir", "not a jaxdd run")
    # --models: one subdirectory per model, each its own claimed evaluation
    ck = tmp_path / "ck_models"
    assert main(_evaluate(out, ck, "--models", "mlp_w32,convnet_d2_w4")) == 0
    capsys.readouterr()
    assert sorted(os.listdir(ck)) == ["convnet_d2_w4", "mlp_w32"]
    assert all(safeio.is_run_dir(str(ck / d)) for d in os.listdir(ck))
    before = snapshot(ck)
    assert main(_evaluate(out, ck, "--models", "mlp_w32,convnet_d2_w4")) == 0   # resumes
    capsys.readouterr()
    assert {k: v for k, v in snapshot(ck).items() if ".jaxdd.lock" not in k} == \
        {k: v for k, v in before.items() if ".jaxdd.lock" not in k}
    _fails(capsys, tmp_path, _evaluate(out, ck / "mlp_w32", "--models", "mlp_w32,convnet_d2_w4"),
           "holds one model's evaluation")
