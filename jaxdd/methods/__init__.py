"""Distillation methods: each module builds a `Distiller` (pure init/step pair)."""

from jaxdd.methods.base import Distiller, SynState

__all__ = ["Distiller", "SynState"]
