"""`jaxdd import` of MTT expert buffers (`replay_buffer_<n>.pt`, written here the way MTT's
buffer.py writes them: a list of trajectories, each a list of timestamps, each
`[p.detach().cpu() for p in net.parameters()]` of MTT's ConvNet).

Checks: jaxdd's ConvNet with an imported checkpoint gives the torch ConvNet's logits (1e-5);
`jaxdd distill` (MTT) runs on the imported buffer; bad buffers end in one error line with
nothing written (in process, and once as a subprocess for the exit code and stderr).
"""

import copy
import json
import os
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest
from test_cli_faults import _fails as fails_cleanly

from jaxdd.cli import main

torch = pytest.importorskip("torch")
nn = torch.nn

ROOT = os.path.join(os.path.dirname(__file__), "..")
MTT = os.path.join(ROOT, "configs", "mtt", "fashion_mnist_cpu.py")
WIDTH, DEPTH, K = 4, 3, 3


def _fails(capsys, root, argv, *needles):
    return fails_cleanly(capsys, root, [*map(str, argv), "--quiet"], *needles)


def grey28_npz(path) -> str:
    """A 3-class 28x28x1 dataset (Fashion-MNIST's shape), learnable: a bright square per class."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, K, n).astype(np.int32)
        x = rng.integers(0, 60, (n, 28, 28, 1)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 4 + 7 * c:11 + 7 * c, 4:11] += 180
        return x, y

    (xtr, ytr), (xte, yte) = make(96), make(30)
    np.savez(path, x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
    return str(path)


class TorchConvNet(nn.Module):
    """MTT's ConvNet (conv 3x3 -> GroupNorm(C, C) -> ReLU -> AvgPool 2) x depth -> Linear;
    grey inputs get padding 3 in the first conv, as in MTT's networks.py."""

    def __init__(self, channel, num_classes, width, depth, im_size=(28, 28)):
        super().__init__()
        layers, c, hw = [], channel, 32 if im_size[0] == 28 else im_size[0]
        for d in range(depth):
            layers += [nn.Conv2d(c, width, 3, padding=3 if channel == 1 and d == 0 else 1),
                       nn.GroupNorm(width, width, affine=True), nn.ReLU(inplace=True),
                       nn.AvgPool2d(2, 2)]
            c, hw = width, hw // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * hw * hw, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).reshape(len(x), -1))


def write_mtt_buffer(directory, npz, experts=2, epochs=3, num_classes=K, width=WIDTH):
    """Train `experts` tiny ConvNets for `epochs` epochs with SGD and save their trajectories
    as MTT does; returns the torch nets of every (expert, epoch) for comparisons."""
    torch.manual_seed(0)
    with np.load(npz) as z:
        x = torch.tensor(z["x_train"].transpose(0, 3, 1, 2) / 255.0, dtype=torch.float32)
        y = torch.tensor(z["y_train"], dtype=torch.long)
    trajectories, nets = [], []
    for _ in range(experts):
        net = TorchConvNet(1, num_classes, width, DEPTH)
        opt = torch.optim.SGD(net.parameters(), lr=0.01)
        # MTT's p.detach().cpu() copies off the GPU; on the CPU it would alias the live
        # parameters, hence clone()
        stamps, copies = [[p.detach().cpu().clone() for p in net.parameters()]], [copy.deepcopy(net)]
        for _ in range(epochs):
            for i in range(0, len(x), 32):
                opt.zero_grad()
                nn.functional.cross_entropy(net(x[i:i + 32]), y[i:i + 32] % num_classes).backward()
                opt.step()
            stamps.append([p.detach().cpu().clone() for p in net.parameters()])
            copies.append(copy.deepcopy(net))
        trajectories.append(stamps)
        nets.append(copies)
    os.makedirs(directory, exist_ok=True)
    torch.save(trajectories, os.path.join(directory, "replay_buffer_0.pt"))
    return nets


@pytest.fixture
def grey28(tmp_path):
    return grey28_npz(tmp_path / "grey28.npz")


