"""The method registry: the one place that knows which methods exist.

Each module of `jaxdd.pipelines` registers its methods at import with `register(Method(...))`:
the method's config class (its config section), the section's fixed defaults, the other
sections it reads, and `run(ctx, options) -> result`, which prepares the data and drives the
method's Distiller through `jaxdd.run.driver`. The CLI and the config schema read this
table; adding a method means adding one module to `jaxdd/pipelines/` (as big_vision finds a
model by module name).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import typing
from typing import Any, Callable, Mapping

FAMILIES = ("trajectory", "classic", "statistics")


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """Per-invocation options of `distill` (not part of the config fingerprint)."""

    resume_step: int | None = None   # resume from this checkpoint instead of the latest
    stop_after: int | None = None    # stop after this many steps of this call (tests, budgets)


@dataclasses.dataclass(frozen=True)
class Method:
    name: str                              # config `method`
    family: str                            # one of FAMILIES
    config_cls: type                       # dataclass of the method's section
    run: Callable[[Any, RunOptions], dict]  # (pipelines.common.Context, options) -> result
    section: str = ""                      # config key of its section (default: name)
    section_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    sections: tuple[str, ...] = ()         # other sections it reads: experts, teacher, relabel
    doc: str = ""                          # one line for `jaxdd methods`

    def section_config(self, cfg: dict) -> Any:
        """The method's config object: section defaults <- the config's section."""
        return self.config_cls(**{**self.section_defaults, **cfg.get(self.section or self.name, {})})


_REGISTRY: dict[str, Method] = {}
_LOADED = False


def register(method: Method) -> Method:
    if method.family not in FAMILIES:
        raise ValueError(f"family {method.family!r} of {method.name}; use one of {FAMILIES}")
    if method.name in _REGISTRY:
        raise ValueError(f"method {method.name!r} is registered twice")
    if not method.section:
        method = dataclasses.replace(method, section=method.name)
    _REGISTRY[method.name] = method
    return method


def _load() -> None:
    """Import every module of jaxdd.pipelines once (each registers its methods)."""
    global _LOADED
    if _LOADED:
        return
    import jaxdd.pipelines as pkg
    for info in pkgutil.iter_modules(pkg.__path__):
        importlib.import_module(f"jaxdd.pipelines.{info.name}")
    _LOADED = True


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def get(name: str) -> Method:
    _load()
    if name not in _REGISTRY:
        raise ValueError(f"unknown method {name!r}; use one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def _relabel_schema() -> tuple[type, dict]:
    from jaxdd.pipelines import sre2l
    hints = {}
    for k, v in {**sre2l.RELABEL_DEFAULTS, **sre2l.RECIPES["sre2l"]}.items():
        hints[k] = (str | None) if v is None else (float if type(v) is float else type(v))
    return type("RelabelSection", (), {"__annotations__": hints}), {}


def _teacher_schema() -> tuple[type, dict]:
    from jaxdd.configs import TeacherSection
    from jaxdd.population.teachers import TeacherConfig
    return TeacherConfig, typing.get_type_hints(TeacherSection)


def _experts_schema() -> tuple[type, dict]:
    from jaxdd.population.experts import ExpertConfig
    return ExpertConfig, {}


# Schemas of the sections a method may read besides its own: (class, extra typed fields).
SECTION_SCHEMAS: dict[str, Callable[[], tuple[type, dict]]] = {
    "experts": _experts_schema, "teacher": _teacher_schema, "relabel": _relabel_schema}
