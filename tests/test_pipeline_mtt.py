"""End-to-end MTT pipeline on a tiny npz dataset: buffer -> distill -> artefact, resume."""

import json
import os

import numpy as np
import pytest

from jaxdd import artefact
from jaxdd.cli import main
from jaxdd.configs import load_config

CONFIG = os.path.join(os.path.dirname(__file__), "..", "configs", "mtt", "fashion_mnist_cpu.py")


def _tiny_sets(npz, buf):
    """The real cpu preset, shrunk: tiny data, tiny net, few iterations."""
    return [f"dataset=npz:{npz}", "model=convnet_d2_w4", f"buffer_dir={buf}", "iterations=6",
            "ckpt_every=2", "experts.num_experts=2", "experts.epochs=2", "experts.batch_size=64",
            "mtt.syn_steps=3", "mtt.expert_epochs=1", "mtt.max_start=1", "mtt.lr_img=10.0",
            "mtt.dsa_strategy='crop_flip'", "eval.protocol=smoke", "eval.seeds=2"]


def _distill(capsys, out, sets, *extra):
    argv = ["distill", "--config", CONFIG, "--ipc", "10", "--out", out, "--quiet", "--json"]
    for s in sets:
        argv += ["--set", s]
    code = main(argv + list(extra))
    o, e = capsys.readouterr()
    assert code == 0, e
    return json.loads(o.strip().splitlines()[-1])


def test_config_loading_and_overrides():
    cfg = load_config(CONFIG, 1, ["mtt.syn_steps=7", "iterations=3"])
    assert cfg["ipc"] == 1 and cfg["mtt"]["syn_steps"] == 7 and cfg["iterations"] == 3
    with pytest.raises(ValueError, match="config.nope: unknown field; known: buffer_dir"):
        load_config(CONFIG, 1, ["nope=1"])
    with pytest.raises(ValueError, match="mtt.nope: unknown field; known: ast_balance, .*batch_syn"):
        load_config(CONFIG, 1, ["mtt.nope=1"])
    with pytest.raises(ValueError, match="no preset for IPC 3"):
        load_config(CONFIG, 3)


def test_distill_resume_equals_uninterrupted(tiny_npz, tmp_path, capsys):
    sets = _tiny_sets(tiny_npz, str(tmp_path / "buf"))
    full = _distill(capsys, str(tmp_path / "full"), sets)
    assert [len(full["evaluations"][k]["accuracies"]) for k in ("artefact", "random")] == [2, 2]
    art_full = artefact.load(full["artefacts"]["artefact"])
    assert art_full.x_syn_NHWC.shape == (30, 8, 8, 1) and art_full.lr > 0
    assert art_full.meta["method"] == "mtt" and art_full.meta["config"]["iterations"] == 6

    # Interrupted after 3 iterations (checkpoint at 2), then resumed with the same command.
    part = str(tmp_path / "part")
    r = _distill(capsys, part, sets, "--stop-after", "3", "--no-eval")
    assert r["stopped_early"]
    assert not os.path.exists(os.path.join(part, "artefact"))
    _distill(capsys, part, sets, "--no-eval")
    art_res = artefact.load(os.path.join(part, "artefact"))
    np.testing.assert_array_equal(art_res.x_syn_NHWC, art_full.x_syn_NHWC)
    assert art_res.lr == art_full.lr

    # A different config in the same run directory is refused, nothing is touched.
    before = open(os.path.join(part, "artefact", "arrays.npz"), "rb").read()
    code = main(["distill", "--config", CONFIG, "--ipc", "10", "--out", part, "--quiet"]
                + sum((["--set", s] for s in sets + ["mtt.lr_img=99.0"]), []))
    assert code != 0 and "different config" in capsys.readouterr().err
    assert open(os.path.join(part, "artefact", "arrays.npz"), "rb").read() == before


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "tiny_imagenet", "tesla_imagenet64",
                                  "datm_cifar10", "datm_cifar100", "ftd_cifar10",
                                  "fashion_mnist_cpu"])
def test_every_mtt_preset_builds_valid_configs(name):
    """Every preset and IPC yields an MTTConfig / ExpertConfig the library accepts."""
    from jaxdd.population.experts import ExpertConfig
    from jaxdd.methods.mtt import MTTConfig
    from jaxdd.pipelines.common import dataclass_from
    path = os.path.join(os.path.dirname(CONFIG), f"{name}.py")
    for ipc in (1, 10, 50):
        try:
            cfg = load_config(path, ipc)
        except ValueError as e:
            assert "no preset for IPC" in str(e)
            continue
        m = dataclass_from(MTTConfig, {**cfg["mtt"], "iterations": cfg["iterations"]})
        e = dataclass_from(ExpertConfig, cfg["experts"])
        assert m.max_start + m.expert_epochs <= e.epochs
