"""The driver side: progress, loops, checkpoints, mesh (the functional API never needs it)."""
