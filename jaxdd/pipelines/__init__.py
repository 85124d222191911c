"""End-to-end pipelines (config dict -> artefact + evaluation): the CLI's `distill`.

Each method family has a module with `prepare(cfg, ctx)` returning what the shared
pipeline needs: a Distiller, its initial state and a jittable `batch_fn(key, t)`.
"""
