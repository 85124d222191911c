"""Every preset passes the schema at each of its IPCs; family bases merge field by field."""

import glob
import os

import pytest

from jaxdd.configs import _exec_config, family_base, load_config

ROOT = os.path.join(os.path.dirname(__file__), "..", "configs")
PRESETS = sorted(p for p in glob.glob(os.path.join(ROOT, "*", "*.py"))
                 if os.path.basename(p) != "common.py")


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: os.path.relpath(p, ROOT))
def test_preset_passes_the_schema_at_every_ipc(path):
    raw = _exec_config(path)
    for ipc in sorted(raw.get("by_ipc") or {raw["ipc"]: {}}):
        cfg = load_config(path, ipc)
        assert cfg["ipc"] == ipc and "by_ipc" not in cfg
        assert cfg["method"] == raw["method"]


def test_family_base_merges_sections_field_by_field(tmp_path):
    (tmp_path / "common.py").write_text(
        "def get_config():\n    return dict(seed=0, experts=dict(epochs=50, lr=0.01))\n")
    cfg = family_base(str(tmp_path / "preset.py"), seed=3, experts=dict(epochs=2))
    assert cfg == {"seed": 3, "experts": {"epochs": 2, "lr": 0.01}}
    # The base itself is not changed by a preset's overrides.
    assert family_base(str(tmp_path / "other.py")) == {"seed": 0,
                                                       "experts": {"epochs": 50, "lr": 0.01}}


def test_classic_presets_evaluate_with_their_papers_protocols():
    """DC without augmentation (300 epochs), DSA / DM with DSA (1000), DataDAM with a
    BatchNorm ConvNet (1800 epochs, batch 64); the `_cpu` presets keep the reduced `cpu`."""
    from jaxdd.evaluate import get_protocol
    from jaxdd.models import get_model
    want = {"dc": ("dc", "convnet", 300, 256, ""), "dsa": ("dsa", "convnet", 1000, 256, "x"),
            "dm": ("dsa", "convnet", 1000, 256, "x"),
            "datadam": ("datadam", "convnet_d3_w128_bn", 1800, 64, "x")}
    for method, (name, model, epochs, batch, aug) in want.items():
        cfg = load_config(os.path.join(ROOT, "classic", f"{method}_cifar10.py"), 10)
        ev = cfg["eval"]
        p = get_protocol(ev["protocol"], augment=ev.get("augment", True),
                         **ev.get("overrides", {}))
        assert (p.name, p.model, p.train.epochs, p.train.batch_size) == (name, model, epochs, batch)
        assert bool(p.train.dsa) == bool(aug) and not p.reduced, method
        assert p.train.lr == 0.01 and p.train.schedule == "step"
        cpu = load_config(os.path.join(ROOT, "classic", f"{method}_fashion_mnist_cpu.py"), 10)
        assert get_protocol(cpu["eval"]["protocol"]).reduced
    bn = get_model("convnet_d3_w128_bn", 10, (32, 32, 3))
    assert bn.name == "convnet_d3_w128_bn"
    assert load_config(os.path.join(ROOT, "classic", "datadam_cifar10.py"), 10)["model"] == bn.name
