"""What a pipeline module declares about its methods (read by `jaxdd.registry`).

A module of `jaxdd/pipelines/` lists its methods in a module-level `METHODS` sequence of
`Method`s; `jaxdd.registry` collects them. This module imports nothing of jaxdd, so the
registry, the pipelines and the config schema have no import cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

FAMILIES = ("trajectory", "classic", "statistics", "kernel")


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

    def __post_init__(self):
        if not self.section:
            object.__setattr__(self, "section", self.name)

    def section_config(self, cfg: dict) -> Any:
        """The method's config object: section defaults <- the config's section."""
        return self.config_cls(**{**self.section_defaults, **cfg.get(self.section, {})})
