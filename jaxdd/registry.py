"""The method registry: the one place that knows which methods exist.

Each module of `jaxdd.pipelines` lists its methods in `METHODS` (`jaxdd.pipelines.spec.Method`:
the method's config class and section, the section's fixed defaults, the other sections it
reads, and `run(ctx, options) -> result`, which prepares the data and drives the method's
Distiller through `jaxdd.run.driver`). The registry imports those modules once and collects
them; the CLI and the config schema read it. Adding a method means adding one module to
`jaxdd/pipelines/` (as big_vision finds a model by module name).
"""

from __future__ import annotations

import importlib
import pkgutil

from jaxdd.pipelines.spec import FAMILIES, Method, RunOptions

__all__ = ["FAMILIES", "Method", "RunOptions", "names", "get"]

_REGISTRY: dict[str, Method] = {}


def _load() -> dict[str, Method]:
    """Import every module of jaxdd.pipelines once and collect their METHODS."""
    if _REGISTRY:
        return _REGISTRY
    import jaxdd.pipelines as pkg
    found: dict[str, Method] = {}
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        for m in getattr(importlib.import_module(f"jaxdd.pipelines.{info.name}"), "METHODS", ()):
            if m.family not in FAMILIES:
                raise ValueError(f"family {m.family!r} of {m.name}; use one of {FAMILIES}")
            if m.name in found:
                raise ValueError(f"method {m.name!r} is registered twice")
            found[m.name] = m
    _REGISTRY.update(found)
    return _REGISTRY


def names() -> list[str]:
    return sorted(_load())


def get(name: str) -> Method:
    methods = _load()
    if name not in methods:
        raise ValueError(f"unknown method {name!r}; use one of {', '.join(sorted(methods))}")
    return methods[name]
