"""Configs are data: a Python file in configs/ whose `get_config()` returns a dict.

`by_ipc` (optional) maps an IPC to overrides applied when that IPC is chosen, so one file
holds the per-IPC hyper-parameters of a preset. `--set a.b=v` overrides any field.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import os
from typing import Any


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_path(cfg: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = cfg
    for k in keys[:-1]:
        if k not in node or not isinstance(node[k], dict):
            raise ValueError(f"--set {dotted}: no section {k!r} in the config")
        node = node[k]
    # Inside a section (a method's dataclass fields) a field may be added: sections list
    # only non-default values, and the dataclass rejects unknown names with a clear error.
    if keys[-1] not in node and len(keys) == 1:
        raise ValueError(f"--set {dotted}: unknown field {keys[-1]!r}; known: {', '.join(sorted(node))}")
    node[keys[-1]] = value


def load_config(path: str, ipc: int | None = None, sets: list[str] | None = None) -> dict:
    """Load configs/xxx.py, choose the IPC (default: the file's `ipc`), apply overrides."""
    if not os.path.exists(path):
        raise ValueError(f"config file {path} does not exist; see configs/ for presets")
    spec = importlib.util.spec_from_file_location("jaxdd_config", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    if not hasattr(mod, "get_config"):
        raise ValueError(f"{path} has no get_config() function")
    cfg = mod.get_config()
    by_ipc = cfg.pop("by_ipc", {})
    ipc = int(ipc if ipc is not None else cfg["ipc"])
    if by_ipc and ipc not in by_ipc:
        raise ValueError(f"{path} has no preset for IPC {ipc}; presets exist for IPC "
                         f"{', '.join(map(str, sorted(by_ipc)))} (or pass every field with --set)")
    cfg = _merge(cfg, by_ipc.get(ipc, {}))
    cfg["ipc"] = ipc
    for s in sets or []:
        if "=" not in s:
            raise ValueError(f"--set needs key=value, got {s!r}")
        k, v = s.split("=", 1)
        set_path(cfg, k, _parse_value(v))
    return cfg
