"""A plain (non-editable) install ships the presets: `pip install .` puts configs/ into the
package as jaxdd/presets, and a preset then resolves by name from any directory."""

import os
import subprocess
import sys
import zipfile

import pytest

from jaxdd.configs import load_config, preset_names, resolve_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_presets_resolve_by_name_in_the_checkout():
    assert "mtt/fashion_mnist_cpu" in preset_names() and "classic/common" not in preset_names()
    for spec in ("mtt/fashion_mnist_cpu", "mtt/fashion_mnist_cpu.py",
                 "configs/mtt/fashion_mnist_cpu.py"):
        assert resolve_config(spec).endswith(os.path.join("mtt", "fashion_mnist_cpu.py"))
    assert load_config("classic/dm_fashion_mnist_cpu", 10)["method"] == "dm"
    with pytest.raises(ValueError, match="presets: .*mtt/fashion_mnist_cpu"):
        resolve_config("mtt/nope")


def test_wheel_ships_presets_and_resolves_them_from_another_directory(tmp_path):
    wheels = tmp_path / "wheels"
    # No build isolation: the test extra installs setuptools>=77, nothing is downloaded here.
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-index",
                            "--no-build-isolation", "-q", "-w", str(wheels), ROOT],
                           capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheels.glob("jaxdd-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "jaxdd/presets/mtt/fashion_mnist_cpu.py" in names
    assert "jaxdd/presets/classic/common.py" in names
    assert any(n.endswith("licenses/LICENSE") for n in names)
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target",
                    str(target), str(wheel)], check=True, timeout=600)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = ("import jaxdd.configs as c; p = c.resolve_config('classic/dm_fashion_mnist_cpu'); "
            "print(p); print(c.load_config('classic/dm_fashion_mnist_cpu', 10)['iterations'])")
    r = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, capture_output=True,
                       text=True, env={**os.environ, "PYTHONPATH": str(target)}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    path, iterations = r.stdout.split()
    assert path.startswith(str(target)) and int(iterations) == 500
    v = subprocess.run([sys.executable, "-m", "jaxdd.cli", "--version"], cwd=elsewhere,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(target)})
    assert v.stdout.strip() == "jaxdd 0.1.0"
