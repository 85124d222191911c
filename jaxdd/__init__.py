"""jaxdd: dataset distillation in JAX/Flax.

Data flow of every method: real data -> (experts | teachers) -> Distiller -> artefact ->
evaluation. Each stage lives in its own subpackage; see README.md.
"""

__version__ = "0.1.0"