def test_imported_checkpoint_gives_torch_logits(grey28, tmp_path):
    from jaxdd.models import get_model
    from jaxdd.population import experts
    nets = write_mtt_buffer(tmp_path / "mtt", grey28)
    out = tmp_path / "buf"
    assert main(["import", str(tmp_path / "mtt"), "--dataset", f"npz:{grey28}", "--model",
                 f"convnet_d{DEPTH}_w{WIDTH}", "--out", str(out), "--quiet"]) == 0
    info = experts.load_buffer(str(out))
    assert info.num_experts == 2 and info.epochs == 3 and info.status == "complete"
    assert experts.imported_from(str(out))["from"] == "mtt replay_buffer"
    x = np.random.default_rng(1).normal(size=(5, 28, 28, 1)).astype(np.float32)
    model = get_model(f"convnet_d{DEPTH}_w{WIDTH}", K, (28, 28, 1))
    for e, t in [(0, 0), (1, 2), (1, 3)]:
        params = experts.load_expert_epoch(str(out), e, t)
        got = np.asarray(model.apply({"params": params}, x))
        with torch.no_grad():
            want = nets[e][t](torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    # the same experts as one flat vector per timestamp (MTT's ReparamModule layout)
    flat = [[torch.cat([p.reshape(-1) for p in stamp]) for stamp in traj]
            for traj in torch.load(tmp_path / "mtt" / "replay_buffer_0.pt")]
    torch.save(flat, tmp_path / "replay_buffer_7.pt")
    assert main(["import", str(tmp_path / "replay_buffer_7.pt"), "--dataset", f"npz:{grey28}",
                 "--model", f"convnet_d{DEPTH}_w{WIDTH}", "--out", str(tmp_path / "flat"),
                 "--quiet"]) == 0
    a = experts.load_expert_epoch(str(tmp_path / "flat"), 0, 2)
    b = experts.load_expert_epoch(str(out), 0, 2)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_distill_uses_an_imported_buffer(grey28, tmp_path, capsys):
    write_mtt_buffer(tmp_path / "mtt", grey28)
    buf = tmp_path / "buf"
    assert main(["import", str(tmp_path / "mtt"), "--dataset", f"npz:{grey28}", "--model",
                 f"convnet_d{DEPTH}_w{WIDTH}", "--preprocess", "normalize", "--out", str(buf),
                 "--quiet"]) == 0
    from conftest import snapshot
    before = snapshot(buf)
    sets = [f"dataset=npz:{grey28}", f"model=convnet_d{DEPTH}_w{WIDTH}", f"buffer_dir={str(buf)!r}",
            "preprocess='normalize'", "iterations=2", "ckpt_every=2", "experts.num_experts=5",
            "mtt.syn_steps=2", "mtt.expert_epochs=1", "mtt.max_start=2",
            "mtt.dsa_strategy='crop'"]
    capsys.readouterr()
    assert main(["distill", "--config", MTT, "--ipc", "1", "--out", str(tmp_path / "run"),
                 "--no-eval", "--quiet", "--json", *sum((["--set", s] for s in sets), [])]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert os.path.isdir(res["artefacts"]["artefact"])
    assert snapshot(buf) == before  # used as it is: not retrained, not extended
    # a config with another preprocessing is refused, naming the difference
    _fails(capsys, tmp_path, ["distill", "--config", MTT, "--ipc", "1", "--out",
                              tmp_path / "run2", "--no-eval",
                              *sum((["--set", s] for s in sets + ["preprocess='zca'"]), [])],
           "imported from mtt", "preprocess")


def test_bad_buffers_write_nothing(grey28, tiny_npz, tmp_path, capsys):
    ds = f"npz:{grey28}"
    model = f"convnet_d{DEPTH}_w{WIDTH}"
    write_mtt_buffer(tmp_path / "k5", grey28, experts=1, epochs=1, num_classes=5)
    write_mtt_buffer(tmp_path / "w8", grey28, experts=1, epochs=1, width=8)
    write_mtt_buffer(tmp_path / "ok", grey28, experts=1, epochs=1)
    bad = tmp_path / "bad"
    bad.mkdir()
    with open(bad / "replay_buffer_0.pt", "wb") as f:
        pickle.dump(np.random.default_rng(0), f)  # an object pickle, not tensors
    (tmp_path / "tensor").mkdir()
    torch.save(torch.zeros(3), tmp_path / "tensor" / "replay_buffer_0.pt")
    (tmp_path / "empty").mkdir()
    out = tmp_path / "buf"
    for src, extra, needles in [
            (bad, [], ["weights_only"]),
            (tmp_path / "tensor", [], ["not a list of trajectories"]),
            (tmp_path / "k5", [], ["classifier has 5 outputs", "3 classes"]),
            (tmp_path / "w8", [], ["conv 0 weight", "(8, 1, 3, 3)", "(4, 1, 3, 3)"]),
            (tmp_path / "k5", ["--model", "convnet_d2_w4"], ["timestamp holds 14 tensors"]),
            (tmp_path / "empty", ["--format", "mtt_buffer"], ["no replay_buffer"])]:
        _fails(capsys, tmp_path, ["import", src, "--dataset", ds, "--model", model, *extra,
                                  "--out", out], *needles)
    # an 8x8 grey dataset: MTT's first conv pads 3 where jaxdd pads 1 -> shapes differ
    _fails(capsys, tmp_path, ["import", tmp_path / "ok", "--dataset", f"npz:{tiny_npz}",
                              "--model", model, "--out", out], "classifier weight has shape "
           "(3, 64), expected (3, 4)")
    assert not out.exists()
    # an existing directory (not a buffer) is refused; an imported one needs --overwrite
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    _fails(capsys, tmp_path, ["import", tmp_path / "ok", "--dataset", ds, "--model", model,
                              "--out", user, "--overwrite"], "not a jaxdd expert buffer")
    assert main(["import", str(tmp_path / "ok"), "--dataset", ds, "--model", model,
                 "--out", str(out), "--quiet"]) == 0
    _fails(capsys, tmp_path, ["import", tmp_path / "ok", "--dataset", ds, "--model", model,
                              "--out", out], "already holds an expert buffer", "--overwrite")
    assert main(["import", str(tmp_path / "ok"), "--dataset", ds, "--model", model,
                 "--out", str(out), "--overwrite", "--quiet"]) == 0
    # through a real process: exit code 2, one stderr line, nothing written
    env = {**os.environ, "PYTHONPATH": os.path.abspath(ROOT)}
    p = subprocess.run([sys.executable, "-m", "jaxdd.cli", "import", str(bad), "--dataset", ds,
                        "--out", str(tmp_path / "buf2"), "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "weights_only" in lines[0], p.stderr
    assert not (tmp_path / "buf2").exists()
