"""Configs are data: a Python file whose `get_config()` returns a dict, checked against one
typed schema before anything runs.

`by_ipc` (optional) maps an IPC to overrides applied when that IPC is chosen, so one file
holds the per-IPC hyper-parameters of a preset. `--set a.b=v` overrides any field; its value
is read as a Python literal and must have the field's type. A preset may start from its
family's shared base, `configs/<family>/common.py`, with `family_base(__file__, ...)`.

The schema is dataclasses all the way down: `RunConfig` for the top level, `EvalSection`,
the method's own config class for its section (from `jaxdd.registry`), `ExpertConfig`,
`TeacherConfig` (+ `TeacherSection`) and the relabel options. Every section is locked:
an unknown field is an error that lists the known ones, a value of the wrong type or a NaN
is an error naming the field, and counts and step sizes are range-checked (`RANGES`).
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import importlib.util
import math
import os
import types
import typing
from typing import Any, Literal, Mapping, Union

from jaxdd.pipelines.spec import EvalSection, LogSection  # sections the pipelines read
from jaxdd.safeio import fingerprint


class ConfigError(ValueError):
    """A config that does not fit the schema; the message names the field and what to do."""


class _NotFinite(ConfigError):
    """A NaN/inf number: final, whatever other type a Union would allow."""


# ---------------------------------------------------------------------------------------
# Schema of the top level and the sections shared by every method


@dataclasses.dataclass(frozen=True)
class TeacherSection:
    """The `teacher` keys outside `TeacherConfig`."""

    # registry name of the teacher model, or a list (G-VBSM: several architectures, each in
    # its own directory)
    model: str | tuple[str, ...] | None = None
    # None = runs/teachers/<dataset>-<model>-<pre>-s<seed> per model; a list: one per model;
    # one path with several models: PATH/<model>
    dir: str | tuple[str, ...] | None = None
    train_if_missing: bool = True  # train it there when absent (resumable per epoch)


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """The top level of every config (sections are checked by their own classes)."""

    method: str                    # a registered method (jaxdd.registry.names())
    dataset: str                   # TFDS name, folder:PATH, npz:PATH or tfds_dir:PATH
    ipc: int                       # images per class
    seed: int = 0                  # every random choice derives from jax.random.key(seed)
    preprocess: str = "normalize"  # normalize | zca | zca_kip | none
    model: str | None = None       # registry model of the method (experts, matching net)
    init: str = "real"             # real | noise: initial synthetic images
    buffer_dir: str | None = None  # trajectory matching: expert buffer directory
    iterations: int = 1            # distiller steps (recover: per batch, in its section)
    ckpt_every: int = 50           # checkpoint period [iterations]
    ckpt_keep: int = 3             # checkpoints kept
    max_nonfinite: int = 10        # non-finite (skipped) steps in a row before the run stops
    eval_every: int | None = None  # evaluate the set on the validation split every this many
    #                                iterations (and at the end) during distillation, keep the
    #                                best in OUT/best/ [iterations]; None: off (eval.val_*)
    mesh: dict | None = None       # {"shape": [...], "names": [...]}; None = all devices, "data"
    # Streamed data (jaxdd.data.stream; statistics matching): an int decodes every image
    # to image_size x image_size through the grain loader instead of reading the dataset
    # into memory (needed for variable-size data such as imagenet2012); None = in memory.
    image_size: int | None = None
    data_workers: int = 0          # streamed data: grain decoding processes (0: threads)


# Range rules by field name, wherever the field appears (top level or any section).
_POSITIVE = {"ipc", "iterations", "epochs", "seeds", "ckpt_every", "ckpt_keep", "batch_size",
             "batch_real", "batch_syn", "batch_train", "syn_steps", "expert_epochs",
             "num_experts", "num_teachers", "mipc", "num_crop", "factor", "max_nonfinite",
             "lr", "lr_img", "lr_init", "lr_net", "temperature", "eval_every", "class_batch",
             "image_size", "every", "val_seeds", "windows_per_step", "pool_size",
             "max_online_updates", "batch_online", "lr_syn", "lr_online", "shuffle_patches",
             "base_sets"}
_NON_NEGATIVE = {"seed", "lr_lr", "lr_y", "momentum", "weight_decay", "r_bn", "min_start",
                 "top_k", "ce_weight", "data_workers", "image_every", "reg", "cosine_alpha",
                 "pad_crop", "mixup_alpha", "cutmix_alpha", "label_epochs",
                 "dcc_warmup_iterations", "dcc_warmup_outer", "grad_penalty", "ast_perturb",
                 "inner_momentum"}
RANGES = {**{k: "> 0" for k in _POSITIVE}, **{k: ">= 0" for k in _NON_NEGATIVE}}


# ---------------------------------------------------------------------------------------
# Type checking against dataclass annotations


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin is Literal:
        return "one of " + ", ".join(map(repr, typing.get_args(hint)))
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """`value` as type `hint` (int -> float, list -> tuple), or ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    bad = ConfigError(f"{name}: expected {_describe(hint)}, got {value!r}")
    if hint is Any:
        return value
    if origin in (Union, types.UnionType):
        for a in args:
            try:
                return _coerce(value, a, name)
            except _NotFinite:
                raise
            except ConfigError:
                pass
        raise bad
    if origin is Literal:
        if value in args:
            return value
        raise bad
    if hint is type(None):
        if value is None:
            return None
        raise bad
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise bad
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise bad
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise _NotFinite(f"{name}: must be a finite number, got {value!r}")
            return float(value)
        raise bad
    if hint is str:
        if isinstance(value, str):
            return value
        raise bad
    if origin is tuple or hint is tuple:
        if not isinstance(value, (list, tuple)):
            raise bad
        if args and args[-1] is not Ellipsis and len(args) != len(value):
            raise bad
        items = args[:1] * len(value) if args[-1:] == (Ellipsis,) else args
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, items))) \
            if args else tuple(value)
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        if isinstance(value, Mapping):
            return dict(value)
        raise bad
    if origin is list or hint is list:
        if isinstance(value, (list, tuple)):
            return list(value)
        raise bad
    if dataclasses.is_dataclass(hint):
        return check_section(hint, value, name)
    return value  # an annotation this checker does not know: the dataclass validates it


