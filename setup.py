"""Build hook only (all metadata is in pyproject.toml): ship the presets of configs/ inside
the package as jaxdd/presets, so `--config mtt/fashion_mnist_cpu` resolves by name after a
plain `pip install .` too, from any directory."""

import os
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py


class BuildPyWithPresets(build_py):
    def run(self):
        super().run()
        src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
        dst = os.path.join(self.build_lib, "jaxdd", "presets")
        shutil.copytree(src, dst, dirs_exist_ok=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))


setup(cmdclass={"build_py": BuildPyWithPresets})
