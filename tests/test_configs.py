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
