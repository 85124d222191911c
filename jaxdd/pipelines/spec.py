"""What a pipeline module declares about its methods (read by `jaxdd.registry`).

A module of `jaxdd/pipelines/` lists its methods in a module-level `METHODS` sequence of
`Method`s; `jaxdd.registry` collects them. The config sections every pipeline reads
(`EvalSection`, `LogSection`) live here too; `jaxdd.configs` checks them. This module
imports nothing of jaxdd, so the registry, the pipelines and the config schema have no
import cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping

FAMILIES = ("trajectory", "classic", "statistics", "kernel")


@dataclasses.dataclass(frozen=True)
class EvalSection:
    """How `distill` evaluates what it made (and a random real subset, same seeds)."""

    protocol: str = "cpu"          # mtt | cpu | smoke (jaxdd.evaluate.protocols)
    seeds: int = 3                 # independent networks, vmapped
    random_baseline: bool = True   # also evaluate a random real subset of the same IPC
    augment: bool = True           # False: train without augmentation (the protocol's dsa off)
    # TrainConfig fields replacing the protocol's (e.g. DATM's batch_size=128); checked
    # against TrainConfig at load time, applied by `evaluate.get_protocol(protocol, **overrides)`
    overrides: dict = dataclasses.field(default_factory=dict)
    # The cheap evaluation every `eval_every` iterations during distillation, selected on
    # the validation split (never on test):
    val_protocol: str | None = None  # its protocol (None: `protocol`)
    val_seeds: int = 1               # its networks per evaluation
    val_overrides: dict = dataclasses.field(default_factory=dict)  # TrainConfig fields, e.g.
    #                                  {"epochs": 50}; checked like `overrides`


@dataclasses.dataclass(frozen=True)
class LogSection:
    """What a run writes for watching it (jaxdd.run.metrics; README "Watching a run")."""

    every: int = 10                # step metrics period [iterations]: metrics.jsonl, TensorBoard
    image_every: int = 50          # image grid of the synthetic set period [iterations]; 0: off
    tensorboard: bool = True       # event files in OUT/run/tensorboard/
    plots: bool = True             # OUT/plots/*.png (loss, accuracy) at the end of the run


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