def _check_range(name: str, field: str, value: Any) -> None:
    rule = RANGES.get(field)
    if rule is None or value is None or isinstance(value, bool) or \
            not isinstance(value, (int, float)):
        return
    if (rule == "> 0" and not value > 0) or (rule == ">= 0" and not value >= 0):
        raise ConfigError(f"{name} must be {rule}, got {value!r}")


def check_section(cls: type, section: Any, where: str, extra: Mapping[str, Any] = {}) -> dict:
    """Check a dict against dataclass `cls` (+ `extra` name -> type): known fields only,
    each of its annotated type and in range. Returns the dict with coerced values."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where} must be a dict of {cls.__name__} fields, got {section!r}")
    hints = {**typing.get_type_hints(cls), **extra}
    out = {}
    for k, v in section.items():
        if k not in hints:
            raise ConfigError(f"{where}.{k}: unknown field; known: {', '.join(sorted(hints))}")
        out[k] = _coerce(v, hints[k], f"{where}.{k}")
        _check_range(f"{where}.{k}", k, out[k])
    return out


# ---------------------------------------------------------------------------------------
# Loading


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def parse_value(text: str) -> Any:
    """A `--set` value: a Python literal (1, 0.5, None, 'a', [1, 2]) or else a plain string."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text


def set_path(cfg: dict, dotted: str, value: Any) -> None:
    """cfg[a][b] = value for `a.b`; the schema check that follows refuses unknown names."""
    keys = dotted.split(".")
    if not all(keys):
        raise ConfigError(f"--set {dotted}: empty name; use e.g. --set mtt.lr_img=100")
    node = cfg
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {dotted}: {k!r} is a value, not a section")
    node[keys[-1]] = value


def family_base(config_path: str, **overrides: Any) -> dict:
    """A preset = its family's base + what differs: `get_config()` of the `common.py` beside
    `config_path`, deep-merged with `overrides` (sections merge field by field)."""
    return _merge(_exec_config(os.path.join(os.path.dirname(os.path.abspath(config_path)),
                                            "common.py")), overrides)


def _exec_config(path: str) -> dict:
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} does not exist; see configs/ for presets")
    spec = importlib.util.spec_from_file_location(f"jaxdd_config_{fingerprint(path)}", path)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except SyntaxError as e:
        raise ConfigError(f"config file {path} line {e.lineno}: {e.msg}; fix the syntax") from None
    except Exception as e:  # noqa: BLE001 - any error in user code: name it, one line
        raise ConfigError(f"config file {path} failed to load ({type(e).__name__}: "
                          f"{(str(e).splitlines() or [''])[0]}); fix it") from None
    if not hasattr(mod, "get_config"):
        raise ConfigError(f"{path} has no get_config() function")
    try:
        cfg = mod.get_config()
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f"{path}: get_config() failed ({type(e).__name__}: {e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: get_config() must return a dict, got {type(cfg).__name__}")
    return cfg


