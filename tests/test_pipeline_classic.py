"""Classic matchers end to end through `jaxdd distill` on the tiny npz dataset."""

import json
import os

import pytest

from jaxdd import artefact
from jaxdd.cli import main

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "configs", "classic")


@pytest.mark.parametrize("method,extra", [
    ("dm", ["dm.batch_real=8", "dm.dsa_strategy='crop'"]),
    ("datadam", ["datadam.batch_real=8", "datadam.dsa_strategy='crop'"]),
])
def test_classic_distill_cli(method, extra, tiny_npz, tmp_path, capsys):
    out = str(tmp_path / method)
    argv = ["distill", "--config", os.path.join(CONFIGS, f"{method}_fashion_mnist_cpu.py"),
            "--ipc", "10", "--out", out, "--quiet", "--json"]
    for s in [f"dataset=npz:{tiny_npz}", "model=convnet_d2_w4", "iterations=4", "ckpt_every=2",
              "eval.protocol=smoke", "eval.seeds=2", *extra]:
        argv += ["--set", s]
    code = main(argv)
    o, e = capsys.readouterr()
    assert code == 0, e
    res = json.loads(o.strip().splitlines()[-1])
    art = artefact.load(res["artefacts"]["artefact"])
    assert art.meta["method"] == method and art.x_syn_NHWC.shape == (30, 8, 8, 1)
    assert art.lr is None and 0 <= res["accuracy_mean"] <= 1 and "random_accuracy_mean" in res