def preset_dirs() -> list[str]:
    """Where presets live: jaxdd/presets in an installed package (setup.py copies configs/
    there), configs/ beside the package in a checkout or an editable install."""
    here = os.path.dirname(os.path.abspath(__file__))
    return [d for d in (os.path.join(here, "presets"), os.path.join(os.path.dirname(here), "configs"))
            if os.path.isdir(d)]


def preset_names() -> list[str]:
    """Every preset as `family/name` (the shared `common.py` bases excluded)."""
    names = set()
    for d in preset_dirs():
        for family in sorted(os.listdir(d)):
            if os.path.isdir(os.path.join(d, family)):
                names.update(f"{family}/{f[:-3]}" for f in os.listdir(os.path.join(d, family))
                             if f.endswith(".py") and f != "common.py")
    return sorted(names)


def resolve_config(spec: str) -> str:
    """A config file path, or a preset name (`mtt/fashion_mnist_cpu`, `.py` optional)."""
    if os.path.isfile(spec):
        return spec
    name = spec[:-3] if spec.endswith(".py") else spec
    name = name[len("configs/"):] if name.startswith("configs/") else name
    for d in preset_dirs():
        path = os.path.join(d, name + ".py")
        if os.path.isfile(path):
            return path
    raise ConfigError(f"config {spec} does not exist (neither a file nor a preset name); presets: "
                      f"{', '.join(preset_names())}")


def load_config(path: str, ipc: int | None = None, sets: list[str] | None = None) -> dict:
    """Load a config file or preset name, choose the IPC (default: the file's `ipc`), apply
    `--set` overrides, and check the result against the schema (`validate`)."""
    cfg = _exec_config(resolve_config(path))
    by_ipc = cfg.pop("by_ipc", {}) or {}
    if ipc is None and "ipc" not in cfg:
        raise ConfigError(f"{path} sets no ipc; pass --ipc")
    ipc = cfg["ipc"] if ipc is None else ipc
    if not isinstance(ipc, int) or isinstance(ipc, bool) or ipc < 1:
        raise ConfigError(f"ipc must be an integer >= 1, got {ipc!r}")
    if by_ipc and ipc not in by_ipc:
        raise ConfigError(f"{path} has no preset for IPC {ipc} (presets: IPC "
                          f"{', '.join(map(str, sorted(by_ipc)))}); choose one of those or "
                          f"copy the file and add IPC {ipc} to its by_ipc")
    cfg = _merge(cfg, by_ipc.get(ipc, {}))
    cfg["ipc"] = ipc
    for s in sets or []:
        if "=" not in s:
            raise ConfigError(f"--set needs key=value, got {s!r}")
        k, v = s.split("=", 1)
        set_path(cfg, k.strip(), parse_value(v.strip()))
    return validate(cfg)


def validate(cfg: dict) -> dict:
    """The config with every section checked (types, known names, ranges); raises
    ConfigError naming the first bad field."""
    from jaxdd import registry

    if not isinstance(cfg.get("method"), str):
        raise ConfigError(f"config needs method = one of {', '.join(registry.names())}")
    spec = registry.get(cfg["method"])
    sections = {"eval": (EvalSection, {}), "log": (LogSection, {})}
    for name in spec.sections:
        sections[name] = SECTION_SCHEMAS[name]()
    sections[spec.section] = (spec.config_cls, {})
    top = {k: v for k, v in cfg.items() if k not in sections}
    for k in ("dataset", "ipc"):
        if k not in top:
            raise ConfigError(f"config needs {k}")
    out = check_section(RunConfig, top, "config")
    for name, (cls, extra) in sections.items():
        if name in cfg:
            out[name] = check_section(cls, cfg[name], name, extra)
    for name in ("overrides", "val_overrides"):
        if out.get("eval", {}).get(name):
            from jaxdd.train import TrainConfig
            out["eval"][name] = check_section(TrainConfig, out["eval"][name], f"eval.{name}")
    return out


def _relabel_schema() -> tuple[type, dict]:
    from jaxdd.pipelines.sre2l import RECIPES, RELABEL_DEFAULTS
    hints = {k: (str | None) if v is None else type(v)
             for k, v in {**RELABEL_DEFAULTS, **RECIPES["sre2l"]}.items()}
    return type("RelabelSection", (), {"__annotations__": hints}), {}


def _teacher_schema() -> tuple[type, dict]:
    from jaxdd.population.teachers import TeacherConfig
    return TeacherConfig, typing.get_type_hints(TeacherSection)


def _experts_schema() -> tuple[type, dict]:
    from jaxdd.population.experts import ExpertConfig
    return ExpertConfig, {}


# Schemas of the sections a method may read besides its own: (class, extra typed fields).
SECTION_SCHEMAS = {"experts": _experts_schema, "teacher": _teacher_schema,
                   "relabel": _relabel_schema}
